"""ReMax, RLOO and DPO end to end: each runs two iterations of `plan run`'s executor on two
CPU processes, with a reallocation of the actor between generation (or reference
inference) and training, and reports finite losses and a trace with every call (slow)."""

from __future__ import annotations

import math

import executor_workers as W
import pytest

from runtime.executor.config import RunConfig
from runtime.executor.launcher import run_plan

pytestmark = pytest.mark.slow

BATCH = {"n_seqs": 8, "prompt_len": 16, "gen_len": 8, "ppo_minibatches": 2, "group_size": 2}
DPO_BATCH = {"n_seqs": 8, "prompt_len": 16, "gen_len": 8, "ppo_minibatches": 2}


def plan_for(algorithm: str):
    batch = DPO_BATCH if algorithm == "dpo" else BATCH
    workflow_calls = W.builtin_workflow(algorithm, "llama-tiny", batch).call_order
    executions = {}
    for call in workflow_calls:
        if call == "actor_train":
            executions[call] = W.ex([0, 1], dp=2)           # train on both processes
        elif call in ("actor_gen", "actor_greedy_gen"):
            executions[call] = W.ex([0])                    # generate on one: reallocation
        else:
            executions[call] = W.ex([1])
    return W.make_plan("cpu2", executions, algorithm=algorithm, batch=batch)


@pytest.mark.parametrize("algorithm", ["remax", "rloo", "dpo"])
def test_algorithm_runs_end_to_end(algorithm):
    plan = plan_for(algorithm)
    reward = "model" if algorithm == "dpo" else "programmatic:target_token=7"
    trace, _ = run_plan(plan, RunConfig(iterations=2, reward=reward, lr=1e-4),
                        emit=lambda line: None)
    names = {c["name"] for c in trace["calls"]}
    expected = set(plan.workflow.call_order)
    if reward.startswith("programmatic"):
        expected -= {"rew_inf", "rew_greedy_inf"}     # no reward model is created
    assert expected <= names
    assert trace["iteration_s"] > 0
    assert len(trace["iterations"]) == 2
    for iteration in trace["iterations"]:
        losses = {k: v for k, v in iteration["metrics"].items() if "loss" in k}
        assert losses, iteration["metrics"]
        assert all(math.isfinite(v) for v in iteration["metrics"].values())
