"""Reallocation and data-transfer time, priced from the shared transfer schedules.

A schedule (planner.sharding.transfer_schedule) runs its steps one after another. Within a step
every device sends at most one message and receives at most one, so the step lasts as long
as its slowest message: alpha + bytes / bw of the message's link (comm.p2p_link: NVLink
or the host when sender and receiver share a node; across nodes the NICs of the sender's
and the receiver's rails, each device's share of its NIC, so concurrent messages of devices
on different rails do not contend and those sharing a NIC split it). Local copies (sender
= receiver) read and write HBM once: the device with the most local bytes sets their time,
before the first step. Equal executions give the empty schedule and zero time.

Message buffers of a device: the bytes it sends plus the bytes it receives in its largest
step (runtime/executor/realloc.py packs a step's outgoing pieces into one buffer and stages
its incoming message in another before writing it into the destination shards; both are
alive until the step's messages are done). Its receive buffer alone: the bytes it receives
in its largest step (what a push of staleness >= 2 stages; its sends were packed after
training, costmodel/plan_memory.py).

Sources and destinations under FSDP / ZeRO-3 (Execution.shard_parameters_over_dp, imported
framework configs only; the search's plans never have it, so their moves price as above):
- out of a sharded source the move is the frameworks' weight sync, tensor by tensor
  (costmodel/fsdp_cost.py): gather_t + broadcast_t (when a destination lies outside the
  source mesh) + slice copy_t + host latency, summed over the model's tensors; its buffers
  are the largest gathered tensor on every source device and the largest full tensor on each
  destination outside the source. A source with tp > 1 gathers each tp shard over its dp
  group, and the gathered (replicated) layout then moves by the schedule above.
- into a sharded destination from an unsharded source nothing moves: the FSDP / DeepSpeed
  engine keeps its own shards between calls and the frameworks never write the inference
  engine's weights back (verl's hybrid engine puts vLLM to sleep after rollout,
  verl/workers/sharding_manager/fsdp_vllm.py __exit__; OpenRLHF's vLLM engines are
  separate processes that only receive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from costmodel import comm, fsdp_cost
from costmodel import efficiency as eff
from costmodel.call_geometry import geometry
from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.domain.placement import Placement
from planner.sharding.transfer_schedule import Schedule, data_schedule, param_schedule


@dataclass(frozen=True)
class ScheduleCost:
    """Time of a schedule, the bytes it puts on each link kind, and each device's message
    buffers and receive buffer (module docstring)."""

    time_s: float
    intra_node_bytes: float = 0.0
    inter_node_bytes: float = 0.0
    num_steps: int = 0
    message_buffer_bytes: dict[int, float] = field(default_factory=dict)
    receive_buffer_bytes: dict[int, float] = field(default_factory=dict)


ZERO_COST = ScheduleCost(time_s=0.0)
# Priced parameter schedules kept (placement_move_cost); each holds one receive buffer per
# receiving device, a few kB to some tens of kB on 1,024 devices.
PLACEMENT_MOVES_KEPT = 1024


def local_copy_time_s(schedule: Schedule, bytes_per_element: float,
                      cluster: ClusterSpec) -> float:
    """Read + write of every local piece, at HBM bandwidth x efficiency, busiest device."""
    local = schedule.piece_step < 0
    if not local.any():
        return 0.0
    devices, per_device = np.unique(schedule.piece_dst[local], return_inverse=True)
    moved = np.bincount(per_device, weights=schedule.piece_elements[local]) * bytes_per_element
    bandwidth = np.array([cluster.hardware_of(int(d)).memory_bandwidth_bytes_per_s
                          for d in devices]) * eff.MEMORY_BANDWIDTH_EFFICIENCY
    return float(np.max(2.0 * moved / bandwidth))


def _message_times_s(schedule: Schedule, message_bytes: np.ndarray,
                     cluster: ClusterSpec) -> tuple[np.ndarray, np.ndarray]:
    """(time of each message on its link, whether it stays on one node). comm.p2p_link
    depends only on the nodes of the two ends, so it is asked once per pair of nodes."""
    node = np.asarray(cluster.device_node, dtype=np.int64)
    src_node, dst_node = node[schedule.message_src], node[schedule.message_dst]
    _, first_message, pair_of = np.unique(src_node * len(node) + dst_node, return_index=True,
                                          return_inverse=True)
    links = [comm.p2p_link(cluster, int(schedule.message_src[i]), int(schedule.message_dst[i]))
             for i in first_message]
    alpha_s = np.array([link.alpha_s for link in links])[pair_of]
    bandwidth = np.array([link.bandwidth_bytes_per_s for link in links])[pair_of]
    return alpha_s + message_bytes / bandwidth, src_node == dst_node


def schedule_cost(schedule: Schedule, bytes_per_element: float,
                  cluster: ClusterSpec) -> ScheduleCost:
    """Price a schedule (module docstring)."""
    if schedule.is_empty:
        return ZERO_COST
    total = local_copy_time_s(schedule, bytes_per_element, cluster)
    if schedule.num_steps == 0:
        return ScheduleCost(total)
    message_bytes = schedule.message_elements * bytes_per_element
    time_s, same_node = _message_times_s(schedule, message_bytes, cluster)
    slowest_s = np.zeros(schedule.num_steps)
    np.maximum.at(slowest_s, schedule.message_step, time_s)
    step = schedule.message_step
    return ScheduleCost(total + float(np.sum(slowest_s)),
                        float(np.sum(message_bytes[same_node])),
                        float(np.sum(message_bytes[~same_node])), schedule.num_steps,
                        _largest_per_device(np.concatenate([step, step]),
                                            np.concatenate([schedule.message_src,
                                                            schedule.message_dst]),
                                            np.concatenate([message_bytes, message_bytes])),
                        _largest_per_device(step, schedule.message_dst, message_bytes))


def _largest_per_device(step: np.ndarray, device: np.ndarray, size: np.ndarray
                        ) -> dict[int, float]:
    """Per device, the largest over steps of the sizes it has in one step (summed)."""
    span = int(device.max()) + 1
    keys, per_key = np.unique(step * span + device, return_inverse=True)
    in_step = np.bincount(per_key, weights=size)
    devices, per_device = np.unique(keys % span, return_inverse=True)
    largest = np.zeros(len(devices))
    np.maximum.at(largest, per_device, in_step)
    return {int(d): float(v) for d, v in zip(devices, largest)}


def realloc_cost(spec: ModelSpec, head: HeadKind, src: Execution, dst: Execution,
                 cluster: ClusterSpec) -> ScheduleCost:
    """Moving the parameters of (spec, head) from `src` to `dst`, in the compute dtype."""
    if src == dst:
        return ZERO_COST
    if src.shard_parameters_over_dp:
        return sharded_source_sync_cost(spec, head, src, dst, cluster)
    if dst.shard_parameters_over_dp:
        return ZERO_COST
    return placement_move_cost(spec, head, src.placement, dst.placement, cluster)


@lru_cache(maxsize=PLACEMENT_MOVES_KEPT)
def placement_move_cost(spec: ModelSpec, head: HeadKind, src: Placement, dst: Placement,
                        cluster: ClusterSpec) -> ScheduleCost:
    """The priced parameter schedule between two placements, in the destination's compute
    dtype. It depends on nothing else of the executions (micro-batches, recomputation), so
    the candidates of a search that share placements share it (memoised: a 70B model's
    schedule on 1,024 devices takes seconds to build)."""
    schedule = param_schedule(spec, head, src, dst, cluster.device_node)
    dtype = cluster.hardware_of(dst.devices[0]).compute_dtype_bytes
    return schedule_cost(schedule, dtype, cluster)


def sharded_source_sync_cost(spec: ModelSpec, head: HeadKind, src: Execution, dst: Execution,
                             cluster: ClusterSpec) -> ScheduleCost:
    """The weight sync out of an FSDP / ZeRO-3 source (module docstring,
    costmodel/fsdp_cost.py): per tensor, the gather over the source's dp group, then each
    destination's slice from its own gathered copy or, outside the source mesh, from a
    broadcast of the full tensor by the source's first rank."""
    dtype = cluster.hardware_of(dst.devices[0]).compute_dtype_bytes
    tensors = fsdp_cost.tensor_sync(spec, head, src.tp, dst.tp)
    link = geometry(src, spec.num_layers, cluster).dp_link[0]
    gathered = tensors.source_elements * fsdp_cost.SYNC_PARAMETER_BYTES
    gather_s = np.asarray(comm.allgather_time_s(gathered, src.dp, link), dtype=float)
    node = cluster.device_node
    one_node = len({node[d] for d in src.devices}) == 1
    gather_link_bytes = float(np.sum(gathered)) * (src.dp - 1) * src.tp
    intra, inter = (gather_link_bytes, 0.0) if one_node else (0.0, gather_link_bytes)
    buffers = {d: float(np.max(gathered)) for d in src.devices}
    if src.tp > 1:
        moved = schedule_cost(param_schedule(spec, head, src.placement, dst.placement,
                                             node), dtype, cluster)
        host_s = len(gathered) * fsdp_cost.sync_host_latency_s(broadcasts=False)
        for d, size in moved.message_buffer_bytes.items():
            buffers[d] = max(buffers.get(d, 0.0), size)
        return ScheduleCost(float(np.sum(gather_s)) + host_s + moved.time_s,
                            intra + moved.intra_node_bytes, inter + moved.inter_node_bytes,
                            len(gathered) + moved.num_steps, buffers)
    outside = [d for d in dst.devices if d not in set(src.devices)]
    per_tensor_s = gather_s + fsdp_cost.slice_copy_time_s(tensors.destination_elements, dtype,
                                                          dst.devices, cluster)
    if outside:
        full = tensors.full_elements * fsdp_cost.SYNC_PARAMETER_BYTES
        group = [src.devices[0]] + outside
        per_tensor_s = per_tensor_s + fsdp_cost.broadcast_time_s(
            full, len(group), comm.group_link(group, cluster))
        for d in outside:
            buffers[d] = float(np.max(full))
            if node[d] == node[src.devices[0]]:
                intra += float(np.sum(full))
            else:
                inter += float(np.sum(full))
    host_s = len(gathered) * fsdp_cost.sync_host_latency_s(broadcasts=bool(outside))
    return ScheduleCost(float(np.sum(per_tensor_s)) + host_s, intra, inter, len(gathered),
                        buffers)


def transfer_cost(src: Execution, dst: Execution, n_seqs: int, bytes_per_sequence: float,
                  cluster: ClusterSpec) -> ScheduleCost:
    """Moving `n_seqs` sequences of `bytes_per_sequence` (planner.domain.data_keys) between two
    executions."""
    if src == dst:
        return ZERO_COST
    schedule = data_schedule(src.placement, dst.placement, n_seqs, cluster.device_node)
    return schedule_cost(schedule, bytes_per_sequence, cluster)
