"""Time and memory of one model function call on one execution.

A call processes batch.n_seqs sequences (a train call: ppo_minibatches minibatches of
n_seqs / ppo_minibatches), split evenly over the dp replicas and then into micro-batches of
b = ceil(seqs / (dp x m)). A stage's time is the slowest hardware among its devices: its
blocks (+ the embedding on stage 0, the head on the last) plus the TP all-reduces of its
blocks; pipeline sends (p2p of b x tokens x h) go over the slowest pp link.

- generate: prefill (pp + m - 1) x (stage prefill + send), then decoding in waves of pp
  micro-batches (ceil(m / pp) waves, so a device holds the KV cache of min(m, pp)
  micro-batches); within a wave the micro-batches rotate through the stages, each round
  advancing every one of them by a token in pp x (stage decode + send). gen_len rounds per
  wave, the context growing from prompt_len + 1 to prompt_len + gen_len. When the call
  outputs `logprobs`, the runtime recomputes them with one forward pass of the generated
  sequences (runtime/executor/calls.py run_generate): phase "logprobs", priced as inference.
- inference: one forward, (pp + m - 1) x (stage forward + send).
- train, per minibatch: 1F1B (pp + m - 1) x (stage forward + backward [+ the blocks'
  recomputed forward when Execution.recompute_activations] + 2 sends), then the DP gradient
  sync and the optimizer step. With Execution.shard_optimizer_over_dp (ZeRO-1):
  reduce-scatter of gradients + all-gather of weights over the dp group (compute dtype),
  the optimizer step on 1/dp of the stage's shard; without, an all-reduce of the gradients
  and the whole step on every replica. Not overlapped with compute.
TP all-reduces per block: 2 forward (attention and MLP outputs), 2 backward,
efficiency.RECOMPUTED_TP_ALLREDUCES_PER_BLOCK more for the recomputed forward; 1 for the
vocab-parallel embedding; the head's softmax reductions are 3 small all-reduces of
tokens x 4 bytes. Replicated-norm gradient all-reduces are ignored.

Calibration (costmodel/calibration.py, optional): `call_time(..., calibration=cal)` scales
every compute time of the call by cal's factor for the call kind (and by the core
oversubscription of its node), replaces the latency of every collective and send by the
measured one, and adds the fixed per-call and per-decode-step overheads as phases. Without
one, the knobs are neutral (CostKnobs()) and the estimate is the uncalibrated model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from costmodel import comm
from costmodel import efficiency as eff
from costmodel.compute import part_timer
from costmodel.memory import (
    CallMemory,
    call_memory_parts,
    micro_batch_seqs,
    optimizer_shards,
)
from planner.domain.cluster import ClusterSpec
from planner.domain.hardware import HardwareSpec
from planner.domain.layout import Execution
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import BatchSpec, ModelFunctionCall, ModelRole
from planner.sharding.param_shards import shard_elements
from planner.sharding.pipeline_partition import stage_layer_counts
from planner.sharding.rank_groups import rank_groups


@dataclass(frozen=True)
class Geometry:
    """Where an execution's stages and groups are: hardware and links per stage."""

    stage_layers: tuple[int, ...]
    stage_hardware: tuple[tuple[HardwareSpec, ...], ...]
    tp_link: tuple[comm.Link, ...]
    dp_link: tuple[comm.Link, ...]
    pp_link: comm.Link | None


def geometry(execution: Execution, num_layers: int, cluster: ClusterSpec) -> Geometry:
    ex = execution
    groups = rank_groups(ex.devices, ex.dp, ex.tp, ex.pp)
    per_stage = ex.dp * ex.tp
    hardware, tp_links, dp_links = [], [], []
    for stage in range(ex.pp):
        devices = ex.devices[stage * per_stage:(stage + 1) * per_stage]
        names = {}
        for d in devices:
            hw = cluster.hardware_of(d)
            names.setdefault(hw.name, hw)
        hardware.append(tuple(names.values()))
        tp_links.append(comm.slowest_link(groups.tp_groups[stage * ex.dp:(stage + 1) * ex.dp],
                                          cluster))
        dp_links.append(comm.slowest_link(groups.dp_groups[stage * ex.tp:(stage + 1) * ex.tp],
                                          cluster))
    pp_link = comm.slowest_link(groups.pp_groups, cluster) if ex.pp > 1 else None
    return Geometry(tuple(stage_layer_counts(num_layers, ex.pp)), tuple(hardware),
                    tuple(tp_links), tuple(dp_links), pp_link)


@dataclass(frozen=True)
class CostKnobs:
    """What a calibration changes inside one call's model: a factor on every compute time
    and, when set, the latency of every collective step and send (seconds)."""

    compute_scale: float = 1.0
    latency_s: float | None = None

    def link(self, link: comm.Link) -> comm.Link:
        if self.latency_s is None:
            return link
        return comm.Link(link.name, link.bandwidth_bytes_per_s, self.latency_s)


NEUTRAL_KNOBS = CostKnobs()


@dataclass(frozen=True)
class CallTime:
    """Seconds of one call, a breakdown by phase, and the compute source(s) used."""

    time_s: float
    phases_s: dict[str, float] = field(default_factory=dict)
    source: str = ""


class _StageTimer:
    """Stage times of one (role, execution) for one op over a micro-batch."""

    def __init__(self, role: ModelRole, execution: Execution, geo: Geometry, profiles_dir: Path,
                 knobs: CostKnobs = NEUTRAL_KNOBS, call_outputs: tuple[str, ...] = ()):
        self.role, self.ex, self.geo, self.knobs = role, execution, geo, knobs
        self.call_outputs = call_outputs
        self.head_part = "lm_head" if role.head == "lm" else "value_head"
        self.timers = [[part_timer(role.spec, hw, profiles_dir) for hw in hws]
                       for hws in geo.stage_hardware]
        self.sources: set[str] = set()

    def tp_allreduces_s(self, stage: int, count: float, message_bytes) -> np.ndarray:
        link = self.knobs.link(self.geo.tp_link[stage])
        return count * comm.allreduce_time_s(message_bytes, self.ex.tp, link)

    def stage_s(self, stage: int, op: str, b: int, length) -> np.ndarray:
        tp, spec = self.ex.tp, self.role.spec
        last = stage == self.ex.pp - 1
        worst = None
        for timer in self.timers[stage]:
            parts = [("block", self.geo.stage_layers[stage])]
            if stage == 0:
                parts.append(("embedding", 1))
            if last:
                parts.append((self.head_part, 1))
            total = 0.0
            for part, count in parts:
                self.sources.add(timer.source_for(op, part, tp))
                total = total + count * timer.time_s(op, part, tp, b, length)
            worst = total if worst is None else np.maximum(worst, total)
        tokens = b * (1 if op == "decode" else np.asarray(length, dtype=float))
        dtype = self.timers[stage][0].hardware.compute_dtype_bytes
        act_bytes = tokens * spec.hidden_size * dtype
        per_block = {"forward": 2, "prefill": 2, "decode": 2, "backward": 2}[op]
        count = per_block * self.geo.stage_layers[stage] + (1 if stage == 0 else 0)
        comm_s = self.tp_allreduces_s(stage, count, act_bytes)
        if last and self.role.head == "lm" and op != "backward":
            comm_s = comm_s + self.tp_allreduces_s(stage, 3, tokens * 4.0)
        return worst * self.knobs.compute_scale + comm_s

    def recompute_s(self, stage: int, b: int, length) -> np.ndarray:
        """The recomputed forward of a train step: the stage's blocks only."""
        layers = self.geo.stage_layers[stage]
        worst = max(layers * timer.time_s("forward", "block", self.ex.tp, b, length)
                    for timer in self.timers[stage])
        dtype = self.timers[stage][0].hardware.compute_dtype_bytes
        act_bytes = b * float(length) * self.role.spec.hidden_size * dtype
        count = eff.RECOMPUTED_TP_ALLREDUCES_PER_BLOCK * layers
        return worst * self.knobs.compute_scale + self.tp_allreduces_s(stage, count, act_bytes)

    def max_stage_s(self, op: str, b: int, length) -> np.ndarray:
        return np.max([self.stage_s(s, op, b, length) for s in range(self.ex.pp)], axis=0)

    def send_s(self, b: int, tokens_per_seq) -> np.ndarray:
        if self.geo.pp_link is None:
            return 0.0
        dtype = self.timers[0][0].hardware.compute_dtype_bytes
        message = b * np.asarray(tokens_per_seq, dtype=float) * self.role.spec.hidden_size * dtype
        return comm.p2p_time_s(message, self.knobs.link(self.geo.pp_link))


def _generate_s(st: _StageTimer, b: int, batch: BatchSpec) -> dict[str, float]:
    ex = st.ex
    prefill = (ex.pp + ex.micro_batches - 1) * (st.max_stage_s("prefill", b, batch.prompt_len)
                                                 + st.send_s(b, batch.prompt_len))
    contexts = batch.prompt_len + np.arange(1, batch.gen_len + 1, dtype=float)
    waves = -(-ex.micro_batches // ex.pp)
    rounds = waves * ex.pp * (st.max_stage_s("decode", b, contexts) + st.send_s(b, 1))
    phases = {"prefill": float(prefill), "decode": float(np.sum(rounds))}
    if "logprobs" in st.call_outputs:
        phases["logprobs"] = _inference_s(st, b, batch)["forward"]
    return phases


def _inference_s(st: _StageTimer, b: int, batch: BatchSpec) -> dict[str, float]:
    ex = st.ex
    step = st.max_stage_s("forward", b, batch.seq_len) + st.send_s(b, batch.seq_len)
    return {"forward": float((ex.pp + ex.micro_batches - 1) * step)}


def _train_s(st: _StageTimer, b: int, batch: BatchSpec, spec_elements: np.ndarray
             ) -> dict[str, float]:
    ex, s = st.ex, batch.seq_len
    stage_steps = []
    for stage in range(ex.pp):
        step = st.stage_s(stage, "forward", b, s) + st.stage_s(stage, "backward", b, s)
        if ex.recompute_activations:
            step = step + st.recompute_s(stage, b, s)
        stage_steps.append(step)
    pipeline = (ex.pp + ex.micro_batches - 1) * (max(stage_steps) + 2 * st.send_s(b, s))
    sync, optimizer = 0.0, 0.0
    for stage in range(ex.pp):
        dtype = st.timers[stage][0].hardware.compute_dtype_bytes
        local_bytes = float(spec_elements[stage].max()) * dtype
        link = st.knobs.link(st.geo.dp_link[stage])
        if ex.shard_optimizer_over_dp:
            stage_sync = comm.reduce_scatter_time_s(local_bytes, ex.dp, link) + \
                comm.allgather_time_s(local_bytes, ex.dp, link)
        else:
            stage_sync = comm.allreduce_time_s(local_bytes, ex.dp, link)
        shards = optimizer_shards(ex)
        sync = max(sync, stage_sync)
        stage_opt = 0.0
        for timer in st.timers[stage]:
            parts = [("block", st.geo.stage_layers[stage])]
            parts += [("embedding", 1)] if stage == 0 else []
            parts += [(st.head_part, 1)] if stage == ex.pp - 1 else []
            t = sum(n * float(timer.time_s("optimizer", p, ex.tp, 1, 1)) for p, n in parts)
            stage_opt = max(stage_opt, t * st.knobs.compute_scale / shards)
        optimizer = max(optimizer, stage_opt)
    k = batch.ppo_minibatches
    return {"forward_backward": float(k * pipeline), "dp_sync": k * sync,
            "optimizer": k * optimizer}


def call_time(call: ModelFunctionCall, role: ModelRole, execution: Execution,
              batch: BatchSpec, cluster: ClusterSpec,
              profiles_dir: Path = PROFILES_DIR, calibration=None) -> CallTime:
    """Seconds of `call` on `execution` (module docstring); `calibration` is a
    costmodel.calibration.Calibration or None (the uncalibrated model)."""
    if calibration is None or not calibration.applies_to(execution, cluster):
        return call_time_with_knobs(call, role, execution, batch, cluster, profiles_dir)
    knobs = calibration.knobs(call.kind, execution, cluster)
    base = call_time_with_knobs(call, role, execution, batch, cluster, profiles_dir, knobs)
    phases = {**base.phases_s, **calibration.overhead_phases_s(call, execution, batch,
                                                                       cluster)}
    return CallTime(time_s=sum(phases.values()), phases_s=phases,
                    source=f"{base.source}, {calibration.source}")


def call_time_with_knobs(call: ModelFunctionCall, role: ModelRole, execution: Execution,
                         batch: BatchSpec, cluster: ClusterSpec,
                         profiles_dir: Path = PROFILES_DIR,
                         knobs: CostKnobs = NEUTRAL_KNOBS) -> CallTime:
    """The model's phases of one call with explicit knobs (the calibration fit probes this)."""
    geo = geometry(execution, role.spec.num_layers, cluster)
    st = _StageTimer(role, execution, geo, profiles_dir, knobs, tuple(call.outputs))
    b = micro_batch_seqs(call, batch, execution)
    if call.kind == "generate":
        phases = _generate_s(st, b, batch)
    elif call.kind == "inference":
        phases = _inference_s(st, b, batch)
    else:
        elements = shard_elements(role.spec, role.head, execution.tp, execution.pp)
        phases = _train_s(st, b, batch, elements)
    return CallTime(time_s=sum(phases.values()), phases_s=phases,
                    source=", ".join(sorted(st.sources)))


def call_memory(call: ModelFunctionCall, role: ModelRole, execution: Execution,
                batch: BatchSpec, cluster: ClusterSpec) -> CallMemory:
    """Memory per device of `call` on `execution`, by part (costmodel/memory.py); the
    compute dtype and workspace of the mesh's first device."""
    hw = cluster.hardware_of(execution.devices[0])
    return CallMemory(call_memory_parts(call, role.spec, role.head, execution, batch,
                                        hw.compute_dtype_bytes, hw.kind))
