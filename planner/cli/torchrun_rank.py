"""The torchrun entry point of `plan run` (multi-node): one process per device, e.g.

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --master-addr HOST \\
        --master-port 29500 -m planner.cli.torchrun_rank PLAN.yaml --iterations 10

Before the process group starts, every rank checks its torchrun variables against the plan's
nodes (runtime.executor.torchrun.node_structure_problem), what the runtime checks for its
node's processes (runtime.executor.launcher.check_before_start) and the memory check
(planner/cli/run_checks.py): bad input exits 2 and a plan that does not fit exits 1, with one
line per node (`report`) and no traceback. Then rank 0 prints the progress lines and writes
the trace at the end (the ranks' messages are gathered to it); torchrun stops every worker
when one fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from planner.cli.run_checks import PlanDoesNotFit, check_plan_can_start
from planner.domain.errors import InputError, one_line
from planner.domain.plan import load_plan
from runtime.executor.config import config_from_args
from runtime.executor.options import add_run_options
from runtime.executor.torchrun import (
    TorchrunPlace,
    node_structure_problem,
    run_under_torchrun,
    torchrun_place,
)

TORCHRUN_PROG = "python -m planner.cli.torchrun_rank"


def report(place: TorchrunPlace | None, message: str) -> None:
    """One line on stderr from each node's local rank 0 (every node checks its own part,
    so no node's reason is lost; each line says where it comes from)."""
    if place is not None and place.local_rank != 0:
        return
    where = f"{place.label()}: " if place else ""
    print(f"{TORCHRUN_PROG}: {where}{one_line(message)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """One rank under torchrun (module docstring); the exit code."""
    parser = argparse.ArgumentParser(prog=TORCHRUN_PROG)
    add_run_options(parser)
    args = parser.parse_args(argv)
    place = None
    try:
        place = torchrun_place(os.environ)
        config = config_from_args(args)
        plan = load_plan(Path(args.plan))
        problem = node_structure_problem(plan.cluster, place)
        if problem:
            raise InputError(f"{args.plan}: cluster: {problem}")
        hardware = plan.cluster.node_hardware[place.node]
        notes = check_plan_can_start(plan, config, args.plan, place.local_world_size,
                                     {hardware.name})
    except InputError as err:
        report(place, f"error: {err}")
        return 2
    except PlanDoesNotFit as err:
        report(place, f"{err}; nothing was started")
        return 1
    for note in notes:
        report(place, note)
    trace_path = Path(args.trace) if args.trace else Path(args.plan).with_suffix(".trace.json")
    run_under_torchrun(plan, config, place, trace_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
