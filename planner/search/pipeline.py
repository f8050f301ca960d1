"""`search`: from a workflow and a cluster to the best plan found, with its baselines.

1. Price every candidate execution of every call (planner.search.builder).
2. Build the baselines (planner.search.baselines) on the full tables, then prune the tables
   (keeping the baselines' candidates) so the search space is smaller but holds the optimum.
3. Run the MCMC search (planner.search.mcmc) seeded with the baselines, on the fast evaluator.
4. Re-price the best distinct plans found and the baselines with the exact simulator
   (costmodel.simulator) and keep the best feasible one. The result is therefore never worse
   than a baseline under the exact cost model.
5. A lower bound on the iteration time of every plan of the space (planner.search.
   lower_bound), printed beside the plan as its gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import Estimate, executions_memory_problem, simulate
from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import Workflow
from planner.search.baselines import BaselineJudge, build_baselines
from planner.search.builder import full_tables, pruned_tables
from planner.search.fast_evaluator import FastEvaluator
from planner.search.lower_bound import lower_bound
from planner.search.mcmc import MCMCResult, MCMCSettings, run_mcmc, warm_up
from planner.search.tables import SearchTables


@dataclass
class PricedPlan:
    executions: dict[str, Execution]
    estimate: Estimate


@dataclass
class SearchOutcome:
    best: PricedPlan | None                       # None when no plan fits
    baselines: dict[str, PricedPlan | None]
    mcmc: MCMCResult | None                       # None when some call fits nowhere
    tables: SearchTables
    build_s: float
    smallest_overflow_bytes: float                # when nothing fits: the least excess found
    unplaceable_call: str | None = None           # a call with no candidate that fits alone
    lower_bound_s: float | None = None            # planner.search.lower_bound of the space


def _remap(choice: np.ndarray | None, kept: list[np.ndarray]) -> np.ndarray | None:
    """A choice over the full tables as a choice over the pruned tables."""
    if choice is None:
        return None
    return np.array([int(np.searchsorted(k, c)) for c, k in zip(choice, kept)], dtype=np.int64)


def smallest_shortfall_bytes(evaluator: FastEvaluator, seeds: list[np.ndarray]) -> float:
    """The least memory excess (bytes) among a sample of plans, for an infeasible cluster."""
    tables = evaluator.tables
    rng = np.random.default_rng(0)
    sample = np.stack([rng.integers(0, len(t), 4096) for t in tables.calls], axis=1)
    if seeds:
        sample = np.concatenate([np.array(seeds), sample])
    overflow = evaluator.evaluate(sample).overflow
    capacity = min(float(t.capacity_bytes.min()) for t in tables.calls)
    return float(max(overflow.min(), 0.0) * capacity)


def exact_judge(tables: SearchTables, workflow: Workflow, cluster: ClusterSpec,
                costs: PlanCosts) -> BaselineJudge:
    """A judge that confirms memory with the exact simulator's rule."""
    def fits(choice: np.ndarray) -> bool:
        executions = tables.executions_of(choice)
        return executions_memory_problem(workflow, cluster, executions, costs) is None
    return BaselineJudge(FastEvaluator(tables), fits)


def smallest_alone_shortfall_bytes(table) -> float:
    """For a call that fits nowhere: the least excess of its state and working set over the
    device memory, over all its candidates."""
    return float(np.min(table.alone_peak_bytes - table.capacity_bytes))


def search(workflow: Workflow, cluster: ClusterSpec, settings: MCMCSettings,
           progress: Callable[[int, float, float], None] | None = None,
           should_stop: Callable[[], bool] | None = None, calibration=None,
           profiles_dir: Path = PROFILES_DIR) -> SearchOutcome:
    """Search (module docstring); `calibration` (costmodel.calibration) prices everything
    with fitted factors, as `plan estimate --profile` does; `profiles_dir` holds the profile
    tables (default profiles/)."""
    start = time.perf_counter()
    full = full_tables(workflow, cluster, calibration=calibration, profiles_dir=profiles_dir,
                       price_unfit=False)
    costs = PlanCosts(workflow, cluster, profiles_dir, calibration=calibration)
    judge = exact_judge(full, workflow, cluster, costs)
    baseline_choices = build_baselines(full, judge, cluster, workflow)
    keep = {t.name: set() for t in full.calls}
    for choice in baseline_choices.values():
        if choice is not None:
            for table, index in zip(full.calls, choice):
                keep[table.name].add(int(index))
    tables, kept = pruned_tables(full, keep)
    for table, pruned in zip(full.calls, tables.calls):
        if len(pruned) == 0:
            return SearchOutcome(best=None, baselines={name: None for name in baseline_choices},
                                 mcmc=None, tables=tables,
                                 build_s=time.perf_counter() - start,
                                 smallest_overflow_bytes=smallest_alone_shortfall_bytes(table),
                                 unplaceable_call=table.name)
    evaluator = FastEvaluator(tables)
    seeds = [_remap(c, kept) for c in baseline_choices.values() if c is not None]
    warm_up(evaluator)
    build_s = time.perf_counter() - start
    result = run_mcmc(evaluator, seeds, settings, progress, should_stop)

    def price(choice: np.ndarray, over: SearchTables) -> PricedPlan:
        executions = over.executions_of(choice)
        return PricedPlan(executions, simulate(workflow, cluster, executions, costs=costs))

    baselines = {name: None if c is None else price(c, full)
                 for name, c in baseline_choices.items()}
    priced = [price(c, tables) for c in result.top_choices]
    priced += [p for p in baselines.values() if p is not None]
    feasible = [p for p in priced if p.estimate.feasible]
    best = min(feasible, key=lambda p: p.estimate.iteration_s) if feasible else None
    shortfall = 0.0 if best else smallest_shortfall_bytes(evaluator, seeds)
    bound = lower_bound(tables)
    return SearchOutcome(best=best, baselines=baselines, mcmc=result, tables=tables,
                         build_s=build_s, smallest_overflow_bytes=shortfall,
                         lower_bound_s=None if bound is None else bound.iteration_s)
