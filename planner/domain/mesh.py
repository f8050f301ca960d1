"""Device meshes: the set of devices one call runs on.

Allowed meshes (design.md section 4): a power-of-two slice inside one node, aligned to its
size (1, 2, 4, ... devices starting at a multiple of the size), or a contiguous range of
whole nodes. Text form `node:slots`: `0:0-3` is node 0, slots 0 to 3; `1:5` is node 1, slot
5; `0-1:0-7` is nodes 0 and 1, all eight slots each. A node range whose slots run from 0 to
the last slot of its widest node means whole nodes, so `0-1:0-7` also names node 0 of eight
devices plus node 1 of four in a heterogeneous cluster.
"""

from __future__ import annotations

import re

from planner.domain.cluster import ClusterSpec

_TEXT = re.compile(r"^(\d+)(?:-(\d+))?:(\d+)(?:-(\d+))?$")


def _span(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first}-{last}"


def mesh_text(device_ids: tuple[int, ...], cluster: ClusterSpec) -> str:
    """`node:slots` text of an allowed mesh (see module docstring)."""
    nodes = sorted({cluster.device_node[d] for d in device_ids})
    slots = [cluster.slot_of(d) for d in device_ids]
    if len(nodes) == 1:
        return f"{nodes[0]}:{_span(min(slots), max(slots))}"
    widest = max(cluster.node_devices_per_node[n] for n in nodes)
    return f"{_span(nodes[0], nodes[-1])}:{_span(0, widest - 1)}"


def parse_mesh_text(text: str, cluster: ClusterSpec) -> tuple[int, ...]:
    """Device ids of a `node:slots` text; ValueError saying what is valid."""
    match = _TEXT.match(text.strip())
    if not match:
        raise ValueError(f"mesh {text!r} is not of the form NODE:SLOT, NODE:FIRST-LAST or "
                         f"FIRST-LAST:FIRST-LAST (e.g. 0:0-3)")
    node_first, node_last, slot_first, slot_last = match.groups()
    node_first = int(node_first)
    node_last = int(node_last) if node_last is not None else node_first
    slot_first = int(slot_first)
    slot_last = int(slot_last) if slot_last is not None else slot_first
    if node_last >= cluster.num_nodes or node_first > node_last:
        raise ValueError(f"mesh {text!r} names nodes {node_first}-{node_last}; the cluster has "
                         f"nodes 0-{cluster.num_nodes - 1}")
    nodes = range(node_first, node_last + 1)
    widest = max(cluster.node_devices_per_node[n] for n in nodes)
    whole_nodes = node_first < node_last and slot_first == 0 and slot_last == widest - 1
    devices = []
    for node in nodes:
        per_node = cluster.node_devices_per_node[node]
        last = per_node - 1 if whole_nodes else slot_last
        if last >= per_node or slot_first > last:
            raise ValueError(f"mesh {text!r} names slots {slot_first}-{slot_last}; node {node} "
                             f"has slots 0-{per_node - 1}")
        devices.extend(cluster.device_id(node, s) for s in range(slot_first, last + 1))
    return tuple(devices)


def mesh_problem(device_ids: tuple[int, ...], cluster: ClusterSpec) -> str | None:
    """Why `device_ids` is not an allowed mesh of `cluster`, or None when it is."""
    if not device_ids:
        return "mesh is empty"
    bad = [d for d in device_ids if not 0 <= d < cluster.num_devices]
    if bad:
        return (f"device(s) {bad} are outside the cluster (devices 0-"
                f"{cluster.num_devices - 1})")
    if list(device_ids) != list(range(device_ids[0], device_ids[0] + len(device_ids))):
        return f"devices {list(device_ids)} are not a contiguous ascending range"
    nodes = sorted({cluster.device_node[d] for d in device_ids})
    size = len(device_ids)
    if len(nodes) == 1:
        slot = cluster.slot_of(device_ids[0])
        per_node = cluster.node_devices_per_node[nodes[0]]
        if size == per_node:
            return None
        if size & (size - 1) or slot % size:
            return (f"a slice inside one node must have a power-of-two size aligned to it "
                    f"(got {size} devices from slot {slot}; node has {per_node})")
        return None
    whole_nodes = sum(cluster.node_devices_per_node[n] for n in nodes)
    if cluster.slot_of(device_ids[0]) != 0 or size != whole_nodes:
        return f"a mesh across nodes must cover whole nodes (nodes {nodes[0]}-{nodes[-1]})"
    return None


def allowed_meshes(cluster: ClusterSpec) -> list[tuple[int, ...]]:
    """Every allowed mesh of the cluster, smallest first within each node, then node ranges."""
    meshes: list[tuple[int, ...]] = []
    for node in range(cluster.num_nodes):
        per_node = cluster.node_devices_per_node[node]
        size = 1
        while size < per_node:
            for start in range(0, per_node - size + 1, size):
                meshes.append(tuple(cluster.device_id(node, start + i) for i in range(size)))
            size *= 2
        first = cluster.device_id(node, 0)
        meshes.append(tuple(range(first, first + per_node)))
    for first_node in range(cluster.num_nodes):
        for last_node in range(first_node + 1, cluster.num_nodes):
            first = cluster.device_id(first_node, 0)
            last = cluster.device_id(last_node, cluster.node_devices_per_node[last_node] - 1)
            meshes.append(tuple(range(first, last + 1)))
    return meshes
