"""`plan search --target T`: the best plan a framework can run, from the plans it can express.

The target's space (planner.frameworks.target: `target_plans(workflow, cluster)`, finite) is
enumerated, not sampled, and each plan priced by the cheapest cost model that prices it:
- a plan whose every execution is a candidate of the full search tables
  (planner.search.builder.full_tables) is priced by the fast evaluator, in batches of
  FAST_BATCH plans (planner.search.fast_evaluator: the search's compiled simulator, with its
  stated simplifications);
- any other plan (an execution the search space does not offer, e.g. FSDP's
  shard_parameters_over_dp, or a micro-batch count outside its set) by the exact simulator
  (costmodel.simulator.simulate), about a millisecond per plan on 8 devices (its call
  prices cached), a thousand times the fast evaluator's cost. These are priced after the
  whole space has been read and every fast plan priced, in a fixed shuffled order (the
  target's order groups plans by their first roles' options, so a time limit would price one
  corner of the space), so that a time limit cuts into the slow part only and leaves an
  even sample of it.
Plans with an invalid execution for this model and cluster (a tp that does not divide the
heads, say: the target could express it, the model cannot run it) are skipped and counted.
The REPRICE_TOP fastest plans (feasible ones first, by either price) are kept, those the
fast evaluator priced are re-priced exactly, and the best feasible plan under the exact
simulator is the result, as the unrestricted search does (planner.search.pipeline, step 4).
Pricing stops at the time limit (a `Deadline`, planner.search.deadline, which then also
bounds building the tables and the exact re-pricing: the fastest plan is always re-priced,
the others while time remains); the result says whether the whole space was priced.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import Estimate, simulate
from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution, execution_problem
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import Workflow
from planner.search.builder import full_tables
from planner.search.deadline import Deadline
from planner.search.fast_evaluator import FastEvaluator
from planner.search.pipeline import PricedPlan
from planner.search.tables import SearchTables

FAST_BATCH = 4096       # plans per call of the fast evaluator (amortises its call overhead)
REPRICE_TOP = 16        # plans re-priced exactly, as many as the MCMC search re-prices
SPACE_EXHAUSTED, TIME_LIMIT = "space exhausted", "time limit"
SLOW_ORDER_SEED = 0     # the exact simulator's plans in a fixed shuffled order (below)


@dataclass
class TargetSearchResult:
    """The target's best plan (None when none of the priced plans fits) and what was done."""

    best: PricedPlan | None
    plans_priced: int            # valid plans priced, by either cost model
    fast_priced: int             # of those, by the fast evaluator
    invalid_plans: int           # skipped: an execution the model or cluster cannot run
    stopped_by: str              # SPACE_EXHAUSTED or TIME_LIMIT
    wall_s: float
    reason: str | None           # when best is None and a plan was priced: why the fastest
                                 #   one does not fit


class _Ranked:
    """The `size` fastest plans seen so far, feasible ones first: the smallest keys
    (infeasible, iteration_s, order), order breaking ties by enumeration order. A min-heap
    of negated keys, so its top is the worst plan kept."""

    def __init__(self, size: int):
        self.size = size
        self.heap: list[tuple[tuple[int, float, int], dict[str, Execution],
                              Estimate | None]] = []

    def offer(self, feasible: bool, iteration_s: float, order: int,
              executions: dict[str, Execution], estimate: Estimate | None = None) -> None:
        """Keep the plan if it is among the fastest; `estimate` when it was simulated."""
        seconds = iteration_s if math.isfinite(iteration_s) else math.inf
        negated = (-int(not feasible), -seconds, -order)
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (negated, executions, estimate))
        elif negated > self.heap[0][0]:
            heapq.heapreplace(self.heap, (negated, executions, estimate))

    def best_first(self) -> list[tuple[dict[str, Execution], Estimate | None]]:
        return [(executions, estimate)
                for _, executions, estimate in sorted(self.heap, key=lambda item: item[0],
                                                      reverse=True)]


def candidate_index(tables: SearchTables) -> list[dict[Execution, int]]:
    """Per call (in table order), each candidate execution's index in its table."""
    return [{ex: i for i, ex in enumerate(table.executions)} for table in tables.calls]


def plan_problem(workflow: Workflow, cluster: ClusterSpec,
                 executions: Mapping[str, Execution]) -> str | None:
    """Why one of the plan's executions cannot run its call, or None."""
    for name in workflow.call_order:
        call = workflow.call_by_name[name]
        problem = execution_problem(executions[name], workflow.models[call.model].spec,
                                    cluster, call, workflow.batch)
        if problem:
            return f"{name}: {problem}"
    return None


def search_target_space(workflow: Workflow, cluster: ClusterSpec,
                        plans: Iterable[Mapping[str, Execution]],
                        time_limit_s: float | None = None, calibration=None,
                        profiles_dir: Path = PROFILES_DIR, tables: SearchTables | None = None,
                        deadline: Deadline | None = None,
                        staleness: int = 0) -> TargetSearchResult:
    """Price `plans` (a target's `target_plans(workflow, cluster)`) at `staleness` (the
    target's `plan_staleness(workflow)`) and return the best feasible one (module
    docstring), within `deadline` (everything included), or else for at most `time_limit_s`
    after the tables are built (one of the two is required). `tables`: the full tables of
    (workflow, cluster, calibration), when the caller has them."""
    if (deadline is None) == (time_limit_s is None):
        raise ValueError("give search_target_space one of time_limit_s and deadline")
    if tables is None:
        tables = full_tables(workflow, cluster, calibration=calibration,
                             profiles_dir=profiles_dir, deadline=deadline)
    if deadline is None:
        deadline = Deadline(time_limit_s)
    costs = PlanCosts(workflow, cluster, profiles_dir, calibration=calibration)
    evaluator = FastEvaluator(tables, staleness)
    index = candidate_index(tables)
    names = [table.name for table in tables.calls]
    ranked = _Ranked(REPRICE_TOP)
    batch: list[tuple[int, dict[str, Execution], list[int]]] = []
    counts = {"fast": 0, "simulated": 0, "invalid": 0}

    def flush() -> None:
        if not batch:
            return
        result = evaluator.evaluate(np.array([choice for _, _, choice in batch]))
        for (order, executions, _), seconds, fits in zip(batch, result.iteration_s,
                                                          result.feasible):
            ranked.offer(bool(fits), float(seconds), order, executions)
        counts["fast"] += len(batch)
        batch.clear()

    start = time.perf_counter()
    out_of_time = deadline.expired

    stopped_by = SPACE_EXHAUSTED
    deferred: list[tuple[int, dict[str, Execution]]] = []   # for the exact simulator
    for order, plan in enumerate(plans):
        if out_of_time():
            stopped_by = TIME_LIMIT
            break
        executions = {name: plan[name] for name in workflow.call_order}
        choice = [index[k].get(executions[name]) for k, name in enumerate(names)]
        if all(i is not None for i in choice):
            batch.append((order, executions, choice))
            if len(batch) == FAST_BATCH:
                flush()
        elif plan_problem(workflow, cluster, executions):
            counts["invalid"] += 1
        else:
            deferred.append((order, executions))
    flush()
    # in an order spread over the whole space: a target's plans come grouped (the first
    # options of the first roles first), so a time limit would otherwise price one corner
    for position in np.random.default_rng(SLOW_ORDER_SEED).permutation(len(deferred)):
        order, executions = deferred[position]
        if out_of_time():
            stopped_by = TIME_LIMIT
            break
        estimate = simulate(workflow, cluster, executions, costs=costs, staleness=staleness)
        ranked.offer(estimate.feasible, estimate.iteration_s, order, executions, estimate)
        counts["simulated"] += 1
    repriced = []
    for executions, estimate in ranked.best_first():
        if repriced and estimate is None and out_of_time():
            break                         # the fastest plan is always re-priced
        repriced.append(PricedPlan(executions, estimate or simulate(
            workflow, cluster, executions, costs=costs, staleness=staleness)))
    feasible = [p for p in repriced if p.estimate.feasible]
    best = min(feasible, key=lambda p: p.estimate.iteration_s) if feasible else None
    reason = None if best or not repriced else repriced[0].estimate.reason
    return TargetSearchResult(best=best, plans_priced=counts["fast"] + counts["simulated"],
                              fast_priced=counts["fast"], invalid_plans=counts["invalid"],
                              stopped_by=stopped_by, wall_s=time.perf_counter() - start,
                              reason=reason)
