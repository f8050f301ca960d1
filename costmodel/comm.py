"""Communication costs: collectives as the runtime's library runs them, point-to-point sends,
and the link a group of devices uses.

A `Link` describes one group (or the slowest of several that run at once):
- cuda (NCCL): the group's `nccl_model.Fabric`, what NCCL's topology search finds: nodes,
  ranks per node, NVLink per GPU as NCCL counts it, and the NIC bandwidth the group's ranks
  on one node drive together. Each GPU sends through the NIC of its rail (rail-optimised
  affinity, planner.domain.cluster.nic_of_slot), so g ranks on a node with their own NICs
  drive g NICs at once, and ranks that share a NIC count it once. All-reduce, all-gather and
  reduce-scatter take the fastest of NCCL's algorithms and protocols (nccl_model: ring, tree,
  NVLS, NVLS-tree, PAT x LL, LL128, Simple, with NCCL 2.30.7's own latencies and bandwidth
  factors).
- cpu (gloo over TCP, one host): the ring of Thakur, Rabenseifner & Gropp (2005), with
  alpha = the link's latency per step and beta its bandwidth:
      all-reduce of B bytes        2 (n-1) alpha + 2 (n-1)/n B / bw
      all-gather / reduce-scatter  (n-1) alpha + (n-1)/n B / bw   (B = the full buffer)
All-to-all (a mixture-of-experts block's token dispatch and combine over its ep group):
all_to_all_time_s, NCCL's grouped sends over NVLink and the rails (nccl_model), gloo's
pairwise exchange.
Point to point (pipeline sends, reallocation, data transfers): alpha + B / bw, inside a node
over NVLink (NCCL's figure) or the host, across nodes through the NICs of the sender's and
the receiver's rails: each GPU's share of its NIC (planner.domain.cluster.NodeGroup), the
smaller of the two, and the cluster's inter-node latency.

`step_latency_s` (a calibration, costmodel.call_geometry.CostKnobs) replaces the latency of
every step: alpha of the ring and of a send, and every per-hop latency of NCCL's model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from costmodel import nccl_model
from costmodel.nccl_model import ALLGATHER, ALLREDUCE, REDUCE_SCATTER, Fabric
from planner.domain.cluster import ClusterSpec

US = 1e-6
GB = 1e9
# Oldest first: a group of mixed GPUs runs with the constants of its oldest (NCCL's
# minCompCap), and NCCL reads a node of mixed CPU vendors as AMD.
ARCHITECTURES = ("ampere", "hopper")


@dataclass(frozen=True)
class Link:
    """A group's link: a point-to-point send's bandwidth (bytes/s) and latency (s), and
    NCCL's fabric of the group (None: gloo's ring over the same bandwidth and latency)."""

    name: str
    bandwidth_bytes_per_s: float
    latency_s: float
    fabric: Fabric | None = None
    step_latency_s: float | None = None

    def with_step_latency(self, latency_s: float) -> Link:
        return replace(self, step_latency_s=latency_s)

    @property
    def alpha_s(self) -> float:
        """Latency of one send or gloo ring step."""
        return self.latency_s if self.step_latency_s is None else self.step_latency_s


def intra_node_link(cluster: ClusterSpec, node: int) -> Link:
    """A send between two devices of `node`: NVLink as NCCL counts it, or the host."""
    hw = cluster.node_hardware[node]
    bandwidth = hw.intra_node_bandwidth_gb_per_s
    if hw.kind == "cuda":
        bandwidth = nccl_model.nccl_nvlink_gb_per_s(bandwidth, hw.gpu_architecture)
    return Link(f"intra:{hw.name}", bandwidth * GB, hw.intra_node_latency_us * US)


def nic_share_bytes_per_s(cluster: ClusterSpec, device: int) -> float:
    """What `device` sends or receives across nodes when every GPU does: its rail's NIC,
    shared with the GPUs of the same rail."""
    return cluster.node_group_of_node[cluster.device_node[device]] \
        .nic_bandwidth_per_device_bytes_per_s


def p2p_link(cluster: ClusterSpec, src: int, dst: int) -> Link:
    """The link of one send from `src` to `dst` (module docstring)."""
    node = cluster.device_node
    if node[src] == node[dst]:
        return intra_node_link(cluster, node[src])
    bandwidth = min(nic_share_bytes_per_s(cluster, src), nic_share_bytes_per_s(cluster, dst))
    return Link("inter-node", bandwidth, cluster.inter_node_latency_us * US)


def _oldest_architecture(architectures: Iterable[str]) -> str:
    """The architecture NCCL tunes a mixed group for: its oldest (minCompCap)."""
    return min(architectures, key=ARCHITECTURES.index)


def _cpu_vendor(vendors: Iterable[str]) -> str:
    """The host CPU vendor NCCL assumes for a group: AMD when any of its nodes is."""
    return "amd" if "amd" in set(vendors) else "intel"


def _fabric(devices: list[int], cluster: ClusterSpec) -> Fabric:
    per_node = Counter(cluster.device_node[d] for d in devices)
    rails: dict[int, set[int]] = {}
    nics = cluster.device_nics
    for d in devices:
        node, nic = nics[d]
        rails.setdefault(node, set()).add(nic)
    hardware = [cluster.node_hardware[n] for n in per_node]
    architecture = _oldest_architecture(h.gpu_architecture for h in hardware)
    net = min(len(rails[n]) * cluster.node_group_of_node[n].nic_bandwidth_gb_per_s
              for n in per_node)
    nvlink = min(nccl_model.nccl_nvlink_gb_per_s(h.intra_node_bandwidth_gb_per_s,
                                                 h.gpu_architecture) for h in hardware)
    vendor = _cpu_vendor(h.host_cpu_vendor for h in hardware)
    return Fabric(nodes=len(per_node), ranks_per_node=max(per_node.values()),
                  nvlink_gb_per_s=nvlink, net_gb_per_s=net, architecture=architecture,
                  nvls=all(h.nvlink_sharp for h in hardware), cpu_vendor=vendor)


def group_link(devices: Iterable[int], cluster: ClusterSpec) -> Link:
    """The link of one group: its sends over the slowest pair of its devices, and on cuda
    NCCL's fabric of the group."""
    devices = list(devices)
    nodes = {cluster.device_node[d] for d in devices}
    if len(nodes) == 1:
        send = intra_node_link(cluster, nodes.pop())
    else:
        send = Link("inter-node", min(nic_share_bytes_per_s(cluster, d) for d in devices),
                    cluster.inter_node_latency_us * US)
    if cluster.hardware_of(devices[0]).kind != "cuda":
        return send
    return replace(send, fabric=_fabric(devices, cluster))


def _slowest_fabric(fabrics: list[Fabric]) -> Fabric:
    return Fabric(nodes=max(f.nodes for f in fabrics),
                  ranks_per_node=max(f.ranks_per_node for f in fabrics),
                  nvlink_gb_per_s=min(f.nvlink_gb_per_s for f in fabrics),
                  net_gb_per_s=min(f.net_gb_per_s for f in fabrics),
                  architecture=_oldest_architecture(f.architecture for f in fabrics),
                  nvls=all(f.nvls for f in fabrics),
                  cpu_vendor=_cpu_vendor(f.cpu_vendor for f in fabrics))


def slowest_link(groups: Iterable[Iterable[int]], cluster: ClusterSpec) -> Link:
    """A link no faster in any respect than any of several groups that run the same
    collective at once (they are equal when the groups have one shape)."""
    return slowest_of(list(dict.fromkeys(group_link(g, cluster) for g in groups)))


def slowest_of(links: list[Link]) -> Link:
    """slowest_link of groups whose distinct links are `links` (in the groups' order)."""
    if len(links) == 1:
        return links[0]
    fabrics = [link.fabric for link in links if link.fabric is not None]
    return Link(f"slowest of {len(links)}", min(link.bandwidth_bytes_per_s for link in links),
                max(link.latency_s for link in links),
                _slowest_fabric(fabrics) if fabrics else None)


def _same_shape(message_bytes, seconds):
    """A float for a scalar message, else the array (the stage timer passes arrays of
    lengths)."""
    return float(seconds) if np.ndim(message_bytes) == 0 else seconds


def _gloo_ring_s(steps: int, fraction: float, message_bytes, link: Link):
    return steps * link.alpha_s + fraction * np.asarray(message_bytes, dtype=float) \
        / link.bandwidth_bytes_per_s


def _collective_s(coll: str, message_bytes, n: int, link: Link):
    if n <= 1:
        seconds = 0.0 * np.asarray(message_bytes, dtype=float)
    elif link.fabric is None:
        steps = 2 * (n - 1) if coll == ALLREDUCE else n - 1
        seconds = _gloo_ring_s(steps, steps / n, message_bytes, link)
    else:
        seconds = nccl_model.collective_time_s(coll, message_bytes, n, link.fabric,
                                               link.step_latency_s)
    return _same_shape(message_bytes, seconds)


def allreduce_time_s(message_bytes, num_devices: int, link: Link):
    """All-reduce of `message_bytes` over `num_devices` ranks (module docstring)."""
    return _collective_s(ALLREDUCE, message_bytes, num_devices, link)


def allgather_time_s(total_bytes, num_devices: int, link: Link):
    """All-gather of `total_bytes` of output over `num_devices` ranks."""
    return _collective_s(ALLGATHER, total_bytes, num_devices, link)


def reduce_scatter_time_s(total_bytes, num_devices: int, link: Link):
    """Reduce-scatter of `total_bytes` of input over `num_devices` ranks."""
    return _collective_s(REDUCE_SCATTER, total_bytes, num_devices, link)


def zero1_gradient_reduce_time_s(total_bytes, num_devices: int, link: Link):
    """The ZeRO-1 gradient reduction of `total_bytes` as the runtime runs it
    (runtime/grad_buckets.py uses_reduce_scatter): a reduce-scatter on NCCL, an all-reduce on
    gloo, whose reduce_scatter is slower than its all-reduce."""
    if link.fabric is None:
        return allreduce_time_s(total_bytes, num_devices, link)
    return reduce_scatter_time_s(total_bytes, num_devices, link)


def all_to_all_time_s(buffer_bytes, num_devices: int, link: Link):
    """An all-to-all over `num_devices` ranks of `buffer_bytes` per rank (its whole send
    buffer): NCCL's grouped sends (nccl_model.alltoall_time_s); on gloo the pairwise
    exchange, (n-1) alpha + (n-1)/n B / bw."""
    if num_devices <= 1:
        seconds = 0.0 * np.asarray(buffer_bytes, dtype=float)
    elif link.fabric is None:
        steps = num_devices - 1
        seconds = _gloo_ring_s(steps, steps / num_devices, buffer_bytes, link)
    else:
        seconds = nccl_model.alltoall_time_s(buffer_bytes, num_devices, link.fabric,
                                             link.step_latency_s)
    return _same_shape(buffer_bytes, seconds)


def p2p_time_s(message_bytes, link: Link):
    """One point-to-point message."""
    return _same_shape(message_bytes, link.alpha_s + np.asarray(message_bytes, dtype=float)
                       / link.bandwidth_bytes_per_s)
