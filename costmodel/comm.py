"""Communication costs (alpha-beta model) and the link a group of devices uses.

Link: when every device of a group sits on one node, the intra-node link of that node's
hardware (NVLink); otherwise the cluster's inter-node link (one NIC per device, so rings
across nodes run at NIC speed). Latency alpha per message step, bandwidth beta per device
and direction.

Ring collectives over n devices (Thakur, Rabenseifner & Gropp 2005; NCCL docs):
    all-reduce of B bytes        2 (n-1) alpha + 2 (n-1)/n B / bw
    all-gather / reduce-scatter  (n-1) alpha + (n-1)/n B / bw   (B = the full output)
    point to point               alpha + B / bw
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from planner.domain.cluster import ClusterSpec

US = 1e-6
GB = 1e9


@dataclass(frozen=True)
class Link:
    """A link's bandwidth (bytes/s per device and direction) and latency (s)."""

    name: str
    bandwidth_bytes_per_s: float
    latency_s: float


def intra_node_link(cluster: ClusterSpec, node: int) -> Link:
    hw = cluster.node_hardware[node]
    return Link(f"intra:{hw.name}", hw.intra_node_bandwidth_gb_per_s * GB,
                hw.intra_node_latency_us * US)


def inter_node_link(cluster: ClusterSpec) -> Link:
    return Link("inter-node", cluster.inter_node_bandwidth_gb_per_s * GB,
                cluster.inter_node_latency_us * US)


def group_link(devices: Iterable[int], cluster: ClusterSpec) -> Link:
    """Intra-node link when the devices share one node, else the inter-node link."""
    nodes = {cluster.device_node[d] for d in devices}
    if len(nodes) == 1:
        return intra_node_link(cluster, nodes.pop())
    return inter_node_link(cluster)


def slowest_link(groups: Iterable[Iterable[int]], cluster: ClusterSpec) -> Link:
    """The slowest link over several groups that run the same collective at once."""
    links = {group_link(g, cluster) for g in groups}
    return min(links, key=lambda link: (link.bandwidth_bytes_per_s, -link.latency_s))


def allreduce_time_s(message_bytes: float, num_devices: int, link: Link) -> float:
    """Ring all-reduce: 2(n-1) latency steps and 2(n-1)/n of the bytes over each link."""
    n = num_devices
    if n <= 1:
        return 0.0
    return 2 * (n - 1) * link.latency_s + 2 * (n - 1) / n * message_bytes / link.bandwidth_bytes_per_s


def allgather_time_s(total_bytes: float, num_devices: int, link: Link) -> float:
    """Ring all-gather of `total_bytes` of output: (n-1) steps, (n-1)/n of the bytes."""
    n = num_devices
    if n <= 1:
        return 0.0
    return (n - 1) * link.latency_s + (n - 1) / n * total_bytes / link.bandwidth_bytes_per_s


def reduce_scatter_time_s(total_bytes: float, num_devices: int, link: Link) -> float:
    """Ring reduce-scatter of `total_bytes` of input: same cost as the all-gather."""
    return allgather_time_s(total_bytes, num_devices, link)


def p2p_time_s(message_bytes: float, link: Link) -> float:
    """One point-to-point message."""
    return link.latency_s + message_bytes / link.bandwidth_bytes_per_s
