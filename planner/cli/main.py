"""The `plan` command line: one module per subcommand, each returning an exit code.

Exit codes: 0 success, 1 a valid input that is infeasible (the reason is printed),
2 bad input (one line naming the file, the field and what would be valid).
"""

from __future__ import annotations

import argparse
import sys

from planner import __version__
from planner.cli import (baseline, calibrate, check, diff, estimate, graph, profile, run, search,
                         show, viz)
from planner.domain.errors import InputError, one_line

SUBCOMMANDS = [search, baseline, estimate, show, check, diff, viz, graph, profile, run, calibrate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plan",
        description="Plan, estimate and run distributed RLHF workflows (PPO, GRPO, ReMax, "
                    "RLOO, DPO) on a GPU cluster.")
    parser.add_argument("--version", action="version", version=f"rlhf-plan {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except InputError as err:
        print(f"plan {args.command}: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
