"""A plan whose actor_gen decodes with continuous batching (Execution.decode_batching) runs
under `plan run`'s executor (runtime/executor/calls.py run_generate passes the mode to
runtime/generate.py) and trains exactly as the same plan decoding statically: tiny GRPO
(llama-micro, 16 sequences in groups of 4, actor_gen in 4 micro-batches, so 12 of the 16
prompts are refilled into freed slots), sampled with each row's own seeded noise, two
iterations in one process: the same metrics (rewards, losses, KL: the rollouts they are
computed from) and the same trained weights, bit for bit (slow: spawns a process).

The executor's rows all run to gen_len (it stops no row early), so the slots refill in
lockstep here; tests/runtime/test_runtime_continuous.py covers rows of different lengths."""

from __future__ import annotations

import executor_workers as W
import pytest
import torch

from runtime.executor import calls
from runtime.executor.config import RunConfig
from runtime.executor.launcher import runnable_problem
from runtime.launch import run_distributed

pytestmark = pytest.mark.slow

CONFIG = RunConfig(iterations=2, reward="programmatic:target_token=7", lr=1e-3,
                   return_weights=True)
GEN_MICRO_BATCHES = 4


def _plan(decode_batching: str):
    plan = W.learning_plan("grpo")
    gen = plan.executions["actor_gen"].model_copy(update={
        "micro_batches": GEN_MICRO_BATCHES, "decode_batching": decode_batching})
    return plan.model_copy(update={"executions": {**plan.executions, "actor_gen": gen}})


def _run_recording_modes(rank: int, world_size: int, plans: list[dict], config: RunConfig
                         ) -> list[dict]:
    """W.run_plans, each result with the decode_batching of every generate() the executor
    called (so the test sees that the continuous path ran)."""
    real, modes = calls.generate, []

    def recording(model, prompts, config, decode_batching="static", counts=None):
        modes.append(decode_batching)
        return real(model, prompts, config, decode_batching, counts)

    calls.generate = recording
    out = []
    for plan in plans:
        modes.clear()
        (result,) = W.run_plans(rank, world_size, [plan], config)
        out.append({**result, "modes": sorted(set(modes))})
    return out


def _metrics(messages: list[dict]) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for m in messages:
        out.setdefault(m["iteration"], {}).update(m["metrics"])
    return out


def test_continuous_generation_trains_as_static_generation_does():
    plans = [_plan("static"), _plan("continuous")]
    assert plans[1].executions["actor_gen"].decode_batching == "continuous"
    assert all(runnable_problem(plan, CONFIG) is None for plan in plans)
    (static, continuous), = run_distributed(_run_recording_modes, 1,
                                            (W.as_mappings(plans), CONFIG), timeout_s=300)
    assert (static["modes"], continuous["modes"]) == (["static"], ["continuous"])
    static_metrics, continuous_metrics = _metrics(static["messages"]), \
        _metrics(continuous["messages"])
    assert sorted(static_metrics) == [0, 1]
    assert any("loss" in key for key in static_metrics[0])
    assert continuous_metrics == static_metrics
    # not vacuous: training moved the actor, and sampling made different rollouts per
    # iteration (the metrics change)
    assert static_metrics[0] != static_metrics[1]
    weights = static["weights"]["actor"]
    assert weights.keys() == continuous["weights"]["actor"].keys()
    for name, (ranges, tensor) in weights.items():   # one process: whole tensors
        other_ranges, other = continuous["weights"]["actor"][name]
        assert other_ranges == ranges and torch.equal(other, tensor), name
