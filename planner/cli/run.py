"""`plan run`: execute a saved plan on local processes, one per device, and write a trace."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from planner.domain.plan import load_plan
from planner.domain.yamlio import atomic_write_text

DESCRIPTION = """\
Run a plan: one process per device of the plan's cluster on this machine (gloo on CPU, NCCL
with one GPU per rank on CUDA). Every rank creates the process groups of every execution of
the plan, creates the models (seeded random init), then runs the iterations call by call in
the plan's order: parameter reallocations and data transfers follow the same schedules the
cost model prices (planner.sharding.transfer_schedule); calls on disjoint meshes run at the same time.
Prints one progress line per iteration (time, reward mean, losses, KL) and writes a JSON
trace in the shape of `plan estimate --json` (iteration_s, calls, reallocations, transfers)
plus nodes [{name, start_s, end_s, devices}] and per-iteration metrics. Peak memory: CUDA
max_memory_allocated, or on CPU the process RSS sampled every 10 ms (memory_source says which).

Rewards: --reward model uses the workflow's reward model; --reward
programmatic:target_token=7 rewards the fraction of generated tokens equal to 7 (no reward
model; learning is visible on tiny models within minutes of CPU time).

Multi-node: run the worker under torchrun on every node, e.g.
  torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --master-addr HOST --master-port 29500 \\
      -m runtime.executor.worker PLAN.yaml --iterations 10 --trace run.json
(same options as here; --node-rank 1 on the second node; or --rdzv-backend c10d
--rdzv-endpoint HOST:29500 --rdzv-id JOB). Rank 0 prints and writes the trace at the end.

Exit codes: 0 done; 1 a rank failed (its rank and error are printed; every other rank is
stopped at once); 2 bad input (one line)."""


def run(args: argparse.Namespace) -> int:
    from runtime.executor.config import config_from_args
    from runtime.executor.launcher import run_plan
    from runtime.launch import WorkerError

    config = config_from_args(args)
    plan = load_plan(Path(args.plan))
    try:
        trace, _ = run_plan(plan, config, emit=lambda line: print(line, flush=True),
                            source=args.plan)
    except WorkerError as err:
        print(f"plan run: error: {err}", file=sys.stderr)
        return 1
    out = Path(args.trace) if args.trace else Path(args.plan).with_suffix(".trace.json")
    atomic_write_text(out, json.dumps(trace, indent=1))
    print(f"iteration {trace['iteration_s']:.3f} s (steady state); trace: {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from runtime.executor.options import add_run_options

    parser = subparsers.add_parser("run", help="execute a plan and write a trace",
                                   description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.set_defaults(handler=run)
