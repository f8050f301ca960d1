"""The `plan` command line: one module per subcommand, each returning an exit code.

Exit codes: 0 success, 1 a valid input that is infeasible (the reason is printed),
2 bad input (one line naming the file, the field and what would be valid), 130 interrupted
(Ctrl-C: `plan <command>: interrupted` on stderr, no traceback).

Start-up: `main` imports only the module of the command being run (`SUBCOMMANDS` names each
with its one-line help), so `plan --help` and the light commands never load torch,
matplotlib, scipy or numba. This module itself imports only `sys`, `importlib` and `time`
(built into Python); everything else is imported inside `main`'s try block, so a
Ctrl-C during start-up is handled like one later. What Python does before it runs this
module (its own start-up, `site`) is outside our reach.

A command's clock starts as `main` is entered, before the command's module is imported:
handlers read it as `args.command_started_s` (time.perf_counter), so that `plan search
--time-limit` bounds the imports too.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

INTERRUPTED_EXIT_CODE = 130   # 128 + SIGINT, what shells report for a Ctrl-C
BAD_INPUT_EXIT_CODE = 2


class Subcommand:
    """A `plan` subcommand: its module (with `add_parser` and `run`) and its one-line help,
    which must equal the `help=` its module's `add_parser` gives (tests/cli check it).
    A plain class: a dataclass would import `inspect` and `ast` before `main` runs."""

    __slots__ = ("name", "module", "help")

    def __init__(self, name: str, module: str, help: str):
        self.name, self.module, self.help = name, module, help


SUBCOMMANDS = (
    Subcommand("search", "planner.cli.search", "find the fastest plan for a workflow on a cluster"),
    Subcommand("baseline", "planner.cli.baseline", "build and price a hand-made style plan"),
    Subcommand("estimate", "planner.cli.estimate",
               "estimate a plan's time per iteration and memory"),
    Subcommand("show", "planner.cli.show",
               "print a plan as a table with its estimate and critical path"),
    Subcommand("check", "planner.cli.check", "validate a plan"),
    Subcommand("diff", "planner.cli.diff", "compare two plans and their estimates"),
    Subcommand("viz", "planner.cli.viz",
               "draw a plan: timeline, placement, memory, augmented graph or Perfetto trace"),
    Subcommand("graph", "planner.cli.graph", "show a workflow's dataflow graph"),
    Subcommand("profile", "planner.cli.profile",
               "measure per-layer compute times into a profile table"),
    Subcommand("run", "planner.cli.run", "execute a plan and write a trace"),
    Subcommand("calibrate", "planner.cli.calibrate", "fit the cost model to measured traces"),
    Subcommand("export", "planner.cli.export",
               "write a plan as a verl, AReaL, ROLL or OpenRLHF config"),
    Subcommand("import", "planner.cli.import_config",
               "price a verl, AReaL, ROLL or OpenRLHF config as a plan"),
)
SUBCOMMAND_BY_NAME = {s.name: s for s in SUBCOMMANDS}


def requested_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line, or None.

    The top-level options (`-h`, `--help`, `--version`) take no value, so the first word
    that is not an option is the command (argparse reads it the same way).
    """
    first_word = next((word for word in argv if not word.startswith("-")), None)
    return first_word if first_word in SUBCOMMAND_BY_NAME else None


def one_line_error_parser_class() -> type:
    """An ArgumentParser whose errors are one line, `plan search: error: argument
    --time-limit: ... (see plan search --help)`, exit 2, like our own input errors (argparse
    prints its usage text first). Subparsers inherit the class."""
    import argparse

    class OneLineErrorParser(argparse.ArgumentParser):
        def error(self, message: str):
            self.exit(BAD_INPUT_EXIT_CODE,
                      f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} "
                      f"--help)\n")

    return OneLineErrorParser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `plan` parser, with the full options of `command` only (its module is imported);
    every other subcommand is a stub that carries its one-line help for `plan --help`."""
    from planner import __version__

    parser = one_line_error_parser_class()(
        prog="plan",
        description="Plan, estimate and run distributed RLHF workflows (PPO, GRPO, ReMax, "
                    "RLOO, DPO) on a GPU cluster.")
    parser.add_argument("--version", action="version", version=f"rlhf-plan {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for sub in SUBCOMMANDS:
        if sub.name == command:
            importlib.import_module(sub.module).add_parser(subparsers)
        else:
            subparsers.add_parser(sub.name, help=sub.help)
    return parser


def _parse_and_run(argv: list[str], started_s: float) -> int:
    """Parse `argv`, run the command's handler (which sees `started_s` as
    args.command_started_s); InputError propagates to `main`."""
    parser = build_parser(requested_command(argv))
    args = parser.parse_args(argv)
    args.command_started_s = started_s
    if not getattr(args, "handler", None):
        parser.print_help()
        return BAD_INPUT_EXIT_CODE
    return args.handler(args)


def _command_label(argv: list[str]) -> str:
    command = requested_command(argv)
    return f"plan {command}" if command else "plan"


def main(argv: list[str] | None = None) -> int:
    """Run `plan ARGV` (default: the command line) and return its exit code (module
    docstring). argparse's own errors and `--help` still exit through SystemExit. After a
    Ctrl-C, SIGINT stays ignored: the process is about to exit."""
    started_s = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        from planner.domain.errors import InputError, one_line
        try:
            return _parse_and_run(argv, started_s)
        except InputError as err:
            print(f"{_command_label(argv)}: error: {one_line(str(err))}", file=sys.stderr)
            return BAD_INPUT_EXIT_CODE
    except KeyboardInterrupt:
        import signal
        # a second Ctrl-C while we exit must not print a traceback either
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"{_command_label(argv)}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
