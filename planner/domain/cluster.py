"""Cluster specs: node groups of devices, and the links inside and across nodes.

Devices are numbered node-major: node 0 holds devices 0 .. d0-1, node 1 the next, and so on.
Node groups of different hardware are allowed (heterogeneous clusters); nodes are numbered
across groups in the order the groups are listed.

A cluster file accepts either the short form
    nodes: 2
    devices_per_node: 8
    device: h100-sxm-80gb
or a list of node groups
    node_groups: [{nodes: 1, devices_per_node: 8, device: h100-sxm-80gb},
                  {nodes: 2, devices_per_node: 8, device: a100-sxm-80gb}]
plus optional network overrides: `nics_per_node` and `nic_bandwidth_gb_per_s` (GB/s per NIC
and direction) beside `devices_per_node` (at the top in the short form, in each node group
otherwise), and `inter_node_latency_us` at the top. They default from the hardware spec (the
node network of its DGX/HGX board; the largest latency over the groups). GPU slot i of a node
uses NIC i * nics_per_node // devices_per_node (rail-optimised, `nic_of_slot`).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.domain.device_reserve import reserve_bytes
from planner.domain.errors import InputError, validated
from planner.domain.hardware import (
    GB,
    GIB,
    MAX_BANDWIDTH_GB_PER_S,
    MAX_DEVICE_MEMORY_GIB,
    MAX_LATENCY_US,
    MAX_NICS_PER_NODE,
    HardwareSpec,
    hardware_by_name,
)
from planner.domain.yamlio import load_yaml_mapping, resolve_preset_or_file

# Size limits of a cluster. The largest training clusters today have of the order of
# 100,000 accelerators on some 12,500 nodes, so these leave a wide margin for real clusters
# while a stray digit (nodes: 10000000) is refused instead of building tables for millions
# of nodes.
MAX_NODES = 65_536
# GPU nodes hold 8 devices (72 when an NVL72 rack is one node); a CPU node runs one process
# per core, a few hundred at most.
MAX_DEVICES_PER_NODE = 1_024
# Every node group together: the planner keeps per-device tuples and tables.
MAX_DEVICES = 1_048_576


def cluster_size_problem(groups: list[tuple[int, int]]) -> str | None:
    """Why (nodes, devices_per_node) groups exceed MAX_NODES or MAX_DEVICES together, or
    None."""
    nodes = sum(n for n, _ in groups)
    devices = sum(n * d for n, d in groups)
    if nodes > MAX_NODES:
        return f"{nodes:,} nodes in all; a cluster may have at most {MAX_NODES:,}"
    if devices > MAX_DEVICES:
        return f"{devices:,} devices in all; a cluster may have at most {MAX_DEVICES:,}"
    return None


def headroom_problem(headroom_gib: float, hardware: list[HardwareSpec]) -> str | None:
    """Why keeping `headroom_gib` free on devices of `hardware` is negative or leaves one no
    memory beside its reserve (planner.domain.device_reserve); None when it is fine (no
    headroom always is: a device whose reserve fills it just fits no plan)."""
    def usable(h: HardwareSpec) -> float:
        return h.memory_bytes - reserve_bytes(h.kind, h.memory_bytes)
    smallest = min(hardware, key=usable)
    usable_gib = round(usable(smallest) / GIB, 2)
    if headroom_gib < 0 or (headroom_gib > 0 and headroom_gib >= usable_gib):
        return (f"got {headroom_gib} GiB; give at least 0 and less than the smallest device "
                f"memory less its reserve, {usable_gib} GiB ({smallest.memory_gib:g} GiB "
                f"less {reserve_bytes(smallest.kind, smallest.memory_bytes) / GIB:.2f} GiB)")
    return None


def nic_of_slot(slot: int, devices_per_node: int, nics_per_node: int) -> int:
    """The NIC GPU `slot` of a node uses: rail-optimised affinity, as DGX/HGX nodes are
    cabled (DGX H100 / DGX A100 user guides: one compute NIC beside each GPU) and as NCCL's
    topology search pairs them (nearest NIC on the PCIe switch)."""
    return slot * nics_per_node // devices_per_node


class NodeGroup(BaseModel):
    """`nodes` identical nodes with `devices_per_node` devices of one hardware spec and
    `nics_per_node` compute NICs of `nic_bandwidth_gb_per_s` each (per direction)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    nodes: int = Field(ge=1, le=MAX_NODES)
    devices_per_node: int = Field(ge=1, le=MAX_DEVICES_PER_NODE)
    hardware: HardwareSpec
    nics_per_node: int = Field(ge=1, le=MAX_NICS_PER_NODE)
    nic_bandwidth_gb_per_s: float = Field(gt=0, le=MAX_BANDWIDTH_GB_PER_S)

    @property
    def nic_bandwidth_per_device_bytes_per_s(self) -> float:
        """A GPU's share of its NIC when all GPUs send at once: the whole NIC when there is
        one per GPU (or more; a GPU drives the one of its rail), 1/k of it when k GPUs share
        one."""
        return self.nic_bandwidth_gb_per_s * GB * min(1.0, self.nics_per_node
                                                      / self.devices_per_node)


class ClusterSpec(BaseModel):
    """A resolved cluster: what plans store and what the cost model reads."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    node_groups: tuple[NodeGroup, ...] = Field(min_length=1)
    inter_node_latency_us: float = Field(ge=0, le=MAX_LATENCY_US)
    memory_headroom_gib: float = Field(default=0.0, ge=0, description=(
        "memory kept free on every device (allocator fragmentation, other processes): plans "
        "must fit in the device's memory minus this"))

    @model_validator(mode="after")
    def _check_size_and_headroom(self) -> "ClusterSpec":
        problem = cluster_size_problem([(g.nodes, g.devices_per_node) for g in self.node_groups])
        if problem:
            raise ValueError(f"node_groups: {problem}")
        problem = headroom_problem(self.memory_headroom_gib,
                                   [g.hardware for g in self.node_groups])
        if problem:
            raise ValueError(f"memory_headroom_gib: {problem}")
        return self

    def reserve_bytes(self, device: int) -> float:
        """What the CUDA context, NCCL buffers and the allocator take on `device` before a
        plan's first tensor (planner.domain.device_reserve)."""
        hw = self.hardware_of(device)
        return reserve_bytes(hw.kind, hw.memory_bytes)

    def usable_memory_bytes(self, device: int) -> float:
        """What a plan may use on `device`: its memory less the reserve and the headroom."""
        return self.hardware_of(device).memory_bytes - self.reserve_bytes(device) \
            - self.memory_headroom_gib * GIB

    @cached_property
    def node_devices_per_node(self) -> tuple[int, ...]:
        """Devices on each node, in node order."""
        return tuple(g.devices_per_node for g in self.node_groups for _ in range(g.nodes))

    @cached_property
    def node_first_device(self) -> tuple[int, ...]:
        firsts, total = [], 0
        for count in self.node_devices_per_node:
            firsts.append(total)
            total += count
        return tuple(firsts)

    @cached_property
    def device_node(self) -> tuple[int, ...]:
        """Node index of each device."""
        return tuple(n for n, c in enumerate(self.node_devices_per_node) for _ in range(c))

    @cached_property
    def node_hardware(self) -> tuple[HardwareSpec, ...]:
        return tuple(g.hardware for g in self.node_groups for _ in range(g.nodes))

    @cached_property
    def node_group_of_node(self) -> tuple[NodeGroup, ...]:
        """The node group of each node, in node order."""
        return tuple(g for g in self.node_groups for _ in range(g.nodes))

    @cached_property
    def node_group_index_of_node(self) -> tuple[int, ...]:
        """The index in node_groups of each node's group, in node order."""
        return tuple(i for i, g in enumerate(self.node_groups) for _ in range(g.nodes))

    @cached_property
    def device_nics(self) -> tuple[tuple[int, int], ...]:
        """nic_of of every device, in device order (a look-up where mesh shapes and NCCL
        fabrics read millions of them at 1,024 devices)."""
        nics = []
        for device, node in enumerate(self.device_node):
            group = self.node_group_of_node[node]
            nics.append((node, nic_of_slot(self.slot_of(device), group.devices_per_node,
                                           group.nics_per_node)))
        return tuple(nics)

    def nic_of(self, device: int) -> tuple[int, int]:
        """(node, NIC index on that node) of the NIC `device` sends through (nic_of_slot)."""
        return self.device_nics[device]

    @property
    def num_nodes(self) -> int:
        return len(self.node_devices_per_node)

    @property
    def num_devices(self) -> int:
        return sum(self.node_devices_per_node)

    def slot_of(self, device: int) -> int:
        return device - self.node_first_device[self.device_node[device]]

    def hardware_of(self, device: int) -> HardwareSpec:
        return self.node_hardware[self.device_node[device]]

    def device_id(self, node: int, slot: int) -> int:
        return self.node_first_device[node] + slot

    def describe(self) -> str:
        parts = [f"{g.nodes}x{g.devices_per_node} {g.hardware.name}" for g in self.node_groups]
        return f"{self.name} ({' + '.join(parts)}, {self.num_devices} devices)"


class NodeGroupFile(BaseModel):
    """A node group as a user writes it: hardware by name, the node network optional
    (defaults from the hardware spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    nodes: int = Field(ge=1, le=MAX_NODES)
    devices_per_node: int = Field(ge=1, le=MAX_DEVICES_PER_NODE)
    device: str
    nics_per_node: Optional[int] = Field(default=None, ge=1, le=MAX_NICS_PER_NODE)
    nic_bandwidth_gb_per_s: Optional[float] = Field(default=None, gt=0,
                                                    le=MAX_BANDWIDTH_GB_PER_S,
                                                    description="per NIC and direction")


class ClusterFile(BaseModel):
    """The cluster YAML a user writes (short form or node groups)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Optional[str] = Field(default=None, description="defaults to the file's stem")
    nodes: Optional[int] = Field(default=None, ge=1, le=MAX_NODES)
    devices_per_node: Optional[int] = Field(default=None, ge=1, le=MAX_DEVICES_PER_NODE)
    device: Optional[str] = None
    node_groups: Optional[list[NodeGroupFile]] = None
    nics_per_node: Optional[int] = Field(default=None, ge=1, le=MAX_NICS_PER_NODE)
    nic_bandwidth_gb_per_s: Optional[float] = Field(default=None, gt=0,
                                                    le=MAX_BANDWIDTH_GB_PER_S,
                                                    description="per NIC and direction")
    inter_node_latency_us: Optional[float] = Field(default=None, ge=0, le=MAX_LATENCY_US)
    inter_node_bandwidth_gb_per_s: Any = Field(default=None, description=(
        "no longer read (one link per cluster); refused with the fields that replace it"))
    memory_headroom_gib: float = Field(default=0.0, ge=0, le=MAX_DEVICE_MEMORY_GIB,
                                       description="checked against the devices' memory "
                                                   "once they are known (with_memory_headroom)")

    @model_validator(mode="after")
    def _one_form(self) -> "ClusterFile":
        if self.inter_node_bandwidth_gb_per_s is not None:
            raise ValueError("inter_node_bandwidth_gb_per_s is no longer read: give "
                             "nics_per_node and nic_bandwidth_gb_per_s (GB/s per NIC and "
                             "direction) instead; GPU slot i uses NIC "
                             "i * nics_per_node // devices_per_node")
        short = [self.nodes, self.devices_per_node, self.device]
        if self.node_groups is not None:
            if any(v is not None for v in short):
                raise ValueError("give either nodes/devices_per_node/device or node_groups, "
                                 "not both")
            network = [k for k in ("nics_per_node", "nic_bandwidth_gb_per_s")
                       if getattr(self, k) is not None]
            if network:
                raise ValueError(f"{network[0]}: with node_groups, give it inside each "
                                 f"node group")
            if not self.node_groups:
                raise ValueError("node_groups is empty; list at least one group")
        elif any(v is None for v in short):
            raise ValueError("give nodes, devices_per_node and device (or node_groups)")
        return self

    @model_validator(mode="after")
    def _within_size_limits(self) -> "ClusterFile":
        """Runs after _one_form (pydantic keeps their order), so groups() is defined."""
        problem = cluster_size_problem([(g.nodes, g.devices_per_node) for g in self.groups()])
        if problem:
            form = "node_groups" if self.node_groups is not None else "nodes x devices_per_node"
            raise ValueError(f"{form}: {problem}")
        return self

    def groups(self) -> list[NodeGroupFile]:
        if self.node_groups is not None:
            return list(self.node_groups)
        return [NodeGroupFile(nodes=self.nodes, devices_per_node=self.devices_per_node,
                              device=self.device, nics_per_node=self.nics_per_node,
                              nic_bandwidth_gb_per_s=self.nic_bandwidth_gb_per_s)]


def _resolved_group(group: NodeGroupFile) -> NodeGroup:
    hw = hardware_by_name(group.device)
    nics = group.nics_per_node if group.nics_per_node is not None else hw.nics_per_node
    bandwidth = group.nic_bandwidth_gb_per_s if group.nic_bandwidth_gb_per_s is not None \
        else hw.nic_bandwidth_gb_per_s
    return NodeGroup(nodes=group.nodes, devices_per_node=group.devices_per_node, hardware=hw,
                     nics_per_node=nics, nic_bandwidth_gb_per_s=bandwidth)


def build_cluster(name: str, groups: list[NodeGroupFile],
                  inter_node_latency_us: float | None = None) -> ClusterSpec:
    """Resolve hardware names and default the network; ValueError on unknown devices."""
    resolved = [_resolved_group(g) for g in groups]
    latency = inter_node_latency_us if inter_node_latency_us is not None \
        else max(g.hardware.inter_node_latency_us for g in resolved)
    return ClusterSpec(name=name, node_groups=tuple(resolved), inter_node_latency_us=latency)


def _preset(name: str, nodes: int, devices_per_node: int, device: str) -> tuple[str, tuple]:
    return name, (nodes, devices_per_node, device)


PRESETS: dict[str, tuple[int, int, str]] = dict([
    _preset("h100x1", 1, 1, "h100-sxm-80gb"),
    _preset("h100x2", 1, 2, "h100-sxm-80gb"),
    _preset("h100x4", 1, 4, "h100-sxm-80gb"),
    _preset("h100x8", 1, 8, "h100-sxm-80gb"),
    _preset("h100x16", 2, 8, "h100-sxm-80gb"),
    _preset("h100x64", 8, 8, "h100-sxm-80gb"),
    _preset("h100x128", 16, 8, "h100-sxm-80gb"),
    _preset("h100x512", 64, 8, "h100-sxm-80gb"),
    _preset("h100x1024", 128, 8, "h100-sxm-80gb"),
    _preset("h100x4096", 512, 8, "h100-sxm-80gb"),
    _preset("a100x8", 1, 8, "a100-sxm-80gb"),
    _preset("a100x16", 2, 8, "a100-sxm-80gb"),
    _preset("h200x8", 1, 8, "h200-sxm-141gb"),
    _preset("cpu1", 1, 1, "cpu"),
    _preset("cpu2", 1, 2, "cpu"),
    _preset("cpu4", 1, 4, "cpu"),
])


# Heterogeneous presets: node groups of different devices, (nodes, devices per node, device)
# each, in device order.
GROUP_PRESETS: dict[str, tuple[tuple[int, int, str], ...]] = {
    "h100x64+a100x64": ((8, 8, "h100-sxm-80gb"), (8, 8, "a100-sxm-80gb")),
}


def cluster_preset(name: str) -> ClusterSpec:
    groups = GROUP_PRESETS.get(name) or (PRESETS[name],)
    return build_cluster(name, [NodeGroupFile(nodes=nodes, devices_per_node=per_node,
                                              device=device)
                                for nodes, per_node, device in groups])


def load_cluster_file(path: Path) -> ClusterSpec:
    data = load_yaml_mapping(path)
    spec = validated(ClusterFile, data, path)
    try:
        cluster = build_cluster(spec.name or Path(path).stem, spec.groups(),
                                spec.inter_node_latency_us)
    except ValueError as err:
        field = "node_groups" if spec.node_groups is not None else "device"
        raise InputError(f"{path}: {field}: {err}") from None
    return with_memory_headroom(cluster, spec.memory_headroom_gib, f"{path}: memory_headroom_gib")


def with_memory_headroom(cluster: ClusterSpec, headroom_gib: float, field: str) -> ClusterSpec:
    """The cluster with `headroom_gib` kept free on every device; InputError (naming
    `field`) when that leaves a device no memory."""
    problem = headroom_problem(headroom_gib, [g.hardware for g in cluster.node_groups])
    if problem:
        raise InputError(f"{field}: {problem}")
    return cluster.model_copy(update={"memory_headroom_gib": float(headroom_gib)})


def resolve_cluster(name_or_path: str) -> ClusterSpec:
    """A preset by name, or a cluster YAML file; InputError otherwise."""
    presets = {name: (lambda name=name: cluster_preset(name))
               for name in [*PRESETS, *GROUP_PRESETS]}
    return resolve_preset_or_file(name_or_path, presets, load_cluster_file, "--cluster",
                                  "cluster")
