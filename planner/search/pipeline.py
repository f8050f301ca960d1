"""`search`: from a workflow and a cluster to the best plan found, with its baselines.

1. Price every candidate execution of every call (planner.search.builder).
2. Build the baselines (planner.search.baselines) on the full tables, then prune the tables
   (keeping the baselines' candidates) so the search space is smaller but holds the optimum.
3. Run the MCMC search (planner.search.mcmc) seeded with the baselines, on the fast evaluator.
4. Re-price the best distinct plans found and the baselines with the exact simulator
   (costmodel.simulator) and keep the best feasible one. The result is therefore never worse
   than a baseline under the exact cost model (than a priced one, under a deadline).
5. A lower bound on the iteration time of every plan of the space (planner.search.
   lower_bound), printed beside the plan as its gap.

With a `Deadline` (planner.search.deadline; `plan search --time-limit`), every step draws on
it: the tables get TABLE_SHARE of the budget (builder.full_tables stops pricing mesh shapes
when it ends, and the tables are then incomplete); the baselines BASELINE_SHARE of what
remains (build_baselines builds no further baseline, and confirms no further plan's memory,
once it ends and one baseline has a plan: a baseline cut so is None, named in `cut` and in
`unbuilt_baselines`); the fastest baseline is priced exactly before the chains run, which
measures what one exact pricing costs; the chains get what remains less
REPRICE_RESERVE_PLANS such pricings and the slowest of the baselines' exact memory checks
(what pricing a plan with reallocations not priced yet may add); then the chains' best plan
is priced exactly (always), and the other baselines and best plans while the time left
exceeds the longest exact pricing so far (a baseline left unpriced is None in `baselines`, listed in `unpriced_baselines` and named in
`cut`); the bound is computed only on complete tables (it needs every candidate) and while
time remains.
`SearchOutcome.cut` names each step the time limit cut and says what was left out. Without a
deadline the tables are complete and the chains stop at `MCMCSettings.time_limit_s`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
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
from planner.search.deadline import Deadline
from planner.search.fast_evaluator import FastEvaluator
from planner.search.lower_bound import lower_bound
from planner.search.mcmc import MCMCResult, MCMCSettings, run_mcmc, warm_up
from planner.search.tables import SearchTables

# The phases of `search`, as the progress line names them.
PRICING, BASELINES, SEARCHING, REPRICING, BOUND = (
    "pricing candidates", "baselines", "searching", "re-pricing", "lower bound")
TABLE_SHARE = 0.5           # of the time limit, for pricing candidates (the first phase)
# Exact pricings kept back from the chains: the best plan's, and one more as a margin, since
# a plan's first pricing prices its calls' layouts, which the baselines may not have used.
REPRICE_RESERVE_PLANS = 2
BASELINE_SHARE = 0.3        # of what the tables leave, for the baselines (the second phase)


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
    cut: dict[str, str] = field(default_factory=dict)   # phase -> what the time limit left out
    unpriced_baselines: list[str] = field(default_factory=list)   # None in baselines: no time
    # None in baselines: the time limit stopped building them (baselines.build_baselines)
    unbuilt_baselines: list[str] = field(default_factory=list)


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
           profiles_dir: Path = PROFILES_DIR, deadline: Deadline | None = None,
           phase: Callable[[str], None] | None = None) -> SearchOutcome:
    """Search (module docstring); `calibration` (costmodel.calibration) prices everything
    with fitted factors, as `plan estimate --profile` does; `profiles_dir` holds the profile
    tables (default profiles/); `deadline` bounds the whole search (module docstring);
    `phase(name)` is called as each phase starts (PRICING, BASELINES, ...)."""
    announce = phase or (lambda name: None)
    start = time.perf_counter()
    announce(PRICING)
    full = full_tables(workflow, cluster, calibration=calibration, profiles_dir=profiles_dir,
                       price_unfit=False,
                       deadline=None if deadline is None else deadline.part(TABLE_SHARE))
    cut = {} if full.complete else {
        PRICING: f"tables cut by the time limit: {full.shapes_priced} of {full.shapes_total} "
                 f"mesh shapes priced; raise --time-limit for a bound"}
    announce(BASELINES)
    costs = PlanCosts(workflow, cluster, profiles_dir, calibration=calibration)
    judge = exact_judge(full, workflow, cluster, costs)
    baseline_choices = build_baselines(
        full, judge, cluster, workflow,
        deadline=None if deadline is None else deadline.part(BASELINE_SHARE))
    if judge.cut:
        cut[BASELINES] = (f"baselines not built by the time limit: {', '.join(judge.cut)} "
                          f"(their plans were not confirmed to fit in time)")
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
                                 unplaceable_call=table.name, cut=cut,
                                 unbuilt_baselines=list(judge.cut))
    evaluator = FastEvaluator(tables)
    seeds = [_remap(c, kept) for c in baseline_choices.values() if c is not None]
    moves = warm_up(evaluator)
    build_s = time.perf_counter() - start

    pricing_s: list[float] = []    # how long each exact pricing took

    def price(choice: np.ndarray, over: SearchTables) -> PricedPlan:
        began = time.perf_counter()
        executions = over.executions_of(choice)
        plan = PricedPlan(executions, simulate(workflow, cluster, executions, costs=costs))
        pricing_s.append(time.perf_counter() - began)
        return plan

    # Exact pricing, fastest first by the fast evaluator: before the chains, the fastest
    # baseline (a priced plan to fall back on, and what one exact pricing costs); after
    # them, the chains' best plan, then the other baselines and the chains' other plans
    # while time remains.
    named = [name for name, choice in baseline_choices.items() if choice is not None]
    if seeds:
        fast = evaluator.evaluate(np.array(seeds))
        named = [named[i] for i in np.lexsort((fast.iteration_s, ~fast.feasible))]
    baselines: dict[str, PricedPlan | None] = {name: None for name in baseline_choices}

    def price_baseline(name: str) -> None:
        baselines[name] = price(baseline_choices[name], full)

    if named:
        price_baseline(named[0])
    if deadline is not None:
        # the first pricing may reuse the moves the baselines' checks priced; the slowest
        # check says what pricing a plan with new ones may add (seconds on 1,024 devices)
        reserve_s = (REPRICE_RESERVE_PLANS * max(pricing_s, default=0.0)
                     + judge.slowest_check_s)
        settings = replace(settings, time_limit_s=min(settings.time_limit_s,
                                                      deadline.remaining_s() - reserve_s))
    announce(SEARCHING)
    result = run_mcmc(evaluator, seeds, settings, progress, should_stop, moves=moves)
    announce(REPRICING)
    priced = [price(c, tables) for c in result.top_choices[:1]]
    unpriced: list[str] = []
    waiting = [(name, None) for name in named[1:]] + [(None, c)
                                                       for c in result.top_choices[1:]]
    for i, (name, choice) in enumerate(waiting):
        # no pricing is started that would end past the deadline if it took as long as the
        # longest one so far
        if deadline is not None and deadline.remaining_s() <= max(pricing_s, default=0.0):
            unpriced = [n for n, _ in waiting[i:] if n is not None]
            cut[REPRICING] = (
                f"{len(priced)} of the {len(result.top_choices)} best plans found priced "
                f"exactly" + (f"; baselines not priced: {', '.join(unpriced)}"
                              if unpriced else ""))
            break
        if name is None:
            priced.append(price(choice, tables))
        else:
            price_baseline(name)
    priced += [p for p in baselines.values() if p is not None]
    feasible = [p for p in priced if p.estimate.feasible]
    best = min(feasible, key=lambda p: p.estimate.iteration_s) if feasible else None
    shortfall = 0.0 if best else smallest_shortfall_bytes(evaluator, seeds)
    bound_s = None
    if tables.complete and deadline is not None and deadline.expired():
        cut[BOUND] = "no time left for the lower bound; raise --time-limit for one"
    elif tables.complete:
        announce(BOUND)
        bound = lower_bound(tables)
        bound_s = None if bound is None else bound.iteration_s
    return SearchOutcome(best=best, baselines=baselines, mcmc=result, tables=tables,
                         build_s=build_s, smallest_overflow_bytes=shortfall,
                         lower_bound_s=bound_s, cut=cut, unpriced_baselines=unpriced,
                         unbuilt_baselines=list(judge.cut))
