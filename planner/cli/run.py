"""`plan run`: execute a saved plan on local processes, one per device, and write a trace."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from planner.domain.output_files import atomic_write_text, check_writable_path
from planner.domain.plan import load_plan

DESCRIPTION = """\
Run a plan: one process per device of the plan's cluster on this machine, on the plan's
device kind and compute dtype (a cpu plan: gloo on CPU, fp32; a cuda plan: NCCL with one GPU
per rank, in its hardware's dtype). Before any process starts, the plan is checked: the
runtime must support it, this machine must have its device kind (and a GPU per rank), and
it must fit in the memory of the devices at hand (the check of `plan check`).

Every rank creates the process groups of every execution of the plan, creates the models
(seeded random init, or --load ROLE=DIR: its shards of an HF checkpoint), then runs the
iterations call by call in the plan's order: parameter
reallocations and data transfers follow the same schedules the cost model prices
(planner.sharding.transfer_schedule); calls on disjoint meshes run at the same time.
Prints one progress line per iteration (time, reward mean, losses, KL) and writes a JSON
trace in the shape of `plan estimate --json` (iteration_s, calls, reallocations, transfers)
plus nodes [{name, start_s, end_s, devices}] and per-iteration metrics. Peak memory per call
and device: CUDA max_memory_allocated, or on CPU the peak of live tensor bytes in the first
iteration (runtime/memory_meter.py; memory_source says which).

Checkpoints: --load ROLE=DIR (repeatable) starts model role ROLE from the HF checkpoint in
DIR (config.json + model.safetensors or a sharded index; bf16 or fp32, cast to the plan's
dtype). Its config.json must describe the role's model (else one line naming DIR and the
field). A reward or critic role reads transformers' *ForSequenceClassification head
(score.weight [1, hidden]) as its value head; from a causal-LM checkpoint its value head
starts from --seed, and a note says so. --save DIR writes each trained role after the last
iteration (and after every N with --save-every N) to DIR/ROLE/ as an HF checkpoint in the
plan's dtype (LlamaForCausalLM or Qwen2ForCausalLM; a value head as
*ForSequenceClassification with num_labels 1) that transformers' from_pretrained loads.
Files are written under temporary names and renamed; nothing is written outside DIR.

Lengths: every response ends at a length drawn from the workflow's gen_len (a fixed
gen_len: that length), every synthetic prompt has one drawn from prompt_len, per sequence
and iteration from --seed, the same under every layout (runtime/executor/lengths.py): the
engine's models have no stop token of their own, and this is the law the estimate prices.
The progress line and the trace's metrics give the mean response length
(response_length_mean).

Rewards: --reward model uses the workflow's reward model; --reward
programmatic:target_token=7 rewards the fraction of generated tokens equal to 7 (no reward
model; learning is visible on tiny models within minutes of CPU time).

Multi-node: run the worker under torchrun on every node, e.g.
  torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --master-addr HOST --master-port 29500 \\
      -m planner.cli.torchrun_rank PLAN.yaml --iterations 10 --trace run.json
(same options as here; --node-rank 1 on the second node; or --rdzv-backend c10d
--rdzv-endpoint HOST:29500 --rdzv-id JOB). Rank 0 prints and writes the trace at the end.

The trace's default name, PLAN.trace.json next to the plan, is in .gitignore, so a run of a
shipped example in plans/ leaves the checkout clean. Under torchrun every node checks its
own part (the node structure must be the plan's: nodes, processes per node, ranks
node-major); a bad input is one line from each node's local rank 0, prefixed with its rank.

Exit codes: 0 done; 1 the plan does not fit (the reason is printed, nothing is started) or a
rank failed (its rank and error are printed; every other rank is stopped at once); 2 bad
input (one line); 130 interrupted."""


def run(args: argparse.Namespace) -> int:
    from planner.cli.run_checks import PlanDoesNotFit, check_plan_can_start
    from runtime.executor.config import config_from_args
    from runtime.executor.launcher import start_plan
    from runtime.launch import WorkerError

    out = Path(args.trace) if args.trace else Path(args.plan).with_suffix(".trace.json")
    check_writable_path(out, "--trace")
    config = config_from_args(args)
    plan = load_plan(Path(args.plan))
    world = plan.cluster.num_devices
    try:
        for note in check_plan_can_start(plan, config, args.plan, world,
                                         {h.name for h in plan.cluster.node_hardware}):
            print(f"plan run: {note}", file=sys.stderr)
        trace, _ = start_plan(plan, config, emit=lambda line: print(line, flush=True))
    except PlanDoesNotFit as err:
        print(f"plan run: {err}; nothing was started", file=sys.stderr)
        return 1
    except WorkerError as err:
        print(f"plan run: error: {err}", file=sys.stderr)
        return 1
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
