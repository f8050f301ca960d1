"""`plan search`: find the fastest plan for a workflow on a cluster and write it."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from planner.cli.arguments import integer_in_range, positive_seconds
from planner.cli.estimate import estimate_as_mapping, estimate_as_text
from planner.cli.main import INTERRUPTED_EXIT_CODE
from planner.cli.plan_output import priced_plan
from planner.cli.planning_inputs import add_planning_options, resolve_planning_inputs
from planner.cli.processor_check import warn_if_measured_elsewhere
from planner.cli.progress import ProgressLine
from planner.domain.hardware import GIB
from planner.domain.output_files import check_writable_path
from planner.domain.plan import save_plan
from planner.search.mcmc import MCMCSettings
from planner.search.pipeline import SearchOutcome, search

DEFAULT_OUT_SUFFIX = ".plan.yaml"   # .gitignore lists *.plan.yaml
MAX_SEED = 2**63 - 1   # the compiled chains take the seed as a signed 64-bit integer


def default_out_path(workflow_name: str, cluster_name: str) -> Path:
    """`<workflow>-<cluster>.plan.yaml` in the current directory (a file name's stem), not in
    the source tree: running the README's `plan search` in the checkout leaves it clean."""
    return Path(f"{Path(workflow_name).stem}-{Path(cluster_name).stem}{DEFAULT_OUT_SUFFIX}")


class StopChainsOnInterrupt:
    """Ctrl-C handling of `plan search`, installed once the MCMC chains run.

    Before the chains run (table building, numba warm-up, baselines) nothing is worth
    saving, so SIGINT keeps Python's handler: KeyboardInterrupt, which `plan` reports as
    `interrupted` with exit 130. The first progress report of the chains calls
    `chains_started`; from then on the first Ctrl-C only asks the chains to stop
    (`requested`), so the best plan so far is re-priced and written, and it puts Python's
    handler back so a second Ctrl-C aborts at once.
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


def run_search(workflow, cluster, settings: MCMCSettings, progress: ProgressLine | None,
               interrupt: StopChainsOnInterrupt, calibration) -> SearchOutcome:
    """`search` with the progress line and Ctrl-C handling of `plan search`."""
    def on_progress(evaluations: int, elapsed_s: float, best_s: float) -> None:
        interrupt.chains_started()
        if progress:
            progress.update(evaluations, elapsed_s, best_s)

    try:
        return search(workflow, cluster, settings, progress=on_progress,
                      should_stop=lambda: interrupt.requested, calibration=calibration)
    finally:
        interrupt.restore()
        if progress:
            progress.close()


def search_stats(outcome: SearchOutcome, evaluations_per_s: float) -> dict:
    mcmc = outcome.mcmc
    return {"evaluations": mcmc.evaluations, "evaluations_per_s": round(evaluations_per_s),
            "wall_s": round(mcmc.wall_s, 3), "steps": mcmc.steps,
            "stopped_by": mcmc.stopped_by,
            "space_size": f"{outcome.tables.space_size():.3g}",
            "baselines_iteration_s": {k: (None if v is None else
                                          round(v.estimate.iteration_s, 4))
                                      for k, v in outcome.baselines.items()}}


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out_path(args.workflow, args.cluster)
    check_writable_path(out, "--out")
    inputs = resolve_planning_inputs(args)
    workflow, cluster, calibration = inputs.workflow, inputs.cluster, inputs.calibration
    warn_if_measured_elsewhere("plan search", workflow, cluster, calibration, args.profile)
    settings = MCMCSettings(seed=args.seed, time_limit_s=args.time_limit)
    progress = None if args.json else ProgressLine("searching", args.time_limit)
    interrupt = StopChainsOnInterrupt()
    outcome = run_search(workflow, cluster, settings, progress, interrupt, calibration)
    if outcome.best is None:
        where = f" ({outcome.unplaceable_call} fits on no mesh even alone)" \
            if outcome.unplaceable_call else ""
        print(f"no plan fits {cluster.describe()} for this workflow{where}: the smallest "
              f"memory shortfall found is {outcome.smallest_overflow_bytes / GIB:.1f} GiB on "
              f"one device; use more or larger devices, or smaller batches", file=sys.stderr)
        return 1
    mcmc = outcome.mcmc
    rate = mcmc.evaluations / mcmc.wall_s if mcmc.wall_s > 0 else 0.0
    plan = priced_plan(workflow, cluster, outcome.best.executions, outcome.best.estimate,
                       "plan search", args.seed, search_stats(outcome, rate))
    save_plan(plan, out)
    best_s = outcome.best.estimate.iteration_s
    baselines = {k: (None if v is None or not v.estimate.feasible else v.estimate.iteration_s)
                 for k, v in outcome.baselines.items()}
    if args.json:
        data = estimate_as_mapping(plan, outcome.best.estimate)
        data["baselines"] = baselines
        data["search"] = {"evaluations": mcmc.evaluations, "evaluations_per_s": rate,
                          "wall_s": mcmc.wall_s, "seed": args.seed,
                          "stopped_by": mcmc.stopped_by, "table_build_s": outcome.build_s}
        data["plan_path"] = str(out)
        print(json.dumps(data, indent=2))
        return exit_code_after_writing(interrupt, out)
    print(estimate_as_text(plan, outcome.best.estimate))
    print(f"search: {mcmc.evaluations:,} plan evaluations in {mcmc.wall_s:.1f} s "
          f"({rate:,.0f}/s), stopped by {mcmc.stopped_by}, seed {args.seed}")
    print("compared with today's heuristics (same cost model):")
    for name, seconds in baselines.items():
        text = "does not fit" if seconds is None else \
            f"{seconds:9.2f} s  -> searched plan is {seconds / best_s:.2f}x faster"
        print(f"  {name:<18} {text}")
    print(f"wrote {out}")
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
                    "stops). Exit 1 when no plan fits the cluster, 130 when interrupted.")
    add_planning_options(parser)
    parser.add_argument("--time-limit", type=positive_seconds, default=60.0, metavar="S",
                        help="stop the search after S seconds (default 60; it usually stops "
                             "earlier, when the best plan stops improving)")
    parser.add_argument("--seed", type=integer_in_range(0, MAX_SEED), default=0,
                        help=f"random seed, 0 to {MAX_SEED:,} (default 0)")
    parser.add_argument("--out", metavar="FILE",
                        help="plan file to write (default <workflow>-<cluster>.plan.yaml "
                             "in the current directory)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)
