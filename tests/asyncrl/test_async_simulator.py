"""The exact simulator of asynchronous plans (costmodel/simulator.py, plan_memory.py).

The disjoint case (GRPO, llama-7b on h100x16: generation on node 0, reward, reference and
training on node 1) is where staleness 1 pays: generation of iteration i + 1 runs beside
the training of iteration i. A push occupies both meshes (senders and receivers), so the
period of the pipeline is max(G, T) + P, G the generate call, T the training chain (reward,
reference, train with its proximal forward, and the transfers into them), P the push.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from async_support import H100X8_EXECUTIONS

from costmodel.plan_cost import PROXIMAL_PHASE, PlanCosts
from costmodel.plan_memory import ROLLOUT_COPY, WEIGHTS_COPY
from costmodel.simulator import estimate_plan, simulate, simulated_iterations
from planner.domain.augment import weight_pushes
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.plan import load_plan
from planner.domain.workflow_file import builtin_workflow

PLANS = sorted((Path(__file__).parents[2] / "plans").glob("*.yaml"))
NODE0, NODE1 = tuple(range(8)), tuple(range(8, 16))
H100X16 = cluster_preset("h100x16")
GRPO = builtin_workflow("grpo", model="llama-7b", max_staleness=2)
DISJOINT = {"actor_gen": Execution(devices=NODE0, dp=8, tp=1, pp=1),
            "rew_inf": Execution(devices=NODE1, dp=8, tp=1, pp=1),
            "ref_inf": Execution(devices=NODE1, dp=8, tp=1, pp=1),
            "actor_train": Execution(devices=NODE1, dp=8, tp=1, pp=1, micro_batches=4)}
COSTS = PlanCosts(GRPO, H100X16)


def _same_estimate(a, b) -> None:
    assert a.iteration_s == b.iteration_s
    assert a.call_times_s == b.call_times_s and a.realloc_times_s == b.realloc_times_s
    assert a.transfer_times_s == b.transfer_times_s and a.node_times == b.node_times
    assert a.peak_memory_bytes == b.peak_memory_bytes
    assert a.call_peak_memory_bytes == b.call_peak_memory_bytes
    assert a.push_times_s == b.push_times_s == {} and a.staleness_reached == 0


@pytest.mark.parametrize("path", PLANS, ids=[p.name for p in PLANS])
def test_shipped_plans_at_staleness_zero_are_unchanged_by_a_bound(path):
    plan = load_plan(path)
    assert plan.staleness == 0
    est = estimate_plan(plan)
    assert est.staleness == 0
    workflow = plan.workflow
    if workflow.rollout_models():
        bounded = workflow.model_validate({**workflow.model_dump(), "max_staleness": 3})
        _same_estimate(est, simulate(bounded, plan.cluster, plan.executions))
    _same_estimate(est, simulate(workflow, plan.cluster, plan.executions, 3, staleness=0))


def test_random_plans_at_staleness_zero_are_unchanged_by_a_bound():
    rng = random.Random(5)
    cluster = cluster_preset("h100x8")
    for algorithm in ("ppo", "grpo", "remax", "rloo"):
        plain, bounded = builtin_workflow(algorithm), builtin_workflow(algorithm, max_staleness=2)
        for _ in range(3):
            executions = {c: rng.choice(H100X8_EXECUTIONS) for c in plain.call_order}
            _same_estimate(simulate(plain, cluster, executions),
                           simulate(bounded, cluster, executions))


def _interval(est, node):
    return est.node_times[node]


def test_disjoint_staleness_one_overlaps_and_runs_at_the_slower_chain():
    sync = simulate(GRPO, H100X16, DISJOINT, costs=COSTS)
    est = simulate(GRPO, H100X16, DISJOINT, costs=COSTS, staleness=1)
    k = simulated_iterations(1)
    assert est.staleness == 1 and k == 5 and est.feasible == sync.feasible
    (push,) = weight_pushes(GRPO, 1)
    p = est.push_times_s[push.name]
    assert p == COSTS.realloc("actor", DISJOINT["actor_train"], DISJOINT["actor_gen"]).time_s > 0
    proximal = est.call_phases_s["actor_train"][PROXIMAL_PHASE]
    assert proximal == COSTS.proximal_time("actor_train", DISJOINT["actor_train"]) > 0
    assert est.call_times_s["actor_train"] == pytest.approx(
        sync.call_times_s["actor_train"] + proximal, rel=1e-12)
    for i in range(1, k - 1):  # generation of i + 1 overlaps training of i
        gen_start, gen_end = _interval(est, f"{i + 1}/actor_gen")
        train_start, train_end = _interval(est, f"{i}/actor_train")
        assert gen_start < train_end and train_start < gen_end
    g = est.call_times_s["actor_gen"]
    transfers = est.transfer_times_s
    t = (est.call_times_s["rew_inf"] + est.call_times_s["ref_inf"]
         + est.call_times_s["actor_train"] + max(transfers.values()))
    period = max(g, t) + p
    # the last simulated iteration has no push after its generation, so its training
    # starts up to one push earlier: the steady state is low by at most p / (k - 1 - s)
    assert period - p / (k - 2) - 1e-9 <= est.iteration_s <= period + 1e-9
    assert est.iteration_s < sync.iteration_s - 0.5 * min(g, t)  # not the sum
    assert est.staleness_reached == 1


@pytest.mark.parametrize("staleness", [1, 2, 3])
def test_staleness_reached_never_exceeds_the_plan(staleness):
    workflow = builtin_workflow("grpo", model="llama-7b", max_staleness=3)
    est = simulate(workflow, H100X16, DISJOINT, costs=PlanCosts(workflow, H100X16),
                   staleness=staleness)
    assert 0 < est.staleness_reached <= staleness
    for i in range(staleness + 1, simulated_iterations(staleness)):
        push_end = est.node_times[f"{i - staleness - 1}/push:actor:actor_train->actor_gen"][1]
        assert push_end <= est.node_times[f"{i}/actor_gen"][0]


def test_memory_counts_both_copies():
    sync = simulate(GRPO, H100X16, DISJOINT, costs=COSTS)
    est = simulate(GRPO, H100X16, DISJOINT, costs=COSTS, staleness=1)
    weights = COSTS.call_memory("actor_gen", DISJOINT["actor_gen"]).weights_bytes
    added = est.memory.persistent_bytes - sync.memory.persistent_bytes
    assert np.allclose(added[list(NODE0)], weights) and not added[list(NODE1)].any()
    for d in NODE0:
        rollout = [a for kind, model, a in est.memory.resident_items(d) if kind == ROLLOUT_COPY]
        assert rollout == [pytest.approx(float(weights[d]))]
    gen_node = next(n for n in est.memory.nodes if n.name == "actor_gen")
    assert all(kind != WEIGHTS_COPY for kind, _, _ in gen_node.parts)
    sync_gen = next(n for n in sync.memory.nodes if n.name == "actor_gen")
    assert any(kind == WEIGHTS_COPY for kind, _, _ in sync_gen.parts)
    assert any(n.name.startswith("push:") for n in est.memory.nodes)


def test_colocated_staleness_one_is_never_faster():
    rng = random.Random(3)
    cluster = cluster_preset("h100x8")
    everywhere = [e for e in H100X8_EXECUTIONS if e.devices == tuple(range(8))]
    for algorithm in ("ppo", "grpo", "remax", "rloo"):
        workflow = builtin_workflow(algorithm, max_staleness=1)
        costs = PlanCosts(workflow, cluster)
        for _ in range(3):
            executions = {c: rng.choice(everywhere) for c in workflow.call_order}
            gens = [c for c in workflow.call_order
                    if workflow.call_by_name[c].kind == "generate"]
            executions.update({c: executions[gens[0]] for c in gens})
            sync = simulate(workflow, cluster, executions, costs=costs)
            stale = simulate(workflow, cluster, executions, costs=costs, staleness=1)
            assert stale.iteration_s >= sync.iteration_s
            assert max(stale.peak_memory_bytes.values()) >= max(sync.peak_memory_bytes.values())


def test_too_few_iterations_are_refused():
    with pytest.raises(ValueError, match="at least staleness 2 \\+ 2"):
        simulate(GRPO, H100X16, DISJOINT, 3, COSTS, staleness=2)
