"""`plan viz`: draw a plan as a picture (timeline, placement, memory or augmented graph),
or write its timeline as a Perfetto / Chrome trace-event JSON file."""

from __future__ import annotations

import argparse
from pathlib import Path

from planner.domain.errors import InputError
from planner.domain.output_files import check_writable_path
from planner.domain.plan import load_plan

KINDS = ("timeline", "placement", "memory", "graph", "perfetto")
TRACE_KINDS = ("timeline", "perfetto")   # the kinds that show a measured trace too
PERFETTO_SUFFIX = ".json"


def checked_out_path(kind: str, out: Path) -> Path:
    """--out for `kind`: a .json file for perfetto, a picture type otherwise."""
    from planner.figures.common import check_picture_path
    if kind != "perfetto":
        return check_picture_path(out)
    if out.suffix.lower() != PERFETTO_SUFFIX:
        raise InputError(f"--out: {out}: --kind perfetto writes trace-event JSON; give a "
                         f"{PERFETTO_SUFFIX} file (got {out.suffix or '(none)'!r})")
    check_writable_path(out, "--out")
    return out


def run(args: argparse.Namespace) -> int:
    if args.kind not in KINDS:
        raise InputError(f"--kind: got {args.kind!r}; valid: {', '.join(KINDS)}")
    out = checked_out_path(args.kind, Path(args.out))
    if args.trace and args.kind not in TRACE_KINDS:
        raise InputError(f"--trace: only the timeline and perfetto kinds show a trace (got "
                         f"--kind {args.kind})")
    plan = load_plan(Path(args.plan))
    trace = Path(args.trace) if args.trace else None
    try:
        if args.kind == "perfetto":
            from planner.figures.perfetto import write_perfetto
            write_perfetto(plan, out, Path(args.plan).name, trace)
        else:
            from planner.figures.plan_figures import draw_plan_figure
            draw_plan_figure(plan, args.kind, out, Path(args.plan).name, trace)
    except OSError as err:
        raise InputError(f"--out: {out}: cannot write ({err.strerror or err})") from None
    print(f"wrote {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "viz", help="draw a plan: timeline, placement, memory, augmented graph or Perfetto trace",
        description="Draw a plan to a PNG, SVG or PDF file, or its timeline to a trace-event "
                    "JSON file. Kinds: "
                    "timeline = per-device Gantt chart of the estimated steady-state "
                    "iterations (calls, reallocations, data transfers; --trace adds measured "
                    "bars); placement = which devices each call uses and its layout "
                    "dXtYpZmW (data x tensor x pipeline degrees, micro-batches; a train call "
                    "adds /none, /selective or /full, its activation recomputation); memory = "
                    "each device's estimated peak memory by kind against its capacity; "
                    "graph = the augmented dataflow graph (calls, reallocations, data, "
                    "transfer and parameter-version edges) over two iterations; "
                    "perfetto = the estimated timeline (and, with --trace, the measured run "
                    "as a second process beside it) as Chrome trace-event JSON for "
                    "ui.perfetto.dev or chrome://tracing: one track per device, calls, "
                    "reallocations and transfers as slices whose args hold the layout and "
                    "bytes moved. "
                    "Example: plan viz plans/ppo.yaml --kind timeline --out timeline.png")
    parser.add_argument("plan", metavar="PLAN.yaml", help="plan file")
    parser.add_argument("--kind", required=True, metavar="|".join(KINDS),
                        help="which picture to draw")
    parser.add_argument("--out", required=True, metavar="FILE.png|.svg|.json",
                        help="file to write (a picture's type from the suffix: .png, .svg, "
                             ".pdf; .json for --kind perfetto)")
    parser.add_argument("--trace", metavar="TRACE.json",
                        help="timeline and perfetto only: a measured trace (`plan run "
                             "--trace`; {\"nodes\": [{\"name\": \"1/actor_gen\", \"start_s\": "
                             ".., \"end_s\": .., \"devices\": [..]}]}) drawn as hatched "
                             "outlines under the estimate, or as the perfetto file's second "
                             "process")
    parser.set_defaults(handler=run)
