"""Time and memory of one model function call on one execution.

A call processes batch.n_seqs sequences (a train call: ppo_minibatches minibatches of
n_seqs / ppo_minibatches), split evenly over the dp replicas and then into micro-batches of
b = ceil(seqs / (dp x m)). The phases of each kind: costmodel/generate_cost.py (generate,
inference) and costmodel/train_cost.py (train), built on the stage times of
costmodel/stage_timer.py and the geometry of costmodel/call_geometry.py.

Calibration (costmodel/calibration.py, optional): `call_time(..., calibration=cal)` scales
every compute time of the call by cal's factor for the call kind (and by the core
oversubscription of its node), replaces the latency of every collective and send by the
measured one, and adds the fixed per-call and per-decode-step overheads as phases. Without
one, the knobs are neutral (CostKnobs()) and the estimate is the uncalibrated model, to
which a call on CUDA adds its host-side fixed costs (no calibration measures them there yet):
phase "overhead", the call's host synchronisations (efficiency.CALL_HOST_SYNCS, plus one
per optimizer step of a train call), and for generate "decode_steps", the Python of each
decode round outside the model (roofline.decode_step_host_s) times the rounds of
calibration.decode_steps. On CPU the calibration's measured overheads take their place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from costmodel import efficiency as eff
from costmodel.calibration import decode_steps
from costmodel.call_geometry import NEUTRAL_KNOBS, CostKnobs, geometry
from costmodel.generate_cost import generate_phases_s, inference_phases_s
from costmodel.memory import CallMemory, call_memory_parts, micro_batch_seqs
from costmodel.roofline import decode_step_host_s
from costmodel.stage_timer import StageTimer
from costmodel.train_cost import train_phases_s
from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import BatchSpec, ModelFunctionCall, ModelRole
from planner.sharding.param_shards import shard_elements


@dataclass(frozen=True)
class CallTime:
    """Seconds of one call, a breakdown by phase, and the compute source(s) used."""

    time_s: float
    phases_s: dict[str, float] = field(default_factory=dict)
    source: str = ""


def call_time(call: ModelFunctionCall, role: ModelRole, execution: Execution,
              batch: BatchSpec, cluster: ClusterSpec,
              profiles_dir: Path = PROFILES_DIR, calibration=None) -> CallTime:
    """Seconds of `call` on `execution` (module docstring); `calibration` is a
    costmodel.calibration.Calibration or None (the uncalibrated model)."""
    if calibration is None or not calibration.applies_to(execution, cluster):
        base = call_time_with_knobs(call, role, execution, batch, cluster, profiles_dir)
        phases = {**base.phases_s, **host_overhead_phases_s(call, execution, batch, cluster)}
        return CallTime(time_s=sum(phases.values()), phases_s=phases, source=base.source)
    knobs = calibration.knobs(call.kind, execution, cluster)
    base = call_time_with_knobs(call, role, execution, batch, cluster, profiles_dir, knobs)
    phases = {**base.phases_s, **calibration.overhead_phases_s(call, execution, batch,
                                                                       cluster)}
    return CallTime(time_s=sum(phases.values()), phases_s=phases,
                    source=f"{base.source}, {calibration.source}")


def host_overhead_phases_s(call: ModelFunctionCall, execution: Execution, batch: BatchSpec,
                           cluster: ClusterSpec) -> dict[str, float]:
    """Host-side fixed costs of an uncalibrated call on CUDA (module docstring); {} on CPU."""
    hw = cluster.hardware_of(execution.devices[0])
    if hw.kind != "cuda":
        return {}
    syncs = eff.CALL_HOST_SYNCS + (batch.ppo_minibatches if call.kind == "train" else 0)
    phases = {"overhead": syncs * eff.HOST_SYNC_S}
    steps = decode_steps(call, execution, batch)
    if steps:
        phases["decode_steps"] = steps * decode_step_host_s(hw)
    return phases


def call_time_with_knobs(call: ModelFunctionCall, role: ModelRole, execution: Execution,
                         batch: BatchSpec, cluster: ClusterSpec,
                         profiles_dir: Path = PROFILES_DIR,
                         knobs: CostKnobs = NEUTRAL_KNOBS) -> CallTime:
    """The model's phases of one call with explicit knobs (the calibration fit probes this)."""
    geo = geometry(execution, role.spec.num_layers, cluster)
    st = StageTimer(role, execution, geo, profiles_dir, knobs, tuple(call.outputs))
    b = micro_batch_seqs(call, batch, execution)
    if call.kind == "generate":
        phases = generate_phases_s(st, b, batch, sampled=not call.greedy)
    elif call.kind == "inference":
        phases = inference_phases_s(st, b, batch)
    else:
        elements = shard_elements(role.spec, role.head, execution.tp, execution.pp,
                                  execution.ep)
        phases = train_phases_s(st, b, batch, elements)
    return CallTime(time_s=sum(phases.values()), phases_s=phases,
                    source=", ".join(sorted(st.sources)))


def call_memory(call: ModelFunctionCall, role: ModelRole, execution: Execution,
                batch: BatchSpec, cluster: ClusterSpec) -> CallMemory:
    """Memory per device of `call` on `execution`, by part (costmodel/memory.py); the
    compute dtype and workspace of the mesh's first device."""
    hw = cluster.hardware_of(execution.devices[0])
    return CallMemory(call_memory_parts(call, role.spec, role.head, execution, batch,
                                        hw.compute_dtype_bytes, hw.kind))
