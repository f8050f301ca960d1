"""The lower bound of planner.search.lower_bound: never above the time of a plan of its space
(the exhaustive optimum, random plans, under the fast evaluator and the exact simulator),
at least each model's chain of fastest calls, and tight where the optimum is known to be
the device-seconds of the calls run one after another on every device."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import estimate_plan, simulate
from planner.cli.show import BOUND_MAX_DEVICES, lower_bound_line, plan_as_text
from planner.domain.cluster import cluster_preset
from planner.domain.paths import PLANS_DIR
from planner.domain.plan import load_plan
from planner.domain.workflow_file import builtin_workflow
from planner.search.builder import full_tables, pruned_tables
from planner.search.exhaustive import exhaustive_search
from planner.search.fast_evaluator import FastEvaluator
from planner.search.lower_bound import call_options, gap_text, lower_bound

# The CPU batch of benchmarks/search_quality.py, where PPO's space is small enough to run.
CPU_BATCH = {"n_seqs": 64, "prompt_len": 128, "gen_len": 128, "ppo_minibatches": 2}
RELATIVE_SLACK = 1e-9       # float rounding between the bound's sums and the schedule's


def space(algorithm: str, model: str, cluster_name: str):
    batch = CPU_BATCH if cluster_name.startswith("cpu") else None
    workflow = builtin_workflow(algorithm, model=model, batch=batch)
    cluster = cluster_preset(cluster_name)
    full = full_tables(workflow, cluster)
    tables, _ = pruned_tables(full, {})
    return workflow, cluster, full, tables


@pytest.mark.parametrize("algorithm,model,cluster_name", [
    ("dpo", "llama-7b", "h100x8"), ("grpo", "llama-7b", "h100x4")])
def test_bound_is_below_the_exhaustive_optimum(algorithm, model, cluster_name):
    """Below the best feasible plan of the whole space, as the fast evaluator and the exact
    simulator price it; the full and the pruned tables give the same bound."""
    workflow, cluster, full, tables = space(algorithm, model, cluster_name)
    bound = lower_bound(tables)
    assert bound.iteration_s == pytest.approx(lower_bound(full).iteration_s, rel=1e-12)
    truth = exhaustive_search(FastEvaluator(tables))
    assert bound.iteration_s <= truth.best_iteration_s * (1 + RELATIVE_SLACK)
    exact = simulate(workflow, cluster, tables.executions_of(truth.best_choice))
    assert exact.feasible
    assert bound.iteration_s <= exact.iteration_s * (1 + RELATIVE_SLACK)


@pytest.mark.parametrize("algorithm,model,cluster_name", [
    ("ppo", "llama-tiny", "cpu2"), ("ppo", "llama-7b", "h100x8"),
    ("grpo", "llama-7b", "h100x8")])
def test_bound_is_below_every_random_plan(algorithm, model, cluster_name):
    """Random plans of the space, fitting or not (the bound only assumes each candidate fits
    alone, which every candidate of the pruned tables does): none is faster than the bound
    under the fast evaluator, nor under the exact simulator on a sample."""
    workflow, cluster, _, tables = space(algorithm, model, cluster_name)
    bound = lower_bound(tables).iteration_s
    rng = np.random.default_rng(7)
    choices = np.stack([rng.integers(0, len(t), 20000) for t in tables.calls], axis=1)
    fast = FastEvaluator(tables).evaluate(choices).iteration_s
    assert fast.min() >= bound * (1 - RELATIVE_SLACK)
    costs = PlanCosts(workflow, cluster)
    for choice in choices[:20]:
        exact = simulate(workflow, cluster, tables.executions_of(choice), costs=costs)
        assert exact.iteration_s >= bound * (1 - RELATIVE_SLACK)


@pytest.mark.parametrize("algorithm,model,cluster_name", [
    ("ppo", "llama-tiny", "cpu2"), ("grpo", "llama-7b", "h100x8"),
    ("dpo", "llama-7b", "h100x8")])
def test_bound_is_at_least_each_trained_models_chain(algorithm, model, cluster_name):
    """A trained model's calls run one after another in every iteration and its first call
    waits for its train call: the bound is at least their fastest times added up."""
    _, _, _, tables = space(algorithm, model, cluster_name)
    options = call_options(tables)
    bound = lower_bound(tables).iteration_s
    for trained in tables.trained_models:
        chain = sum(options.fastest(k)[0] for k, t in enumerate(tables.calls)
                    if t.model == trained)
        assert bound >= chain * (1 - RELATIVE_SLACK)


def test_bound_counts_the_device_seconds_of_a_call_that_can_run_ahead():
    """DPO's ref_inf depends on nothing of the previous iteration, so its later runs may
    start before iteration 0 ends; the bound still counts its device-seconds (the case split
    over sharing a device with actor_train), and on 8 H100, where the optimum runs both
    calls on all devices one after the other, it is the calls' device-seconds over the
    devices and within the few percent the optimum's extra costs add."""
    _, _, _, tables = space("dpo", "llama-7b", "h100x8")
    options = call_options(tables)
    device_seconds = sum(options.fastest(k)[1] for k in range(len(tables.calls)))
    bound = lower_bound(tables).iteration_s
    assert bound >= device_seconds / len(tables.device_node) * (1 - RELATIVE_SLACK)
    truth = exhaustive_search(FastEvaluator(tables))
    ref, train = (tables.calls[k].executions[i] for k, i in enumerate(truth.best_choice))
    assert ref.num_devices == train.num_devices == len(tables.device_node)
    assert bound > max(options.fastest(k)[0] for k in range(len(tables.calls)))


def test_no_bound_when_a_call_fits_nowhere():
    _, _, _, tables = space("dpo", "llama-7b", "h100x8")
    train = tables.calls[1]
    oversized = dataclasses.replace(train, alone_peak_bytes=train.capacity_bytes * 2)
    assert lower_bound(dataclasses.replace(tables, calls=[tables.calls[0], oversized])) \
        is None


def test_gap_text():
    assert gap_text(11.0, 10.0) == "within 10.0% of a lower bound (10.00 s)"


def test_plan_show_prints_the_gap_of_a_small_plan():
    """A plan without a stored bound, on one CPU device: `plan show` computes the bound of
    its space and prints the plan's gap to it (never negative: the plan is of the space)."""
    plan = load_plan(PLANS_DIR / "ppo-llama-micro-cpu1.yaml")
    text = plan_as_text(plan, estimate_plan(plan))
    line = next(x for x in text.splitlines() if "lower bound" in x)
    assert line.startswith("estimate is within ") and "-" not in line.split("within")[1]


def test_plan_show_prefers_the_stored_bound_and_explains_a_missing_one():
    """A plan of 8 devices searched before bounds were stored: without --lower-bound it is
    computed only on clusters up to BOUND_MAX_DEVICES; with a stored bound, the stored
    estimate's gap to it is printed."""
    plan = load_plan(PLANS_DIR / "ppo-h100x8.yaml")
    wide = plan.cluster.num_devices > BOUND_MAX_DEVICES
    assert ("plan show --lower-bound" in lower_bound_line(plan, estimate_plan(plan), False)) \
        == wide
    saved = plan.estimate["iteration_s"]
    search = {**plan.provenance.search, "lower_bound_s": saved / 1.25}
    stored = plan.model_copy(update={"provenance": plan.provenance.model_copy(
        update={"search": search})})
    assert lower_bound_line(stored, estimate_plan(stored), False) == \
        f"search: the saved estimate is within 25.0% of a lower bound " \
        f"({saved / 1.25:.2f} s) on its space"
