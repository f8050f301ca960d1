"""The fast evaluator's memory against the exact simulator's (costmodel/simulator.py, rule 6).

The fast evaluator keeps one number per candidate for each memory term: the largest over the
mesh's pipeline stages. When every call runs pp = 1, every device of a mesh holds the same
shard sizes (tp splits are even, planner/sharding/param_shards.py) and the same working set,
so its call peaks equal the exact per-device ones; with pipeline stages they bound them from
above. Its reallocation receive buffer (the receiver's whole new shard) bounds the exact one
(the largest message of the transfer schedule), so a plan it calls feasible fits under the
exact memory rule. Only Estimate.call_peak_memory_bytes and Estimate.peak_memory_bytes of the
exact simulator are read.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import simulate
from planner.domain.cluster import cluster_preset
from planner.domain.workflow_file import builtin_workflow
from planner.search.builder import full_tables, pruned_tables
from planner.search.fast_evaluator import FastEvaluator

CASES = [("ppo", "llama-tiny", "cpu4"), ("grpo", "llama-tiny", "cpu4"),
         ("ppo", "llama-7b", "h100x8"), ("grpo", "llama-7b", "h100x16"),
         ("ppo", "llama-7b", "h100x16")]
PLANS_PER_CASE = 25
REL = 1e-9            # both sum the same per-device terms, in different orders


@lru_cache(maxsize=None)
def setup(algorithm: str, model: str, cluster_name: str):
    workflow = builtin_workflow(algorithm, model=model)
    cluster = cluster_preset(cluster_name)
    tables, _ = pruned_tables(full_tables(workflow, cluster), {})
    return workflow, cluster, tables, FastEvaluator(tables), PlanCosts(workflow, cluster)


def random_plans(allowed: list[np.ndarray], num_plans: int, seed: int) -> np.ndarray:
    """`num_plans` plans [plan, call], call k's candidate drawn from `allowed[k]`."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(indices, num_plans) for indices in allowed], axis=1)


def exact_estimate(case, choice: np.ndarray):
    workflow, cluster, tables, _, costs = setup(*case)
    return simulate(workflow, cluster, tables.executions_of(choice), costs=costs)


def exact_call_peaks(case, choice: np.ndarray) -> np.ndarray:
    calls = setup(*case)[2].calls
    peaks = exact_estimate(case, choice).call_peak_memory_bytes
    return np.array([peaks[call.name] for call in calls])


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_call_peaks_equal_exact_when_no_call_is_pipelined(case):
    tables, evaluator = setup(*case)[2:4]
    one_stage = [np.flatnonzero([e.pp == 1 for e in call.executions]) for call in tables.calls]
    for choice in random_plans(one_stage, PLANS_PER_CASE, seed=0):
        assert evaluator.call_peak_bytes(choice) == pytest.approx(
            exact_call_peaks(case, choice), rel=REL)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_call_peaks_bound_exact_from_above(case):
    tables, evaluator = setup(*case)[2:4]
    plans = random_plans([np.arange(len(call)) for call in tables.calls], PLANS_PER_CASE,
                         seed=1)
    pipelined = [any(e.pp > 1 for e in tables.executions_of(choice).values())
                 for choice in plans]
    assert sum(pipelined) >= PLANS_PER_CASE // 2, "the sample must exercise pp > 1"
    for choice in plans:
        fast = evaluator.call_peak_bytes(choice)
        exact = exact_call_peaks(case, choice)
        assert np.all(fast >= exact * (1 - REL)), (tables.executions_of(choice), fast, exact)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_plans_the_fast_evaluator_calls_feasible_fit_the_exact_memory_rule(case):
    _, cluster, tables, evaluator, _ = setup(*case)
    plans = random_plans([np.arange(len(call)) for call in tables.calls], 3000, seed=2)
    overflow = evaluator.evaluate(plans).overflow
    # The feasible plans closest to the capacity, where a bound that is too low shows first.
    feasible = np.flatnonzero(overflow <= 0)
    closest = plans[feasible[np.argsort(overflow[feasible])[::-1][:PLANS_PER_CASE]]]
    assert len(closest) >= 5
    capacity = np.array([cluster.usable_memory_bytes(d) for d in range(cluster.num_devices)])
    for choice in closest:
        peaks = exact_estimate(case, choice).peak_memory_bytes
        exact_peak = np.array([peaks[d] for d in range(cluster.num_devices)])
        assert np.all(exact_peak <= capacity), tables.executions_of(choice)


def plans_without_reallocation(tables, num_plans: int, seed: int) -> np.ndarray:
    """Plans in which all calls of a model share one placement (no reallocation, so no
    receive buffer and no transient weights copy)."""
    rng = np.random.default_rng(seed)
    by_model: dict[str, list[int]] = {}
    for k, call in enumerate(tables.calls):
        by_model.setdefault(call.model, []).append(k)
    plans = np.zeros((num_plans, len(tables.calls)), dtype=np.int64)
    for calls in by_model.values():
        shared = sorted(set.intersection(*(set(tables.calls[k].placement.tolist())
                                           for k in calls)))
        assert shared, f"calls {calls} have no placement in common"
        for n, placement in enumerate(rng.choice(shared, num_plans)):
            for k in calls:
                plans[n, k] = rng.choice(np.flatnonzero(tables.calls[k].placement == placement))
    return plans


def test_without_reallocations_the_overflow_is_the_worst_call_peak():
    """call_peak_bytes is the quantity the memory rule compares with capacity: when no
    model moves, the evaluator's overflow is the worst call's (peak - capacity) / capacity."""
    tables, evaluator = setup("ppo", "llama-7b", "h100x8")[2:4]
    plans = plans_without_reallocation(tables, 200, seed=3)
    overflow = evaluator.evaluate(plans).overflow
    assert (overflow > 0).any() and (overflow <= 0).any()
    for choice, plan_overflow in zip(plans, overflow):
        capacity = np.array([call.capacity_bytes[i] for call, i in zip(tables.calls, choice)])
        worst = np.max((evaluator.call_peak_bytes(choice) - capacity) / capacity)
        assert worst == pytest.approx(plan_overflow, rel=1e-12, abs=1e-12)


def test_call_peak_bytes_rejects_a_choice_that_is_not_one_index_per_call():
    tables, evaluator = setup("grpo", "llama-tiny", "cpu4")[2:4]
    with pytest.raises(ValueError, match="one candidate index per call"):
        evaluator.call_peak_bytes(np.zeros(len(tables.calls) + 1, dtype=np.int64))
    with pytest.raises(ValueError, match="one candidate index per call"):
        evaluator.call_peak_bytes(tables.sizes)       # one past the last candidate
