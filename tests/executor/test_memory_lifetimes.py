"""A trained model's transient weights copy is priced for as long as the runtime keeps it.

The runtime (runtime/executor/steps.py, worker.RankState.run_realloc) makes the copy at the
reallocation into its call and frees it right after the reallocation out of it, so a call
of another model on the same devices in between holds it too; costmodel/plan_memory.py
(live_copies) prices it so. The run is measured on CPU (live tensor bytes, first iteration).
"""

from __future__ import annotations

import executor_workers as W
import numpy as np
import pytest

from costmodel.plan_memory import WEIGHTS_COPY, live_copies, trained_executions
from costmodel.simulator import estimate_plan
from planner.domain.hardware import GIB
from runtime.executor.config import RunConfig
from runtime.executor.trace import build_trace
from runtime.launch import run_distributed

# The acceptance bound of issue 12: measured within 10% of the priced per-call peak.
MEMORY_REL = 0.10
# Not tensors on CPU (a fixed allowance for kernels' scratch, costmodel/efficiency.py), so
# the CPU meter (runtime/executor/measure.py) cannot see it: left out of the comparison.
NOT_METERED_ON_CPU = {"workspace"}
GRPO_BATCH = {"n_seqs": 8, "prompt_len": 16, "gen_len": 8, "ppo_minibatches": 1,
              "group_size": 4}


def _grpo_generating_apart():
    """actor trains on device 0 (its home) and generates on device 1, where the reward and
    ref inference run between the reallocation into actor_gen and the one out of it."""
    return W.make_plan("cpu2", {"actor_gen": W.ex([1]), "rew_inf": W.ex([1]),
                                "ref_inf": W.ex([1]), "actor_train": W.ex([0])},
                       algorithm="grpo", batch=GRPO_BATCH)


def _ppo_critic_apart():
    """The critic's inference copy (device 1) lives across actor_train (device 1), until
    the reallocation into critic_train (device 0)."""
    return W.make_plan("cpu2", {"actor_gen": W.ex([1]), "rew_inf": W.ex([1]),
                                "ref_inf": W.ex([1]), "critic_inf": W.ex([1]),
                                "actor_train": W.ex([1]), "critic_train": W.ex([0])})


def _copies(plan):
    wf, executions = plan.workflow, plan.executions
    return live_copies(wf, executions, trained_executions(wf, executions))


def test_the_copy_lives_from_the_reallocation_into_its_call_to_the_one_out_of_it():
    copies = _copies(_grpo_generating_apart())
    for node in ("actor_gen", "rew_inf", "ref_inf", "realloc:actor:actor_gen->actor_train",
                 "realloc:actor:actor_train->actor_gen"):
        assert copies[node] == ["actor_gen"], node
    assert copies["actor_train"] == []


def test_a_copy_out_of_the_last_call_of_an_iteration_holds_across_other_calls():
    copies = _copies(_ppo_critic_apart())
    assert copies["actor_train"] == ["critic_inf"]
    assert copies["realloc:critic:critic_inf->critic_train"] == ["critic_inf"]
    # made by the wrap into critic_inf (by critic_inf itself in the first iteration)
    assert copies["critic_train"] == copies["actor_gen"] == copies["ref_inf"] == []


def test_a_plan_without_transient_copies_prices_none():
    plan = W.make_plan("cpu2", {c: W.ex([0, 1], dp=2) for c in W.CALLS})
    assert all(kind != WEIGHTS_COPY for node in estimate_plan(plan).memory.nodes
               for kind, _, _ in node.parts)


def _priced_without(memory, call: str, device: int) -> float:
    node = next(n for n in memory.nodes if n.name == call)
    position = int(np.flatnonzero(node.devices == device)[0])
    items = memory.resident_items(device) + node.items_at(position)
    return sum(amount for kind, _, amount in items if kind not in NOT_METERED_ON_CPU)


PLANS = {"grpo_generating_apart": _grpo_generating_apart, "ppo_critic_apart": _ppo_critic_apart}


@pytest.fixture(scope="module", params=sorted(PLANS))
def measured(request):
    plan = PLANS[request.param]()
    out = run_distributed(W.run_plans, 2, (W.as_mappings([plan]), RunConfig(iterations=1)),
                          timeout_s=120)
    messages = [m for rank in out for m in rank[0]["messages"]]
    return plan, build_trace(plan, messages, 1)


def test_each_call_measures_within_ten_percent_of_its_priced_peak(measured):
    """In the GRPO plan rew_inf and ref_inf hold the actor's generation copy (measured 1.49x
    and 1.42x the price when only actor_gen was priced with it); in the PPO plan the
    critic's inference copy is made by critic_inf, not at start, so actor_gen, rew_inf and
    ref_inf on its device do not hold it."""
    plan, trace = measured
    assert trace["memory_source"] == "cpu_live_tensor_bytes"
    memory = estimate_plan(plan).memory
    ratios = {}
    for call in trace["calls"]:
        for peak in call["peak_memory_by_device"]:
            priced = _priced_without(memory, call["name"], peak["device"])
            ratios[(call["name"], peak["device"])] = peak["gib"] * GIB / priced
    assert set(ratios) == {(c, d) for c, ex in plan.executions.items() for d in ex.devices}
    assert all(abs(r - 1) <= MEMORY_REL for r in ratios.values()), ratios
