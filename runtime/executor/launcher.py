"""Start one process per device of the plan's cluster on this machine and run the plan.

`run_plan` checks first, and spawns nothing when a check fails (`check_before_start`): what
the runtime cannot run or this machine cannot host is an InputError (one line, exit 2).
`plan run` runs the same checks plus the memory check on the devices at hand (the cost
model's rule, planner/cli/run_checks.py) and then `start_plan`. That spawns the ranks on
the plan's device kind (gloo for cpu, even where CUDA exists; NCCL with one GPU per rank for
cuda), prints a progress line when every rank has finished an iteration, and builds the
trace. When a rank fails, the others are terminated at once and
WorkerError names the failing rank with its error (see runtime.launch). Multi-node runs use
torchrun instead (planner/cli/torchrun_rank.py, runtime/executor/torchrun.py), with the same
checks on every node.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

from planner.domain.errors import InputError
from planner.domain.plan import Plan, plan_to_mapping
from runtime.algorithms import ALGORITHMS
from runtime.device import cluster_backend, cluster_device_problem
from runtime.executor.checkpoints import checkpoint_notes
from runtime.executor.config import RunConfig, parse_reward
from runtime.executor.data import DATASET_KEYS, key_format
from runtime.executor.dataset import load_records
from runtime.executor.trace import (
    build_trace,
    iteration_ends,
    merge_records,
    progress_line,
)
from runtime.executor.worker import execute, reward_roles
from runtime.launch import run_distributed
from runtime.params import check_layout_supported


def runnable_problem(plan: Plan, config: RunConfig) -> str | None:
    """Why the runtime cannot run this plan with this config, or None."""
    wf = plan.workflow
    if wf.algorithm not in ALGORITHMS:
        return (f"workflow.algorithm: the runtime runs {sorted(ALGORITHMS)}, not "
                f"{wf.algorithm!r}")
    for call in wf.calls:
        for key in set(call.inputs) | set(call.outputs):
            if key not in DATASET_KEYS:
                key_format(key, wf.batch)
    vocab = {r.spec.vocab_size for r in wf.models.values()}
    if len(vocab) > 1:
        return f"workflow.models: all models must share one vocabulary, got sizes {sorted(vocab)}"
    if wf.algorithm in ("grpo", "rloo") and wf.batch.group_size < 2:
        return f"batch.group_size: {wf.algorithm} needs groups of 2 or more samples per prompt"
    programmatic = parse_reward(config.reward) is not None
    for name in wf.call_order:
        call, ex = wf.call_by_name[name], plan.executions[name]
        if programmatic and call.model in reward_roles(plan):
            continue
        role = wf.models[call.model]
        try:
            check_layout_supported(role.spec, ex.tp, ex.pp, ex.dp, ex.ep)
        except ValueError as err:
            return f"executions.{name}: {err}"
        if call.kind == "train":
            unit = getattr(ALGORITHMS[wf.algorithm], "UNIT", 1)
            need = ex.dp * wf.batch.ppo_minibatches * unit
            if wf.batch.n_seqs % need:
                return (f"executions.{name}: n_seqs {wf.batch.n_seqs} must be divisible by dp "
                        f"{ex.dp} x ppo_minibatches {wf.batch.ppo_minibatches} x sequences "
                        f"per unit {unit} = {need}")
    max_len = min(r.spec.max_positions for r in wf.models.values())
    if wf.batch.seq_len > max_len:
        return f"batch: prompt_len + gen_len = {wf.batch.seq_len} exceeds max_positions {max_len}"
    return None


def check_runnable(plan: Plan, config: RunConfig, source: str) -> None:
    problem = runnable_problem(plan, config)
    if problem:
        raise InputError(f"{source}: {problem}")
    if config.prompts:
        vocab = next(iter(plan.workflow.models.values())).spec.vocab_size
        load_records(config.prompts, plan.workflow.algorithm == "dpo", vocab)


def check_before_start(plan: Plan, config: RunConfig, source: str, ranks_here: int
                       ) -> list[str]:
    """What the runtime checks before any rank starts, for the `ranks_here` ranks this
    machine runs: InputError when the runtime cannot run the plan, a --load or --save is
    bad (runtime.executor.checkpoints), or this machine cannot host it (its device kind,
    count and dtype). The memory check against the devices at hand is the cost model's,
    done by the command line after this (planner/cli/run_checks.py). Returns the notes to
    print (value heads a checkpoint leaves to the seed)."""
    check_runnable(plan, config, source)
    notes = checkpoint_notes(plan, config, source)
    problem = cluster_device_problem(plan.cluster, ranks_here)
    if problem:
        raise InputError(f"{source}: cluster: {problem}")
    return notes


def _entry(rank: int, world_size: int, post, plan_data: dict, config: RunConfig):
    return execute(rank, world_size, post, plan_data, config)


class Progress:
    """Collects the ranks' per-iteration messages; prints a line per finished iteration."""

    def __init__(self, world_size: int, iterations: int, emit: Callable[[str], None]):
        self.world_size, self.iterations, self.emit = world_size, iterations, emit
        self.messages: list[dict] = []
        self._by_iteration: dict[int, list[dict]] = defaultdict(list)
        self._previous_end: float | None = None

    def __call__(self, message: dict) -> None:
        self.messages.append(message)
        got = self._by_iteration[message["iteration"]]
        got.append(message)
        if len(got) < self.world_size:
            return
        i = message["iteration"]
        nodes = merge_records(got)
        if not nodes:
            return
        end = iteration_ends(nodes, self.iterations)[i]
        start = (self._previous_end if self._previous_end is not None
                 else min(n["start"] for n in nodes.values()))
        self._previous_end = end
        metrics = {}
        for m in got:
            metrics.update(m["metrics"])
        self.emit(progress_line(i, self.iterations, end - start, metrics))


def run_plan(plan: Plan, config: RunConfig, emit: Callable[[str], None] = print,
             source: str = "plan") -> tuple[dict, list[dict]]:
    """Run the plan on local processes, every device of its cluster on this machine (checked
    first, module docstring); (trace, per-rank results)."""
    for note in check_before_start(plan, config, source, plan.cluster.num_devices):
        emit(note)
    return start_plan(plan, config, emit)


def start_plan(plan: Plan, config: RunConfig, emit: Callable[[str], None] = print
               ) -> tuple[dict, list[dict]]:
    """`run_plan` for a caller that has run `check_before_start` itself (`plan run`, which
    adds the memory check in between)."""
    world = plan.cluster.num_devices
    progress = Progress(world, config.iterations, emit)
    results = run_distributed(_entry, world, (plan_to_mapping(plan), config), timeout_s=None,
                              backend=cluster_backend(plan.cluster), on_message=progress)
    return build_trace(plan, progress.messages, config.iterations), results
