"""`plan graph`: show a workflow's dataflow graph as JSON, text or a picture."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from planner.domain.errors import InputError
from planner.domain.workflow import Workflow
from planner.domain.workflow_file import resolve_workflow


def graph_as_data(workflow: Workflow) -> dict:
    """`nodes` (name, model, kind) in execution order and `edges` (src, dst, keys)."""
    calls = workflow.call_by_name
    return {
        "algorithm": workflow.algorithm,
        "nodes": [{"name": n, "model": calls[n].model, "kind": calls[n].kind}
                  for n in workflow.call_order],
        "edges": [{"src": s, "dst": d, "keys": list(data["keys"])}
                  for s, d, data in workflow.graph.edges(data=True)],
    }


def graph_as_text(workflow: Workflow) -> str:
    data = graph_as_data(workflow)
    lines = [f"workflow {data['algorithm']}: {len(data['nodes'])} calls"]
    for node in data["nodes"]:
        lines.append(f"  {node['name']:<18} {node['model']:<8} {node['kind']}")
    lines.append("edges:")
    for edge in data["edges"]:
        lines.append(f"  {edge['src']} -> {edge['dst']}: {', '.join(edge['keys'])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    out = _picture_path(args.out) if args.out else None
    workflow = resolve_workflow(args.workflow)
    if out:
        from planner.figures.dataflow import draw_workflow
        try:
            draw_workflow(workflow, out)
        except OSError as err:
            raise InputError(f"--out: {out}: cannot write ({err.strerror or err})") from None
        print(f"wrote {out}")
    if args.json:
        print(json.dumps(graph_as_data(workflow), indent=2))
    elif not args.out:
        print(graph_as_text(workflow))
    return 0


def _picture_path(out: str) -> Path:
    """--out checked before any work (the figures package, and matplotlib with it, is only
    imported when a picture is asked for)."""
    from planner.figures.common import check_picture_path
    return check_picture_path(Path(out))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "graph", help="show a workflow's dataflow graph",
        description="Show the model function calls of a workflow and the data keys that flow "
                    "between them. Built-ins: ppo, grpo, remax, dpo, rloo; or a workflow YAML.")
    parser.add_argument("--workflow", required=True, metavar="NAME|FILE",
                        help="built-in workflow name or workflow YAML file")
    parser.add_argument("--out", metavar="FILE.png", help="also draw the graph to a picture")
    parser.add_argument("--json", action="store_true", help="print the graph as JSON")
    parser.set_defaults(handler=run)
