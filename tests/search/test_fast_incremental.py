"""The search's incremental evaluation (fast_evaluator.apply_call, then price) gives the
same numbers, bit for bit, as evaluating the whole changed plan (FastEvaluator.evaluate),
along a random walk of one-call changes, some kept and some undone by applying the old
candidate again (the MCMC step keeps a copy instead, mcmc_kernel._run_rounds)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from planner.domain.cluster import cluster_preset
from planner.domain.workflow_file import builtin_workflow
from planner.search import fast_evaluator as fe
from planner.search.builder import full_tables, pruned_tables

STEPS = 3000


@numba.njit
def _walk(start, kt, calls, candidates, keep, out_time, out_overflow, out_plan):
    """Change call calls[s] to global candidate candidates[s] at step s, price the plan,
    record it, and undo the change unless keep[s]."""
    scratch = fe.new_scratch(kt)
    plan = start.copy()
    fe.evaluate_plan(plan, kt, scratch)
    for s in range(calls.shape[0]):
        k, old = calls[s], plan[calls[s]]
        plan[k] = candidates[s]
        fe.apply_call(k, plan[k], kt, scratch)
        out_time[s], out_overflow[s] = fe.price(kt, scratch)
        out_plan[s] = plan
        if not keep[s]:
            plan[k] = old
            fe.apply_call(k, old, kt, scratch)


def random_walk(tables, evaluator, steps: int, seed: int):
    """(start plan, call changed at each step, its new global candidate, whether the
    change is kept): a seeded walk of one-call changes, 30% kept, as the MCMC makes them."""
    rng = np.random.default_rng(seed)
    sizes, offset = tables.sizes, evaluator.offset
    calls = rng.integers(0, len(sizes), steps)
    candidates = offset[calls] + (rng.random(steps) * sizes[calls]).astype(np.int64)
    keep = rng.random(steps) < 0.3
    start = (rng.random(len(sizes)) * sizes).astype(np.int64) + offset
    return start, calls, candidates, keep


@pytest.mark.parametrize("algorithm,cluster_name", [("ppo", "h100x16"), ("grpo", "h100x8")])
def test_incremental_prices_equal_whole_plan_prices(algorithm, cluster_name):
    tables, _ = pruned_tables(full_tables(builtin_workflow(algorithm),
                                          cluster_preset(cluster_name)), {})
    evaluator = fe.FastEvaluator(tables)
    sizes, offset = tables.sizes, evaluator.offset
    start, calls, candidates, keep = random_walk(tables, evaluator, STEPS, 5)
    out_time, out_overflow = np.empty(STEPS), np.empty(STEPS)
    out_plan = np.empty((STEPS, len(sizes)), dtype=np.int64)
    _walk(start, evaluator.kernel, calls, candidates, keep, out_time, out_overflow, out_plan)
    whole = evaluator.evaluate(out_plan - offset)
    assert len(np.unique(out_plan, axis=0)) > STEPS // 2        # the walk moves
    assert np.array_equal(out_time, whole.iteration_s)
    assert np.array_equal(out_overflow, whole.overflow)
    assert whole.feasible.any() and not whole.feasible.all()
