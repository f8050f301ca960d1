"""Calls that share a CPU node's cores (costmodel/core_sharing.py).

Hand-made schedules check the processor-sharing rates; on the augmented graphs of random
cpu4 plans the event simulation with no core-limited node reproduces the list schedule
exactly; the simulator applies the sharing only with a calibration of fewer cores than
devices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from costmodel.calibration import load_calibration
from costmodel.core_sharing import (
    ScheduledWork,
    core_demand,
    core_limited_nodes,
    shared_core_schedule,
)
from costmodel.plan_cost import PlanCosts
from costmodel.simulator import simulate
from planner.domain.cluster import cluster_preset
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow_file import builtin_workflow
from planner.search.builder import full_tables

CALIBRATION = load_calibration(Path(PROFILES_DIR) / "cpu" / "calibration.yaml")
BATCH = {"n_seqs": 16, "prompt_len": 32, "gen_len": 16, "ppo_minibatches": 2}


def _work(devices, seconds, demand=None, preds=()):
    return ScheduledWork(tuple(devices), seconds, demand or {}, tuple(preds))


def test_two_calls_on_disjoint_devices_share_two_cores():
    # each needs both cores: together they run at half speed, both end at 2 s
    work = {"a": _work([0, 1], 1.0, {0: 2}), "b": _work([2, 3], 1.0, {0: 2})}
    start, end, _ = shared_core_schedule(["a", "b"], work, {0: 2})
    assert start == {"a": 0.0, "b": 0.0}
    assert end == pytest.approx({"a": 2.0, "b": 2.0})


def test_rates_follow_the_cores_the_running_calls_need():
    # a needs 2 cores, b 1: 3 needed of 2, each at 2/3 until b ends at 0.6 / (2/3) = 0.9;
    # then a alone at full speed for its remaining 1 - 0.6 = 0.4 s: ends at 1.3
    work = {"a": _work([0, 1], 1.0, {0: 2}), "b": _work([2], 0.6, {0: 1}),
            "c": _work([2], 0.5, {0: 1}, preds=[("b", 0.25)])}
    start, end, binding = shared_core_schedule(["a", "b", "c"], work, {0: 2})
    assert end["b"] == pytest.approx(0.9)
    # c waits for b's end plus its data transfer, 1.15; a and c then share: 3 cores needed
    # of 2 from 1.15 until a's remaining work at 2/3 ends
    assert start["c"] == pytest.approx(1.15) and binding["c"] == "b"
    remaining_a = 1.0 - 0.6 - (1.15 - 0.9)
    assert end["a"] == pytest.approx(1.15 + remaining_a / (2 / 3))
    assert end["c"] > end["a"]


def test_a_device_runs_its_nodes_in_the_priority_order():
    # b is ready at 0 but is after a on device 0, which waits for a transfer of 1 s
    work = {"x": _work([1], 0.0), "a": _work([0], 1.0, preds=[("x", 1.0)]),
            "b": _work([0], 1.0)}
    start, end, binding = shared_core_schedule(["x", "a", "b"], work, {})
    assert (start["a"], start["b"]) == (1.0, 2.0) and binding["b"] == "a"


def _random_plans(count):
    workflow = builtin_workflow("ppo", model="llama-tiny", batch=BATCH)
    cluster = cluster_preset("cpu4")
    tables = full_tables(workflow, cluster)
    rng = np.random.default_rng(5)
    plans = [tables.executions_of([rng.integers(0, len(t)) for t in tables.calls])
             for _ in range(count)]
    return workflow, cluster, plans


def test_with_cores_enough_the_event_simulation_is_the_list_schedule(monkeypatch):
    """A node limited to as many cores as devices runs the event simulation with every rate
    1: the same start and end of every node as the list schedule, transfers included."""
    import costmodel.simulator as simulator
    workflow, cluster, plans = _random_plans(8)
    costs = PlanCosts(workflow, cluster)
    listed = [simulate(workflow, cluster, ex, costs=costs) for ex in plans]
    assert any(max(e.transfer_times_s.values(), default=0) > 0 for e in listed)
    monkeypatch.setattr(simulator, "core_limited_nodes", lambda cluster, calibration: {0: 4})
    for executions, by_list in zip(plans, listed):
        by_events = simulate(workflow, cluster, executions, costs=costs)
        assert by_events.node_times.keys() == by_list.node_times.keys()
        for name, (start, end) in by_list.node_times.items():
            assert by_events.node_times[name] == pytest.approx((start, end), abs=1e-12)
        assert by_events.iteration_s == pytest.approx(by_list.iteration_s, abs=1e-12)


def test_only_a_calibrated_cpu_node_with_fewer_cores_than_devices_is_limited():
    cpu4, cpu2 = cluster_preset("cpu4"), cluster_preset("cpu2")
    assert core_limited_nodes(cpu4, None) == {}
    assert core_limited_nodes(cpu4, CALIBRATION) == {0: 2}      # shipped: 2 cores
    assert core_limited_nodes(cpu2, CALIBRATION) == {}
    assert core_limited_nodes(cluster_preset("h100x8"), CALIBRATION) == {}
    workflow, cluster, plans = _random_plans(1)
    for execution in plans[0].values():
        assert core_demand(execution, cluster, {0: 2}) == {0: min(2, len(execution.devices))}


def test_sharing_only_slows_the_simulated_plans(monkeypatch):
    import costmodel.simulator as simulator
    workflow, cluster, plans = _random_plans(6)
    costs = PlanCosts(workflow, cluster, calibration=CALIBRATION)
    shared = [simulate(workflow, cluster, ex, costs=costs) for ex in plans]
    monkeypatch.setattr(simulator, "core_limited_nodes", lambda cluster, calibration: {})
    slowed = 0
    for executions, with_sharing in zip(plans, shared):
        alone = simulate(workflow, cluster, executions, costs=costs)
        assert with_sharing.call_times_s == alone.call_times_s
        assert with_sharing.iteration_s >= alone.iteration_s * (1 - 1e-12)
        slowed += with_sharing.iteration_s > 1.01 * alone.iteration_s
    assert slowed, "no plan ran calls at once on the shared cores: the check is vacuous"
