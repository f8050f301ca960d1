"""`plan baseline`: the plan users would build by hand today, priced by our cost model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import simulate
from planner.cli.estimate import estimate_as_mapping, estimate_as_text
from planner.cli.plan_output import priced_plan
from planner.cli.planning_inputs import add_planning_options, resolve_planning_inputs
from planner.domain.errors import InputError
from planner.domain.output_files import check_writable_path
from planner.domain.plan import save_plan
from planner.search.baselines import ASYNC_BASELINES, BASELINES
from planner.search.builder import full_tables
from planner.search.pipeline import exact_judge


def run(args: argparse.Namespace) -> int:
    check_writable_path(args.out, "--out")
    inputs = resolve_planning_inputs(args)
    workflow, cluster, calibration = inputs.workflow, inputs.cluster, inputs.calibration
    staleness = 0
    if args.kind in ASYNC_BASELINES:
        if workflow.max_staleness < 1:
            raise InputError(f"--kind {args.kind}: an asynchronous baseline needs a workflow "
                             f"with max_staleness >= 1 (it runs at that staleness); "
                             f"{args.workflow} has max_staleness 0")
        staleness = workflow.max_staleness
    tables = full_tables(workflow, cluster, calibration=calibration, price_unfit=False)
    costs = PlanCosts(workflow, cluster, calibration=calibration)
    judge = exact_judge(tables, workflow, cluster, costs, staleness)
    choice = {**BASELINES, **ASYNC_BASELINES}[args.kind](tables, judge, cluster, workflow)
    if choice is None:
        print(f"baseline {args.kind}: no such plan fits {cluster.describe()}")
        return 1
    executions = tables.executions_of(choice)
    estimate = simulate(workflow, cluster, executions, costs=costs, staleness=staleness)
    plan = priced_plan(workflow, cluster, executions, estimate, f"plan baseline {args.kind}")
    if args.out:
        save_plan(plan, Path(args.out))
    if args.json:
        data = estimate_as_mapping(plan, estimate)
        data["baseline"] = args.kind
        data["plan_path"] = args.out
        print(json.dumps(data, indent=2))
    else:
        print(f"baseline {args.kind}")
        print(estimate_as_text(plan, estimate))
        if args.out:
            print(f"wrote {args.out}")
    return 0 if estimate.feasible else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baseline", help="build and price a hand-made style plan",
        description="Build a plan the way users build them today and price it with the same "
                    "cost model as `plan search`: symmetric (one Megatron-style dXtYpZmW "
                    "layout for every call on all devices), colocated (verl: every model on "
                    "all devices, each call its own layout), separate (OpenRLHF: pools of "
                    "devices per model and for generation), realhf-heuristic (trained "
                    "models on all devices with reallocation, inference side by side); "
                    "for a workflow with max_staleness k >= 1 also async-75/25 and "
                    "async-50/50 (AReaL: generation on the first 75% or half of the "
                    "devices, everything else on the rest, at staleness k; 75/25 needs "
                    "several nodes).")
    parser.add_argument("--kind", required=True,
                        choices=sorted(BASELINES) + sorted(ASYNC_BASELINES),
                        help="which baseline")
    add_planning_options(parser)
    parser.add_argument("--out", metavar="FILE", help="write the plan to this file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)
