"""`plan check`: validate a plan; exit 0 valid, 1 infeasible, 2 bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

from planner.cli.estimate import memory_problem
from planner.domain.cluster import resolve_cluster
from planner.domain.plan import check_same_cluster, load_plan


def run(args: argparse.Namespace) -> int:
    plan = load_plan(Path(args.plan))
    if args.cluster:
        check_same_cluster(plan, resolve_cluster(args.cluster), args.plan)
    problem = memory_problem(plan)
    if problem:
        print(f"{args.plan}: infeasible: {problem}")
        return 1
    print(f"{args.plan}: valid ({len(plan.executions)} calls on "
          f"{plan.cluster.describe()})")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="validate a plan",
        description="Validate a plan file: schema, workflow, cluster, every call's mesh and "
                    "layout, and that every device's memory holds what the plan puts on it. Exit 0 when valid, 1 when infeasible (with the reason), 2 on bad "
                    "input.")
    parser.add_argument("plan", metavar="PLAN.yaml", help="plan file")
    parser.add_argument("--cluster", metavar="NAME|FILE",
                        help="also refuse the plan unless it was made for this cluster")
    parser.set_defaults(handler=run)
