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
from planner.domain.output_files import check_writable_path
from planner.domain.plan import save_plan
from planner.search.baselines import BASELINES
from planner.search.builder import full_tables
from planner.search.pipeline import exact_judge


def run(args: argparse.Namespace) -> int:
    check_writable_path(args.out, "--out")
    inputs = resolve_planning_inputs(args)
    workflow, cluster, calibration = inputs.workflow, inputs.cluster, inputs.calibration
    tables = full_tables(workflow, cluster, calibration=calibration, price_unfit=False)
    costs = PlanCosts(workflow, cluster, calibration=calibration)
    judge = exact_judge(tables, workflow, cluster, costs)
    choice = BASELINES[args.kind](tables, judge, cluster, workflow)
    if choice is None:
        print(f"baseline {args.kind}: no such plan fits {cluster.describe()}")
        return 1
    executions = tables.executions_of(choice)
    estimate = simulate(workflow, cluster, executions, costs=costs)
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
                    "models on all devices with reallocation, inference side by side).")
    parser.add_argument("--kind", required=True, choices=sorted(BASELINES),
                        help="which baseline")
    add_planning_options(parser)
    parser.add_argument("--out", metavar="FILE", help="write the plan to this file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)
