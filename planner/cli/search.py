"""`plan search`: find the fastest plan for a workflow on a cluster and write it."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import Estimate, simulate
from planner.cli.arguments import integer_in_range, positive_seconds
from planner.cli.estimate import estimate_as_mapping, estimate_as_text
from planner.cli.main import INTERRUPTED_EXIT_CODE
from planner.cli.plan_output import priced_plan
from planner.cli.planning_inputs import (
    DEFAULT_CLUSTER,
    DEFAULT_WORKFLOW,
    PlanningInputs,
    add_planning_options,
    resolve_planning_inputs,
)
from planner.cli.processor_check import warn_if_measured_elsewhere
from planner.cli.progress import ProgressLine
from planner.domain.cluster import with_memory_headroom
from planner.domain.errors import InputError
from planner.domain.hardware import GIB
from planner.domain.output_files import check_writable_path
from planner.domain.plan import Plan, check_same_cluster, load_plan, save_plan
from planner.domain.workflow import Workflow
from planner.frameworks.target import TARGET_NAMES, target_module
from planner.search.baselines import ASYNC_GENERATION_SHARE, async_split
from planner.search.deadline import Deadline
from planner.search.mcmc import MCMCSettings, compiled_in_this_process
from planner.search.lower_bound import gap_fraction, gap_text
from planner.search.pipeline import PRICING, SEARCHING, PricedPlan, SearchOutcome, search
from planner.search.target_search import TIME_LIMIT, TargetSearchResult, search_target_space

DEFAULT_OUT_SUFFIX = ".plan.yaml"   # .gitignore lists *.plan.yaml
MAX_SEED = 2**63 - 1   # the compiled chains take the seed as a signed 64-bit integer


def default_out_path(workflow_name: str, cluster_name: str, target: str | None = None) -> Path:
    """`<workflow>-<cluster>[-<target>].plan.yaml` in the current directory (a file name's
    stem), not in the source tree: running the README's `plan search` in the checkout leaves
    it clean."""
    suffix = f"-{target}" if target else ""
    return Path(f"{Path(workflow_name).stem}-{Path(cluster_name).stem}{suffix}"
                f"{DEFAULT_OUT_SUFFIX}")


@dataclass(frozen=True)
class UserPlan:
    """A plan given with --baseline (e.g. written by `plan import`)."""

    path: Path
    plan: Plan

    @property
    def label(self) -> str:
        return f"your plan {self.path}"


def load_user_plans(paths: list[str] | None) -> list[UserPlan]:
    return [UserPlan(Path(p), load_plan(Path(p))) for p in paths or []]


def workflow_difference(theirs: Workflow, ours: Workflow) -> str:
    """The first field (two levels deep) where two workflows differ, both values shown."""
    a, b = theirs.model_dump(mode="json"), ours.model_dump(mode="json")
    for key, value in a.items():
        other = b.get(key)
        if value == other:
            continue
        if isinstance(value, dict) and isinstance(other, dict):
            for sub in sorted(set(value) | set(other)):
                if value.get(sub) != other.get(sub):
                    return (f"{key}.{sub} is {_short(value.get(sub))}, not "
                            f"{_short(other.get(sub))}")
        return f"{key} is {_short(value)}, not {_short(other)}"
    raise AssertionError("workflows differ in no field")


def _short(value) -> str:
    """A model role by its spec's name, anything else as JSON, cut to a readable length."""
    if isinstance(value, dict) and isinstance(value.get("spec"), dict):
        return repr(value["spec"].get("name"))
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def search_inputs(args: argparse.Namespace, user_plans: list[UserPlan]) -> PlanningInputs:
    """The planning inputs; with --baseline, --workflow and --cluster default to the first
    baseline plan's (its models, batch and lengths, its cluster), and every baseline plan
    must be for the searched workflow and cluster (one line naming the file otherwise)."""
    filled = argparse.Namespace(**{**vars(args),
                                   "workflow": args.workflow or DEFAULT_WORKFLOW,
                                   "cluster": args.cluster or DEFAULT_CLUSTER})
    inputs = resolve_planning_inputs(filled)
    if not user_plans:
        return inputs
    first = user_plans[0].plan
    workflow = inputs.workflow if args.workflow else first.workflow
    cluster = inputs.cluster
    if not args.cluster:
        cluster = first.cluster if args.memory_headroom is None else \
            with_memory_headroom(first.cluster, args.memory_headroom, "--memory-headroom")
    for user in user_plans:
        # the baseline is priced on the searched cluster, headroom included
        check_same_cluster(user.plan, cluster.model_copy(
            update={"memory_headroom_gib": user.plan.cluster.memory_headroom_gib}),
            str(user.path))
        if user.plan.workflow != workflow:
            raise InputError(f"{user.path}: workflow: the plan's "
                             f"{workflow_difference(user.plan.workflow, workflow)} as in the "
                             f"searched workflow; leave out --workflow to search the plan's "
                             f"own, and give --baseline plans of one workflow")
    return PlanningInputs(workflow, cluster, inputs.calibration)


class StopChainsOnInterrupt:
    """Ctrl-C handling of `plan search`, installed once the MCMC chains run.

    Before the chains run (table building, numba warm-up, baselines) nothing is worth
    saving, so SIGINT keeps Python's handler: KeyboardInterrupt, which `plan` reports as
    `interrupted` with exit 130. The start of the searching phase (and the first progress
    report of the chains) calls `chains_started`; from then on the first Ctrl-C only asks
    the chains to stop (`requested`), so the best plan so far is re-priced and written, and
    it puts Python's handler back so a second Ctrl-C aborts at once.
    """

    def __init__(self):
        self.requested = False
        self._previous_handler = None

    def chains_started(self) -> None:
        if self._previous_handler is None:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_first_interrupt)

    def _on_first_interrupt(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous_handler)

    def restore(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)


# With --target, the share of the time limit the unrestricted search gets; pricing the
# target's space gets what it leaves.
UNRESTRICTED_SHARE_WITH_TARGET = 0.5


def run_search(workflow, cluster, settings: MCMCSettings, progress: ProgressLine | None,
               interrupt: StopChainsOnInterrupt, calibration, deadline: Deadline,
               clock: Callable[[], float]) -> SearchOutcome:
    """`search` within `deadline`, with the progress line (each phase named, `clock()` the
    seconds since the command started) and Ctrl-C handling of `plan search`."""
    def on_progress(evaluations: int, elapsed_s: float, best_s: float) -> None:
        interrupt.chains_started()
        if progress:
            progress.update(evaluations, clock(), best_s)

    def on_phase(name: str) -> None:
        if name == SEARCHING:
            interrupt.chains_started()    # before the line that says so is drawn
        if progress:
            progress.phase(name, clock())

    try:
        return search(workflow, cluster, settings, progress=on_progress,
                      should_stop=lambda: interrupt.requested, calibration=calibration,
                      deadline=deadline, phase=on_phase)
    finally:
        interrupt.restore()


def search_stats(outcome: SearchOutcome, evaluations_per_s: float) -> dict:
    mcmc = outcome.mcmc
    stats = {"evaluations": mcmc.evaluations, "evaluations_per_s": round(evaluations_per_s),
            "wall_s": round(mcmc.wall_s, 3), "steps": mcmc.steps,
            "stopped_by": mcmc.stopped_by,
            "space_size": f"{outcome.tables.space_size():.3g}",
            "baselines_iteration_s": {k: (None if v is None else
                                          round(v.estimate.iteration_s, 4))
                                      for k, v in outcome.baselines.items()},
            # plan show reads it beside the saved estimate (planner.search.lower_bound)
            "lower_bound_s": (None if outcome.lower_bound_s is None
                              else round(outcome.lower_bound_s, 4)),
            # phase -> what --time-limit left out of it (planner.search.pipeline)
            "time_limit_cut": dict(outcome.cut)}
    if outcome.chains:   # max_staleness >= 1 (a synchronous search's stats are as before)
        stats.update(staleness_stats(outcome))
    return stats


def staleness_stats(outcome: SearchOutcome) -> dict:
    """What a search over staleness adds to the stats: the best exact iteration seconds at
    each staleness searched (None where no plan of it fits) and each baseline's staleness."""
    return {"iteration_s_by_staleness": {
                s: (round(outcome.best_by_staleness[s].estimate.iteration_s, 4)
                    if s in outcome.best_by_staleness else None) for s in outcome.chains},
            "baselines_staleness": dict(outcome.baseline_staleness)}


def decode_batching_of(plan: Plan) -> dict[str, str]:
    """Each generate call's decode batching mode (static or continuous)."""
    return {name: plan.executions[name].decode_batching for name in plan.workflow.call_order
            if plan.workflow.call_by_name[name].kind == "generate"}


def staleness_search_lines(outcome: SearchOutcome, plan: Plan) -> list[str]:
    """What `plan search` says of a search over staleness (max_staleness >= 1): the
    staleness chosen and the best plan of each, and the decode batching of every generate
    call; nothing for a synchronous search."""
    if not outcome.chains:
        return []
    per = ", ".join(f"s={s}: " + (f"{outcome.best_by_staleness[s].estimate.iteration_s:.2f} s"
                                   if s in outcome.best_by_staleness else "none fits")
                    for s in outcome.chains)
    modes = ", ".join(f"{name} {mode}" for name, mode in decode_batching_of(plan).items())
    return [(f"search: staleness {plan.staleness} chosen (max_staleness "
             f"{plan.workflow.max_staleness}); best plan per staleness: {per}"),
            f"search: decode batching: {modes}"]


def lower_bound_lines(outcome: SearchOutcome, best: PricedPlan, which: str) -> list[str]:
    """The best plan's gap to the space's lower bound; for a plan of staleness >= 1, that
    the bound (one of synchronous plans, planner.search.lower_bound) does not apply."""
    if not outcome.lower_bound_s:
        return []
    if best.staleness:
        return [(f"search: lower bound {outcome.lower_bound_s:.2f} s is of synchronous "
                 f"plans (staleness 0); it does not bound {which}, of staleness "
                 f"{best.staleness}")]
    return [(f"search: {which} is {gap_text(best.estimate.iteration_s, outcome.lower_bound_s)}"
             f" (no plan of the searched space takes less)")]


def bound_gap(outcome: SearchOutcome) -> float | None:
    """The searched best plan's gap to the space's lower bound (iteration / bound - 1);
    None without a bound or when the plan is asynchronous (the bound is synchronous)."""
    if not outcome.lower_bound_s or outcome.best.staleness:
        return None
    return gap_fraction(outcome.best.estimate.iteration_s, outcome.lower_bound_s)


def price_user_plans(user_plans: list[UserPlan], inputs: PlanningInputs) -> dict[str, Estimate]:
    """Each --baseline plan priced by the search's cost model, by label."""
    costs = PlanCosts(inputs.workflow, inputs.cluster, calibration=inputs.calibration)
    return {user.label: simulate(inputs.workflow, inputs.cluster, user.plan.executions,
                                 costs=costs, staleness=user.plan.staleness)
            for user in user_plans}


def run_target_search(args: argparse.Namespace, inputs: PlanningInputs,
                      deadline: Deadline) -> TargetSearchResult:
    """The best plan of the target's space (planner.search.target_search), within
    `deadline` (its tables included)."""
    module = target_module(args.target)
    plans = module.target_plans(inputs.workflow, inputs.cluster)
    return search_target_space(inputs.workflow, inputs.cluster, plans,
                               calibration=inputs.calibration, deadline=deadline,
                               staleness=module.plan_staleness(inputs.workflow))


def no_target_plan_message(target: str, result: TargetSearchResult, cluster) -> str:
    if result.plans_priced == 0 and result.stopped_by == TIME_LIMIT:
        return (f"{target}: the time limit left no time to price a plan of its space; raise "
                f"--time-limit")
    if result.plans_priced == 0:
        return (f"{target} can express no plan of this workflow that its models can run on "
                f"{cluster.describe()} ({result.invalid_plans} plan(s) of its space have a "
                f"layout the models cannot take)")
    return (f"{target} can run no plan of this workflow that fits {cluster.describe()}: of "
            f"{result.plans_priced:,} plans priced ({result.stopped_by}), the fastest does "
            f"not fit: {result.reason}")


def target_summary(target: str, result: TargetSearchResult, best: PricedPlan,
                   unrestricted_s: float) -> dict:
    module = target_module(target)
    seconds = best.estimate.iteration_s
    return {"name": target, "version": module.TARGET_VERSION, "iteration_s": seconds,
            "best_searched_iteration_s": unrestricted_s,
            "slowdown_vs_best": seconds / unrestricted_s, "plans_priced": result.plans_priced,
            "fast_priced": result.fast_priced, "invalid_plans": result.invalid_plans,
            "stopped_by": result.stopped_by, "wall_s": result.wall_s}


def target_lines(summary: dict) -> list[str]:
    target, ratio = summary["name"], summary["slowdown_vs_best"]
    compared = f"{ratio:.2f}x slower than" if ratio >= 1 else f"{1 / ratio:.2f}x faster than"
    skipped = (f"; {summary['invalid_plans']:,} skipped, a layout the models cannot take"
               if summary["invalid_plans"] else "")
    priced = (f"{summary['version']}: {summary['plans_priced']:,} plans of its space priced "
              f"in {summary['wall_s']:.1f} s ({summary['stopped_by']}{skipped})")
    ratio_line = (f"{target} can run a plan {compared} the best plan "
                  f"({summary['best_searched_iteration_s']:.2f} s per iteration, any layout)")
    return [priced, ratio_line]


def comparison_text(seconds: float | None, best_s: float, what: str) -> str:
    if seconds is None:
        return "does not fit"
    if seconds >= best_s:
        return f"{seconds:9.2f} s  -> {what} is {seconds / best_s:.2f}x faster"
    return f"{seconds:9.2f} s  -> {best_s / seconds:.2f}x faster than the {what}"


def run(args: argparse.Namespace) -> int:
    # --time-limit bounds the whole command, from its start (planner/cli/main.py)
    deadline = Deadline(args.time_limit, started_s=args.command_started_s)
    if args.out:   # before any work; the default name needs the inputs' names
        check_writable_path(Path(args.out), "--out")
    user_plans = load_user_plans(args.baseline)
    inputs = search_inputs(args, user_plans)
    workflow, cluster, calibration = inputs.workflow, inputs.cluster, inputs.calibration
    out = Path(args.out) if args.out else default_out_path(
        args.workflow or (workflow.algorithm if user_plans else DEFAULT_WORKFLOW),
        args.cluster or cluster.name, args.target)
    check_writable_path(out, "--out")
    warn_if_measured_elsewhere("plan search", workflow, cluster, calibration, args.profile)
    if args.target:
        problems = target_module(args.target).workflow_problems(workflow)
        if problems:   # before any pricing: no plan of this workflow is in the target's space
            print(f"plan search: {args.target} cannot run this workflow: "
                  + "; ".join(problems), file=sys.stderr)
            return 1
    settings = MCMCSettings(seed=args.seed, time_limit_s=args.time_limit)
    progress = None if args.json else ProgressLine(PRICING, args.time_limit)
    interrupt = StopChainsOnInterrupt()
    try:
        outcome = run_search(workflow, cluster, settings, progress, interrupt, calibration,
                             deadline.part(UNRESTRICTED_SHARE_WITH_TARGET) if args.target
                             else deadline, deadline.elapsed_s)
        result = None
        if args.target and outcome.best is not None:
            if progress:
                progress.phase(f"target {args.target}", deadline.elapsed_s())
            result = run_target_search(args, inputs, deadline)
    finally:
        if progress:
            progress.close()
    if outcome.best is None:
        where = f" ({outcome.unplaceable_call} fits on no mesh even alone)" \
            if outcome.unplaceable_call else ""
        print(f"no plan fits {cluster.describe()} for this workflow{where}: the smallest "
              f"memory shortfall found is {outcome.smallest_overflow_bytes / GIB:.1f} GiB on "
              f"one device; use more or larger devices, or smaller batches", file=sys.stderr)
        return 1
    mcmc = outcome.mcmc
    rate = mcmc.evaluations / mcmc.wall_s if mcmc.wall_s > 0 else 0.0
    stats = search_stats(outcome, rate)
    chosen, summary, created_by, what = outcome.best, None, "plan search", "searched plan"
    if result is not None:
        if result.best is None:
            print(no_target_plan_message(args.target, result, cluster), file=sys.stderr)
            return 1
        chosen = result.best
        summary = target_summary(args.target, result, chosen, outcome.best.estimate.iteration_s)
        created_by, what = f"plan search --target {args.target}", f"searched {args.target} plan"
        stats["target"] = {k: summary[k] for k in ("name", "version", "plans_priced",
                                                   "stopped_by")}
    plan = priced_plan(workflow, cluster, chosen.executions, chosen.estimate, created_by,
                       args.seed, stats)
    save_plan(plan, out)
    best_s = chosen.estimate.iteration_s
    baselines = {k: (None if v is None or not v.estimate.feasible else v.estimate.iteration_s)
                 for k, v in outcome.baselines.items()}
    user_estimates = price_user_plans(user_plans, inputs)
    baselines.update({label: est.iteration_s if est.feasible else None
                      for label, est in user_estimates.items()})
    if args.json:
        data = estimate_as_mapping(plan, chosen.estimate)
        data["baselines"] = baselines
        data["baseline_plans"] = [{"path": str(user.path), "iteration_s":
                                   user_estimates[user.label].iteration_s,
                                   "feasible": user_estimates[user.label].feasible,
                                   "reason": user_estimates[user.label].reason}
                                  for user in user_plans]
        data["search"] = {"evaluations": mcmc.evaluations, "evaluations_per_s": rate,
                          "wall_s": mcmc.wall_s, "seed": args.seed,
                          "stopped_by": mcmc.stopped_by, "table_build_s": outcome.build_s,
                          "lower_bound_s": outcome.lower_bound_s,
                          "lower_bound_gap": bound_gap(outcome),
                          "time_limit_cut": dict(outcome.cut)}
        if outcome.chains:
            data["search"].update(staleness_stats(outcome))
            data["search"]["staleness"] = plan.staleness
            data["decode_batching"] = decode_batching_of(plan)
        if summary:
            data["target"] = summary
        data["plan_path"] = str(out)
        print(json.dumps(data, indent=2))
        return exit_code_after_writing(interrupt, out)
    print(estimate_as_text(plan, chosen.estimate))
    if summary:
        print("\n".join(target_lines(summary)))
    print(f"search: {mcmc.evaluations:,} plan evaluations in {mcmc.wall_s:.1f} s "
          f"({rate:,.0f}/s), stopped by {mcmc.stopped_by}, seed {args.seed}")
    for phase, what_was_cut in outcome.cut.items():
        print(f"search: {phase}: {what_was_cut}")
    if (outcome.cut or mcmc.stopped_by == "time_limit") and compiled_in_this_process():
        print("search: this run compiled the search kernels (numba had none cached for this "
              "machine), which took part of --time-limit; the next run loads them and "
              "searches for all of it")
    for line in staleness_search_lines(outcome, plan) + lower_bound_lines(
            outcome, outcome.best,
            "the searched plan" if not summary else "the best plan of the full space"):
        print(line)
    print("compared with today's heuristics (same cost model):")
    width = max([18] + [len(k) for k in baselines])
    for name, seconds in baselines.items():
        reason = user_estimates[name].reason if name in user_estimates else None
        text = comparison_text(seconds, best_s, what)
        if name in outcome.unpriced_baselines:
            text = "not priced: no time left (--time-limit)"
        if name in outcome.unbuilt_baselines:
            text = "not built: no time left (--time-limit)"
        if name in ASYNC_GENERATION_SHARE and \
                async_split(cluster, ASYNC_GENERATION_SHARE[name]) is None:
            text = "not built: the split makes no two allowed meshes (one node: halves only)"
        if outcome.baseline_staleness.get(name):
            text += f"  (staleness {outcome.baseline_staleness[name]})"
        print(f"  {name:<{width}} {text}" + (f": {reason}" if seconds is None and reason
                                              else ""))
    print(f"wrote {out}")
    if args.target:
        print(f"write {args.target}'s config for it: plan export {out} --to {args.target}")
    return exit_code_after_writing(interrupt, out)


def exit_code_after_writing(interrupt: StopChainsOnInterrupt, out: Path) -> int:
    """Exit code once the plan is written: 130 after a Ctrl-C (so a script that runs
    `plan search && plan run` stops there too), else 0."""
    if not interrupt.requested:
        return 0
    print(f"plan search: interrupted; wrote the best plan found so far to {out}",
          file=sys.stderr)
    return INTERRUPTED_EXIT_CODE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="find the fastest plan for a workflow on a cluster",
        description="Search every call's device mesh and data/tensor/pipeline layout (with "
                    "parameter reallocation between them) for the plan with the shortest "
                    "estimated iteration time, and compare it with today's heuristic plans. "
                    "With no arguments: PPO with four LLaMA-7B models on one node of eight "
                    "H100. Ctrl-C stops the search and writes the best plan found so far "
                    "(while it is still pricing candidates, before the chains run, it just "
                    "stops). With --target, the framework's own plans are priced next and "
                    "the best of them is written (Ctrl-C then stops without writing). "
                    "Exit 1 when no plan fits the cluster (or none of the target's), 130 "
                    "when interrupted. JSON keys: those of `plan estimate --json`, plus "
                    "baselines (name or 'your plan FILE': seconds, null when it does not "
                    "fit), baseline_plans (path, iteration_s, feasible, reason), search, "
                    "target (with --target: name, version, iteration_s, "
                    "best_searched_iteration_s, slowdown_vs_best, plans_priced, stopped_by) "
                    "and plan_path. A workflow with max_staleness k >= 1 is searched at "
                    "every staleness 0..k (generation on weights up to s iterations old, "
                    "with continuous decode batching offered), the fastest plan written "
                    "with its staleness; the text names the staleness chosen, the best plan "
                    "of each and every generate call's decode batching, and the JSON adds "
                    "search.staleness, search.iteration_s_by_staleness, "
                    "search.baselines_staleness and decode_batching; the async-75/25 and "
                    "async-50/50 baselines (AReaL-style splits, staleness k) join the "
                    "others.")
    add_planning_options(parser)
    parser.add_argument("--time-limit", type=positive_seconds, default=60.0, metavar="S",
                        help="return within about S seconds (default 60), everything "
                             "included: pricing candidates, baselines, the search, exact "
                             "re-pricing, the lower bound and --target's pricing (half each "
                             "with --target); the output names what the limit cut. The "
                             "search usually stops earlier, when the best plan stops "
                             "improving")
    parser.add_argument("--seed", type=integer_in_range(0, MAX_SEED), default=0,
                        help=f"random seed, 0 to {MAX_SEED:,} (default 0)")
    parser.add_argument("--out", metavar="FILE",
                        help="plan file to write (default <workflow>-<cluster>.plan.yaml "
                             "in the current directory)")
    parser.add_argument("--target", choices=TARGET_NAMES,
                        help="search only the plans this framework can run (its placements "
                             "and layouts; planner/frameworks/<target>.py says which), write "
                             "the best of them, and say how much slower it is than the best "
                             "plan of the unrestricted search, which runs first; write the "
                             "framework's config with `plan export PLAN --to TARGET`")
    parser.add_argument("--baseline", action="append", metavar="PLAN.yaml",
                        help="a plan of yours (e.g. from `plan import`) to compare with, "
                             "priced by the same cost model; repeatable. It must be for the "
                             "searched workflow and cluster: without --workflow / --cluster "
                             "the search takes the first baseline plan's")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run, workflow=None, cluster=None)
