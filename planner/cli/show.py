"""`plan show`: print a plan as a table (or JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from planner.augment import reallocations, transfers
from planner.mesh import mesh_text
from planner.plan import Plan, load_plan, plan_to_mapping


def plan_as_text(plan: Plan) -> str:
    """A readable table of the plan: calls, meshes, layouts, reallocations, transfers."""
    cluster = plan.cluster
    lines = [f"workflow {plan.workflow.algorithm} on {cluster.describe()}",
             f"{'call':<18} {'model':<8} {'kind':<10} {'mesh':<10} {'devices':>7}  layout"]
    for name in plan.workflow.call_order:
        call = plan.workflow.call_by_name[name]
        ex = plan.executions[name]
        lines.append(f"{name:<18} {call.model:<8} {call.kind:<10} "
                     f"{mesh_text(ex.devices, cluster):<10} {ex.num_devices:>7}  "
                     f"{ex.layout_text()}")
    moves = reallocations(plan.workflow, plan.executions)
    lines.append(f"reallocations: {len(moves)}")
    for move in moves:
        suffix = " (next iteration)" if move.wraps else ""
        lines.append(f"  {move.model}: {move.src_call} -> {move.dst_call}{suffix}")
    data_moves = transfers(plan.workflow, plan.executions)
    lines.append(f"data transfers between meshes: {len(data_moves)}")
    for move in data_moves:
        lines.append(f"  {move.src_call} -> {move.dst_call}: {', '.join(move.keys)}")
    if plan.estimate:
        lines.append(f"estimate: {json.dumps(plan.estimate)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    plan = load_plan(Path(args.plan))
    if args.json:
        print(json.dumps(plan_to_mapping(plan), indent=2))
    else:
        print(plan_as_text(plan))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show", help="print a plan as a table",
        description="Print a plan: each call's mesh (node:slots) and layout "
                    "(dXtYpZmW = data x tensor x pipeline degrees, micro-batches), the "
                    "reallocations and data transfers it implies, and its estimate if saved.")
    parser.add_argument("plan", metavar="PLAN.yaml", help="plan file")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=run)
