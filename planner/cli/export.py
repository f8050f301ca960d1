"""`plan export`: write a plan as a framework's own config (verl, AReaL, ROLL, OpenRLHF)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from planner.domain.output_files import atomic_write_text, check_writable_path
from planner.domain.plan import load_plan
from planner.frameworks.target import TARGET_NAMES, Unexpressible, target_module


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    check_writable_path(out, "--out")
    plan = load_plan(Path(args.plan))
    module = target_module(args.to)
    try:
        exported = module.export_config(plan.workflow, plan.cluster, plan.executions,
                                        staleness=plan.staleness)
    except Unexpressible as refused:
        for reason in refused.reasons:
            print(f"plan export: {args.to} cannot express: {reason}", file=sys.stderr)
        return 1
    text = exported.text if exported.text.endswith("\n") else exported.text + "\n"
    if out is None:
        sys.stdout.write(text)
        return 0
    atomic_write_text(out, text)
    usual = "" if out.suffix == exported.file_suffix else \
        f"; {module.TARGET_VERSION} configs are usually {exported.file_suffix} files"
    print(f"wrote {out} ({module.TARGET_VERSION}{usual})")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a plan as a verl, AReaL, ROLL or OpenRLHF config",
        description="Write the framework's own config for a plan: which devices each model "
                    "and call gets and every tensor / pipeline / data parallel degree, in "
                    "the keys (verl, AReaL, ROLL: YAML) or command-line flags (OpenRLHF: a "
                    "shell script) of the framework version named in the output. A plan "
                    "the framework cannot run is refused with one line per feature it "
                    "cannot express (`plan export: verl cannot express: ...`), exit 1; "
                    "`plan search --target T` finds the best plan a framework can run. "
                    "Exit 0 when written, 2 on bad input.")
    parser.add_argument("plan", metavar="PLAN.yaml", help="plan file")
    parser.add_argument("--to", required=True, choices=TARGET_NAMES,
                        help="the framework whose config to write")
    parser.add_argument("--out", metavar="FILE",
                        help="file to write (atomically); default: print to stdout")
    parser.set_defaults(handler=run)
