"""`plan calibrate`: fit the cost model's efficiency factors to measured `plan run` traces."""

from __future__ import annotations

import argparse
from pathlib import Path

from costmodel.calibration import MAX_CORES_PER_NODE, save_calibration
from costmodel.calibration_data import MeasuredPlan, load_measured_plan, plan_path_for
from costmodel.calibration_fit import FitResult, Residual, fit_calibration
from planner.cli.arguments import integer_in_range
from planner.domain.output_files import check_writable_path
from planner.domain.processor import Processor

DESCRIPTION = """\
Fit the cost model's efficiency factors to measured traces and write a calibrated profile.

Each TRACE is a `plan run --trace` output; its plan is X.yaml for a trace named X.trace.json
(plan run's default naming), or give the pair as PLAN.yaml=TRACE.json. All plans must run
on one hardware kind (e.g. the cpu gloo cluster). The factors (costmodel/calibration.py):
per call kind (generate, inference, train) a compute multiplier and a fixed per-call
overhead; a fixed overhead per decode step; the latency of one collective step or send;
a multiplier and a fixed overhead for reallocations and data transfers; a slowdown per
other process of the call sharing a node's cores (process_slowdown). The oversubscription of
CPU cores (more device processes on a node than --cores) is applied, not fitted: it scales
compute and the collective latency (a collective step waits for every member to be
scheduled). The factors are fitted by non-negative least squares on relative errors of
every call's measured time.

The calibration records this machine's processor (CPU model name and logical cores, or GPU
name and driver: the traces are taken to be measured here); `plan estimate` and `plan
search` say when they run on another. Prints the processor, the factors and, per call, the
measured time and the estimate before and after the fit. Use the output with `plan
estimate --profile FILE` (or `plan search --profile FILE`). Fit on some plans and check
on others: a fit is only as good as the variety of its plans.

Exit codes: 0 written; 2 bad input (one line naming the file and field)."""


def parse_pair(text: str) -> tuple[Path, Path]:
    """(plan, trace) of one TRACE argument."""
    if "=" in text:
        plan, trace = text.split("=", 1)
        return Path(plan), Path(trace)
    return plan_path_for(Path(text)), Path(text)


def residual_lines(title: str, rows: list[Residual]) -> list[str]:
    lines = [title, f"  {'':<44} {'measured':>9} {'before':>9} {'err':>6} {'after':>9} {'err':>6}"]
    for r in rows:
        before = (r.before_s - r.measured_s) / r.measured_s
        after = (r.after_s - r.measured_s) / r.measured_s
        lines.append(f"  {r.name:<44} {r.measured_s * 1e3:7.1f}ms {r.before_s * 1e3:7.1f}ms "
                     f"{before:+6.0%} {r.after_s * 1e3:7.1f}ms {after:+6.0%}")
    return lines


def traces_processor(cases: list[MeasuredPlan]) -> Processor | None:
    """This machine's first processor of the traces' hardware kind (None: it has none, e.g.
    GPU traces calibrated on a CPU-only host)."""
    from runtime.machine import processors_of_kind
    kind = cases[0].plan.cluster.node_hardware[0].kind
    return next(iter(processors_of_kind(kind)), None)


def report(fit: FitResult) -> str:
    processor = fit.calibration.processor
    lines = [f"processor: {processor.describe() if processor else 'unknown'}",
             f"factors: {fit.calibration.describe()}"]
    lines += residual_lines("calls (relative error of the estimate):", fit.calls)
    if fit.moves:
        lines += residual_lines("reallocations and transfers:", fit.moves)
    s = fit.calibration.fit
    lines.append(f"median relative call error: {s['call_rel_error_median_before']:.1%} before, "
                 f"{s['call_rel_error_median_after']:.1%} after (on the fitted traces)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    check_writable_path(args.out, "--out")
    cases = []
    for text in args.traces:
        plan_path, trace_path = parse_pair(text)
        cases.append(load_measured_plan(plan_path, trace_path))
    fit = fit_calibration(cases, args.cores, processor=traces_processor(cases))
    print(report(fit))
    save_calibration(fit.calibration, Path(args.out))
    print(f"wrote {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("calibrate", help="fit the cost model to measured traces",
                                   description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", nargs="+", metavar="TRACE.json",
                        help="plan run traces (X.trace.json next to X.yaml, or PLAN=TRACE)")
    parser.add_argument("--out", required=True, metavar="PROFILE",
                        help="calibrated profile to write (e.g. profiles/cpu/calibration.yaml)")
    parser.add_argument("--cores", type=integer_in_range(1, MAX_CORES_PER_NODE), default=None,
                        metavar="N",
                        help="CPU cores the device processes of one node share (default: "
                             "this machine's count)")
    parser.set_defaults(handler=run)
