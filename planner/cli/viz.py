"""`plan viz`: draw a plan as a picture (timeline, placement, memory or augmented graph)."""

from __future__ import annotations

import argparse
from pathlib import Path

from planner.domain.errors import InputError
from planner.domain.plan import load_plan

KINDS = ("timeline", "placement", "memory", "graph")


def run(args: argparse.Namespace) -> int:
    from planner.figures.common import check_picture_path
    from planner.figures.plan_figures import draw_plan_figure
    if args.kind not in KINDS:
        raise InputError(f"--kind: got {args.kind!r}; valid: {', '.join(KINDS)}")
    out = check_picture_path(Path(args.out))
    if args.trace and args.kind != "timeline":
        raise InputError(f"--trace: only the timeline overlays a trace (got --kind {args.kind})")
    plan = load_plan(Path(args.plan))
    try:
        draw_plan_figure(plan, args.kind, out, Path(args.plan).name,
                         Path(args.trace) if args.trace else None)
    except OSError as err:
        raise InputError(f"--out: {out}: cannot write ({err.strerror or err})") from None
    print(f"wrote {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "viz", help="draw a plan: timeline, placement, memory or augmented graph",
        description="Draw a plan to a PNG, SVG or PDF file. Kinds: "
                    "timeline = per-device Gantt chart of the estimated steady-state "
                    "iterations (calls, reallocations, data transfers; --trace adds measured "
                    "bars); placement = which devices each call uses and its layout "
                    "dXtYpZmW (data x tensor x pipeline degrees, micro-batches; a train call "
                    "adds /none, /selective or /full, its activation recomputation); memory = "
                    "each device's estimated peak memory by kind against its capacity; "
                    "graph = the augmented dataflow graph (calls, reallocations, data, "
                    "transfer and parameter-version edges) over two iterations. "
                    "Example: plan viz plans/ppo.yaml --kind timeline --out timeline.png")
    parser.add_argument("plan", metavar="PLAN.yaml", help="plan file")
    parser.add_argument("--kind", required=True, metavar="|".join(KINDS),
                        help="which picture to draw")
    parser.add_argument("--out", required=True, metavar="FILE.png|.svg",
                        help="picture file to write (type from the suffix: .png, .svg, .pdf)")
    parser.add_argument("--trace", metavar="TRACE.json",
                        help="timeline only: a measured trace ({\"nodes\": [{\"name\": "
                             "\"1/actor_gen\", \"start_s\": .., \"end_s\": .., \"devices\": "
                             "[..]}]}) drawn as hatched outlines under the estimate")
    parser.set_defaults(handler=run)
