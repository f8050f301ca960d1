"""Reallocation and data-transfer time, priced from the shared transfer schedules.

A schedule (planner.sharding.transfer_schedule) runs its steps one after another. Within a step
every device sends at most one message and receives at most one, so the step lasts as long
as its slowest message: alpha + bytes / bw of the message's link (comm.p2p_link: NVLink
or the host when sender and receiver share a node; across nodes the NICs of the sender's
and the receiver's rails, each device's share of its NIC, so concurrent messages of devices
on different rails do not contend and those sharing a NIC split it). Local copies (sender
= receiver) read and write HBM once: the device with the most local bytes sets their time,
before the first step. Equal executions give the empty schedule and zero time.

Receive buffer of a device: the bytes it receives in its largest step (the staging buffer
the runtime needs before writing into the destination shards).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from costmodel import comm
from costmodel import efficiency as eff
from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.sharding.transfer_schedule import Schedule, data_schedule, param_schedule


@dataclass(frozen=True)
class ScheduleCost:
    """Time of a schedule, the bytes it puts on each link kind, and receive buffers."""

    time_s: float
    intra_node_bytes: float = 0.0
    inter_node_bytes: float = 0.0
    num_steps: int = 0
    receive_buffer_bytes: dict[int, float] = field(default_factory=dict)


ZERO_COST = ScheduleCost(time_s=0.0)


def local_copy_time_s(schedule: Schedule, bytes_per_element: float,
                      cluster: ClusterSpec) -> float:
    """Read + write of every local piece, at HBM bandwidth x efficiency, busiest device."""
    per_device: dict[int, float] = defaultdict(float)
    for piece in schedule.local:
        per_device[piece.dst] += piece.num_elements * bytes_per_element
    worst = 0.0
    for device, moved in per_device.items():
        hw = cluster.hardware_of(device)
        bandwidth = hw.memory_bandwidth_bytes_per_s * eff.MEMORY_BANDWIDTH_EFFICIENCY
        worst = max(worst, 2.0 * moved / bandwidth)
    return worst


def schedule_cost(schedule: Schedule, bytes_per_element: float,
                  cluster: ClusterSpec) -> ScheduleCost:
    """Price a schedule (module docstring)."""
    if schedule.is_empty:
        return ZERO_COST
    total = local_copy_time_s(schedule, bytes_per_element, cluster)
    intra = inter = 0.0
    buffers: dict[int, float] = defaultdict(float)
    node = cluster.device_node
    for step in schedule.steps:
        messages: dict[tuple[int, int], float] = defaultdict(float)
        for piece in step:
            messages[(piece.src, piece.dst)] += piece.num_elements * bytes_per_element
        slowest = 0.0
        for (src, dst), size in messages.items():
            same = node[src] == node[dst]
            slowest = max(slowest, comm.p2p_time_s(size, comm.p2p_link(cluster, src, dst)))
            if same:
                intra += size
            else:
                inter += size
            buffers[dst] = max(buffers[dst], size)
        total += slowest
    return ScheduleCost(total, intra, inter, len(schedule.steps), dict(buffers))


def realloc_cost(spec: ModelSpec, head: HeadKind, src: Execution, dst: Execution,
                 cluster: ClusterSpec) -> ScheduleCost:
    """Moving the parameters of (spec, head) from `src` to `dst`, in the compute dtype."""
    if src == dst:
        return ZERO_COST
    schedule = param_schedule(spec, head, src.placement, dst.placement,
                              cluster.device_node)
    dtype = cluster.hardware_of(dst.devices[0]).compute_dtype_bytes
    return schedule_cost(schedule, dtype, cluster)


def transfer_cost(src: Execution, dst: Execution, n_seqs: int, bytes_per_sequence: float,
                  cluster: ClusterSpec) -> ScheduleCost:
    """Moving `n_seqs` sequences of `bytes_per_sequence` (planner.domain.data_keys) between two
    executions."""
    if src == dst:
        return ZERO_COST
    schedule = data_schedule(src.placement, dst.placement, n_seqs, cluster.device_node)
    return schedule_cost(schedule, bytes_per_sequence, cluster)
