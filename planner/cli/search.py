"""`plan search`: find the fastest plan for a workflow on a cluster and write it."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from planner.cli.estimate import estimate_as_mapping, estimate_as_text
from planner.cli.plan_output import priced_plan
from planner.cli.planning_inputs import add_planning_options, resolve_planning_inputs
from planner.domain.errors import InputError
from planner.domain.hardware import GIB
from planner.search.mcmc import MCMCSettings
from planner.domain.paths import PLANS_DIR
from planner.domain.plan import save_plan
from planner.cli.progress import ProgressLine
from planner.search.pipeline import SearchOutcome, search



def default_out_path(workflow_name: str, cluster_name: str) -> Path:
    return PLANS_DIR / f"{Path(workflow_name).stem}-{Path(cluster_name).stem}.yaml"


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
    if args.time_limit <= 0:
        raise InputError(f"--time-limit: got {args.time_limit}; give a positive number of "
                         f"seconds")
    inputs = resolve_planning_inputs(args)
    workflow, cluster, calibration = inputs.workflow, inputs.cluster, inputs.calibration
    out = Path(args.out) if args.out else default_out_path(args.workflow, args.cluster)
    settings = MCMCSettings(seed=args.seed, time_limit_s=args.time_limit)
    progress = None if args.json else ProgressLine("searching", args.time_limit)
    interrupted = {"flag": False}

    def on_interrupt(signum, frame):   # Ctrl-C: stop the chains, keep the best so far
        interrupted["flag"] = True

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        outcome = search(workflow, cluster, settings,
                         progress=progress.update if progress else None,
                         should_stop=lambda: interrupted["flag"], calibration=calibration)
    finally:
        signal.signal(signal.SIGINT, previous)
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
        return 0
    print(estimate_as_text(plan, outcome.best.estimate))
    print(f"search: {mcmc.evaluations:,} plan evaluations in {mcmc.wall_s:.1f} s "
          f"({rate:,.0f}/s), stopped by {mcmc.stopped_by}, seed {args.seed}")
    print("compared with today's heuristics (same cost model):")
    for name, seconds in baselines.items():
        text = "does not fit" if seconds is None else \
            f"{seconds:9.2f} s  -> searched plan is {seconds / best_s:.2f}x faster"
        print(f"  {name:<18} {text}")
    print(f"wrote {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="find the fastest plan for a workflow on a cluster",
        description="Search every call's device mesh and data/tensor/pipeline layout (with "
                    "parameter reallocation between them) for the plan with the shortest "
                    "estimated iteration time, and compare it with today's heuristic plans. "
                    "With no arguments: PPO with four LLaMA-7B models on one node of eight "
                    "H100. Ctrl-C stops the search and writes the best plan found so far. "
                    "Exit 1 when no plan fits the cluster.")
    add_planning_options(parser)
    parser.add_argument("--time-limit", type=float, default=60.0, metavar="S",
                        help="stop the search after S seconds (default 60; it usually stops "
                             "earlier, when the best plan stops improving)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", metavar="FILE",
                        help="plan file to write (default plans/<workflow>-<cluster>.yaml)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)
