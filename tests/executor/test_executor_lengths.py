"""Programmatic lengths (runtime/executor/lengths.py): `plan run` makes the response and
prompt lengths the workflow's distributions state, the same under every layout.

Draws follow the distribution (mean and maximum of many draws), do not depend on how the
sequences are split over replicas, and a fixed length draws itself; synthetic prompts take
the prompt distribution's lengths; a long-tailed GRPO run generates, on 1 process and
under dp 2 with continuous batching on 2 processes, responses whose mean length per
iteration is the drawn lengths' mean.
"""

from __future__ import annotations

import numpy as np
import pytest

from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.plan import Plan, Provenance
from planner.domain.workflow import BatchSpec
from planner.domain.workflow_file import builtin_workflow
from runtime.executor.config import RunConfig
from runtime.executor.dataset import Dataset
from runtime.executor.launcher import run_plan
from runtime.executor.lengths import drawn_lengths

LONG_TAIL = {"mean": 5, "max": 24}
BATCH = {"n_seqs": 16, "prompt_len": {"mean": 6, "max": 12}, "gen_len": LONG_TAIL,
         "ppo_minibatches": 1, "group_size": 4}
ITERATIONS = 2


def test_draws_follow_the_distribution_and_not_the_split():
    lengths = BatchSpec(n_seqs=1, prompt_len=1, gen_len=LONG_TAIL).gen_lengths
    draws = drawn_lengths(lengths, 0, 3, "response", range(20_000)).numpy()
    assert draws.min() >= 1 and draws.max() == 24
    assert draws.mean() == pytest.approx(lengths.mean_len, rel=0.03)
    # the atom at the maximum (rows cut at gen_len) has its probability
    assert (draws == 24).mean() == pytest.approx(1 - lengths.cdf([23])[0], abs=0.01)
    halves = np.concatenate([drawn_lengths(lengths, 0, 3, "response", range(0, 7)),
                             drawn_lengths(lengths, 0, 3, "response", range(7, 16))])
    assert np.array_equal(halves, draws[:16])
    assert not np.array_equal(drawn_lengths(lengths, 1, 3, "response", range(16)), draws[:16])
    fixed = BatchSpec(n_seqs=1, prompt_len=1, gen_len=9).gen_lengths
    assert drawn_lengths(fixed, 0, 0, "response", range(50)).tolist() == [9] * 50


def test_synthetic_prompts_take_the_prompt_distribution_lengths():
    batch = BatchSpec(**BATCH)
    rows = Dataset(batch, 64, 0, False).prompts(1)
    real = rows.mask.sum(-1)
    expected = drawn_lengths(batch.prompt_lengths, 0, 1, "prompt", range(4))
    assert real.tolist() == expected.repeat_interleave(4).tolist()
    assert len(set(expected.tolist())) > 1
    # a fixed prompt length: every prompt fills prompt_len
    fixed = BatchSpec(n_seqs=8, prompt_len=6, gen_len=4)
    assert Dataset(fixed, 64, 0, False).prompts(0).mask.sum(-1).tolist() == [6] * 8


def _plan(devices, generate: Execution) -> Plan:
    workflow = builtin_workflow("grpo", "llama-tiny", BATCH)
    executions = {c: Execution(devices=devices, dp=len(devices), tp=1, pp=1)
                  for c in workflow.call_order}
    return Plan(workflow=workflow, cluster=cluster_preset(f"cpu{len(devices)}"),
                executions={**executions, "actor_gen": generate},
                provenance=Provenance(created_by="tests/executor: programmatic lengths"))


def test_responses_have_the_drawn_lengths_under_every_layout():
    one = _plan((0,), Execution(devices=(0,), dp=1, tp=1, pp=1, micro_batches=2))
    two = _plan((0, 1), Execution(devices=(0, 1), dp=2, tp=1, pp=1, micro_batches=2,
                                  decode_batching="continuous"))
    two = two.model_copy(update={"workflow": two.workflow.model_copy(
        update={"max_staleness": 1}), "staleness": 1})
    batch = one.workflow.batch
    for plan in (one, Plan.model_validate(two.model_dump())):
        trace, _ = run_plan(plan, RunConfig(iterations=ITERATIONS), emit=lambda line: None)
        for i, iteration in enumerate(trace["iterations"]):
            expected = drawn_lengths(batch.gen_lengths, 0, i, "response",
                                     range(batch.n_seqs)).double().mean()
            assert iteration["metrics"]["response_length_mean"] == pytest.approx(
                float(expected), abs=1e-9)
