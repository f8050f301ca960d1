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

Asynchronous plans (workflow max_staleness k >= 1): steps 3 and 4 run once per staleness
s = 0..k, each on a fast evaluator pricing plans at s (FastEvaluator(tables, staleness=s)),
seeded with every baseline whose rollout models' generate calls share one placement (a plan
of staleness s >= 1 keeps one rollout copy, Plan.problems), and each chain's plans are
re-priced exactly at their s (simulate(..., staleness=s)); the best over every s wins (a
tie goes to the smaller s). The synchronous baselines are built and priced at s = 0, the
asynchronous ones (baselines.ASYNC_BASELINES) at s = k. The chains share the chains' time:
each run gets what is left of it divided by the runs left (an early plateau leaves more to
the next). With k = 0 this is exactly the search above (one run, s = 0). The lower bound
is one of synchronous plans (its relaxation keeps the parameter-version wrap of every
trained model); it does not bound a plan of staleness s >= 1.

With a `Deadline` (planner.search.deadline; `plan search --time-limit`), every step draws on
it: the tables get TABLE_SHARE of the budget (builder.full_tables stops pricing mesh shapes
when it ends, and the tables are then incomplete); the baselines BASELINE_SHARE of what
remains (build_baselines builds no further baseline, and confirms no further plan's memory,
once it ends and one baseline has a plan: a baseline cut so is None, named in `cut` and in
`unbuilt_baselines`); the fastest baseline is priced exactly before the chains run, which
measures what one exact pricing costs; the chains get what remains less
REPRICE_RESERVE_PLANS such pricings (and one per staleness s >= 1 searched, scaled by its
simulated iterations: reprice_reserve_plans) and the slowest of the baselines' exact memory checks
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
from costmodel.simulator import (
    Estimate,
    executions_memory_problem,
    simulate,
    simulated_iterations,
)
from planner.domain.augment import holds_parameters_alike
from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import Workflow
from planner.search.baselines import ASYNC_BASELINES, BaselineJudge, build_baselines
from planner.search.builder import full_tables, pruned_tables
from planner.search.deadline import Deadline
from planner.search.fast_evaluator import FastEvaluator
from planner.search.lower_bound import lower_bound
from planner.search.mcmc import (
    MCMCResult,
    MCMCSettings,
    merged_result,
    run_mcmc,
    warm_up,
)
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
    estimate: Estimate                            # its staleness is the plan's

    @property
    def staleness(self) -> int:
        return self.estimate.staleness


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
    # max_staleness >= 1: the chains' run at each staleness s (mcmc merges them), the best
    # exactly priced plan of each s that has one, and each baseline's staleness
    chains: dict[int, MCMCResult] = field(default_factory=dict)
    best_by_staleness: dict[int, PricedPlan] = field(default_factory=dict)
    baseline_staleness: dict[str, int] = field(default_factory=dict)


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


def evaluator_at(tables: SearchTables, staleness: int) -> FastEvaluator:
    """The fast evaluator pricing plans of `tables` at `staleness` (0: synchronous)."""
    if staleness == 0:
        return FastEvaluator(tables)
    return FastEvaluator(tables, staleness=staleness)


def one_rollout_placement(workflow: Workflow, executions: dict[str, Execution],
                          staleness: int) -> bool:
    """Whether the plan can run at `staleness`: at s >= 1 every rollout model's generate
    calls share one placement, its rollout copy's (planner.domain.plan Plan.problems)."""
    if staleness == 0:
        return True
    for role in workflow.rollout_models():
        generate = [executions[c] for c in workflow.calls_of_model(role)
                    if workflow.call_by_name[c].kind == "generate"]
        if any(not holds_parameters_alike(g, generate[0]) for g in generate[1:]):
            return False
    return True


def exact_judge(tables: SearchTables, workflow: Workflow, cluster: ClusterSpec,
                costs: PlanCosts, staleness: int = 0) -> BaselineJudge:
    """A judge that ranks plans at `staleness` and confirms memory with the exact
    simulator's rule (a plan that cannot run at that staleness does not fit)."""
    def fits(choice: np.ndarray) -> bool:
        executions = tables.executions_of(choice)
        return one_rollout_placement(workflow, executions, staleness) and \
            executions_memory_problem(workflow, cluster, executions, costs,
                                      staleness) is None
    return BaselineJudge(evaluator_at(tables, staleness), fits)


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
    bound = workflow.max_staleness
    judge = exact_judge(full, workflow, cluster, costs)
    async_judge = exact_judge(full, workflow, cluster, costs, bound) if bound else None
    baseline_choices = build_baselines(
        full, judge, cluster, workflow,
        deadline=None if deadline is None else deadline.part(BASELINE_SHARE),
        async_judge=async_judge)
    baseline_staleness = {name: bound if name in ASYNC_BASELINES else 0
                          for name in baseline_choices}
    slowest_check_s = max(judge.slowest_check_s,
                          async_judge.slowest_check_s if async_judge else 0.0)
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
                                 unbuilt_baselines=list(judge.cut),
                                 baseline_staleness=baseline_staleness)
    stalenesses = list(range(bound + 1))
    evaluators = {s: evaluator_at(tables, s) for s in stalenesses}
    evaluator = evaluators[0]
    seeds = [_remap(c, kept) for c in baseline_choices.values() if c is not None]
    moves = {s: warm_up(evaluators[s]) for s in stalenesses}
    build_s = time.perf_counter() - start

    pricing_s: list[float] = []    # how long each exact pricing took

    def price(choice: np.ndarray, over: SearchTables, staleness: int = 0) -> PricedPlan:
        began = time.perf_counter()
        executions = over.executions_of(choice)
        plan = PricedPlan(executions, simulate(workflow, cluster, executions, costs=costs,
                                               staleness=staleness))
        pricing_s.append(time.perf_counter() - began)
        return plan

    # Exact pricing, fastest first by the fast evaluator: before the chains, the fastest
    # baseline (a priced plan to fall back on, and what one exact pricing costs); after
    # them, the chains' best plans, then the other baselines and the chains' other plans
    # while time remains.
    named = [name for name, choice in baseline_choices.items() if choice is not None]
    if seeds:
        times, fitting = _fast_prices(evaluators, seeds,
                                      [baseline_staleness[name] for name in named])
        named = [named[i] for i in np.lexsort((times, ~fitting))]
    baselines: dict[str, PricedPlan | None] = {name: None for name in baseline_choices}

    def price_baseline(name: str) -> None:
        baselines[name] = price(baseline_choices[name], full, baseline_staleness[name])

    if named:
        price_baseline(named[0])
    chains_s = settings.time_limit_s
    if deadline is not None:
        # the first pricing may reuse the moves the baselines' checks priced; the slowest
        # check says what pricing a plan with new ones may add (seconds on 1,024 devices)
        reserve_s = (max(pricing_s, default=0.0) * reprice_reserve_plans(bound)
                     + slowest_check_s)
        chains_s = min(settings.time_limit_s, deadline.remaining_s() - reserve_s)
    announce(SEARCHING)
    results: dict[int, MCMCResult] = {}
    counted = _CountedProgress(progress)
    for s in stalenesses:
        # each run gets what is left of the chains' time over the runs left (module
        # docstring); with one run (max_staleness 0), all of it
        runs_left = len(stalenesses) - s
        spent_s = sum(r.wall_s for r in results.values())
        run_settings = replace(settings, time_limit_s=(chains_s - spent_s) / runs_left) \
            if deadline is not None or bound else settings
        if deadline is not None and bound:
            run_settings = replace(run_settings, time_limit_s=min(
                run_settings.time_limit_s,
                (deadline.remaining_s() - reserve_s) / runs_left))
        usable = [c for c in seeds if one_rollout_placement(
            workflow, tables.executions_of(c), s)]
        results[s] = run_mcmc(evaluators[s], usable, run_settings, counted.of_run(s),
                              should_stop, moves=moves[s])
        if should_stop is not None and should_stop():
            break
    result = results[0] if not bound else merged_result(
        [results[s] for s in stalenesses if s in results])
    announce(REPRICING)
    found = {s: [c for c in r.top_choices
                 if one_rollout_placement(workflow, tables.executions_of(c), s)]
             for s, r in results.items()}
    priced: list[PricedPlan] = [price(top[0], tables, s) for s, top in found.items() if top]
    unpriced: list[str] = []
    ranks = max((len(top) for top in found.values()), default=0)
    waiting = [(name, None, 0) for name in named[1:]] + [
        (None, found[s][r], s) for r in range(1, ranks) for s in found if r < len(found[s])]
    total_found = sum(len(top) for top in found.values())
    for i, (name, choice, s) in enumerate(waiting):
        # no pricing is started that would end past the deadline if it took as long as the
        # longest one so far
        if deadline is not None and deadline.remaining_s() <= max(pricing_s, default=0.0):
            unpriced = [n for n, _, _ in waiting[i:] if n is not None]
            cut[REPRICING] = (
                f"{len(priced)} of the {total_found} best plans found priced "
                f"exactly" + (f"; baselines not priced: {', '.join(unpriced)}"
                              if unpriced else ""))
            break
        if name is None:
            priced.append(price(choice, tables, s))
        else:
            price_baseline(name)
    priced += [p for p in baselines.values() if p is not None]
    feasible = [p for p in priced if p.estimate.feasible]
    # the fastest; at equal time the least stale
    best = min(feasible, key=lambda p: (p.estimate.iteration_s, p.staleness)) \
        if feasible else None
    best_by_staleness: dict[int, PricedPlan] = {}
    for plan in sorted(feasible, key=lambda p: p.estimate.iteration_s):
        best_by_staleness.setdefault(plan.staleness, plan)
    shortfall = 0.0 if best else smallest_shortfall_bytes(evaluator, seeds)
    bound_s = None
    if tables.complete and deadline is not None and deadline.expired():
        cut[BOUND] = "no time left for the lower bound; raise --time-limit for one"
    elif tables.complete:
        announce(BOUND)
        found_bound = lower_bound(tables)
        bound_s = None if found_bound is None else found_bound.iteration_s
    return SearchOutcome(best=best, baselines=baselines, mcmc=result, tables=tables,
                         build_s=build_s, smallest_overflow_bytes=shortfall,
                         lower_bound_s=bound_s, cut=cut, unpriced_baselines=unpriced,
                         unbuilt_baselines=list(judge.cut),
                         chains=results if bound else {},
                         best_by_staleness=dict(sorted(best_by_staleness.items()))
                         if bound else {},
                         baseline_staleness=baseline_staleness)


def reprice_reserve_plans(max_staleness: int) -> float:
    """Exact pricings kept back from the chains, in pricings of a synchronous plan:
    REPRICE_RESERVE_PLANS, plus each further staleness's best plan, whose pricing simulates
    simulated_iterations(s) iterations instead of simulated_iterations(0)."""
    return REPRICE_RESERVE_PLANS + sum(simulated_iterations(s) / simulated_iterations(0)
                                       for s in range(1, max_staleness + 1))


def _fast_prices(evaluators: dict[int, FastEvaluator], seeds: list[np.ndarray],
                 staleness: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(iteration seconds, fits) of each seed by the fast evaluator of its staleness."""
    times = np.zeros(len(seeds))
    fitting = np.zeros(len(seeds), dtype=bool)
    for s in sorted(set(staleness)):
        rows = [i for i, t in enumerate(staleness) if t == s]
        fast = evaluators[s].evaluate(np.array([seeds[i] for i in rows]))
        times[rows], fitting[rows] = fast.iteration_s, fast.feasible
    return times, fitting


class _CountedProgress:
    """The chains' progress over several runs as one: evaluations summed over the runs,
    the best the least so far (each run reports its own from zero)."""

    def __init__(self, progress: Callable[[int, float, float], None] | None):
        self.progress = progress
        self.done_evaluations = 0
        self.done_s = 0.0
        self.best_s = np.inf
        self._last = (0, 0.0)

    def of_run(self, staleness: int) -> Callable[[int, float, float], None] | None:
        if self.progress is None:
            return None
        self.done_evaluations += self._last[0]
        self.done_s += self._last[1]
        self._last = (0, 0.0)

        def report(evaluations: int, elapsed_s: float, best_s: float) -> None:
            self._last = (evaluations, elapsed_s)
            self.best_s = min(self.best_s, best_s)
            self.progress(self.done_evaluations + evaluations, self.done_s + elapsed_s,
                          self.best_s)
        return report
