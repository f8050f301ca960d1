"""Where one execution's stages and groups are, and the knobs a calibration turns.

`geometry` gives, per pipeline stage, its layer count, the hardware among its devices and
the link of its tp and dp groups (the slowest over the groups that run at once: their
point-to-point figures and, on cuda, NCCL's fabric of nodes, ranks per node, NVLink and the
NICs of their rails, costmodel.comm), the link of the pp sends, and with expert parallelism
(ep > 1) the links of each stage's ep groups (the all-to-all) and expert-dp groups.
`CostKnobs` is what a calibration (costmodel/calibration.py) changes inside one call's
model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

from costmodel import comm
from planner.domain.cluster import ClusterSpec
from planner.domain.hardware import HardwareSpec
from planner.domain.layout import Execution
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
    # expert parallelism (ep > 1; empty otherwise): per stage the slowest link of its ep
    # groups (the all-to-all) and of its expert-dp groups (the experts' gradients)
    ep_link: tuple[comm.Link, ...] = ()
    expert_dp_link: tuple[comm.Link, ...] = ()

    @cached_property
    def stage_class(self) -> tuple[int, ...]:
        """Per stage, the id of its class of alike stages: those with the same layer count,
        hardware, tp and dp links and the same say in whether they are the first or the
        last stage. Each time costmodel prices per stage reads nothing else of the stage
        (stage_timer, train_cost), so alike stages time alike and a slowest-stage maximum
        needs one stage per class (stage_classes)."""
        last = len(self.stage_layers) - 1
        ids: dict[tuple, int] = {}
        return tuple(ids.setdefault((self.stage_layers[s], s == 0, s == last,
                                     self.stage_hardware[s], self.tp_link[s], self.dp_link[s])
                                    + self.expert_links(s), len(ids))
                     for s in range(len(self.stage_layers)))

    def expert_links(self, stage: int) -> tuple[comm.Link, ...]:
        """The stage's ep and expert-dp links; () without expert parallelism."""
        if not self.ep_link:
            return ()
        return self.ep_link[stage], self.expert_dp_link[stage]

    @cached_property
    def stage_classes(self) -> tuple[int, ...]:
        """The first stage of each class (stage_class), ascending."""
        return tuple(self.stage_class.index(c) for c in range(max(self.stage_class) + 1))


def geometry(execution: Execution, num_layers: int, cluster: ClusterSpec) -> Geometry:
    """The geometry of the execution's placement (it depends on nothing else)."""
    ex = execution
    return placement_geometry(ex.devices, ex.dp, ex.tp, ex.pp, num_layers, cluster, ex.ep)


@lru_cache(maxsize=8192)
def placement_geometry(devices: tuple[int, ...], dp: int, tp: int, pp: int, num_layers: int,
                       cluster: ClusterSpec, ep: int = 1) -> Geometry:
    """Memoised: the search prices every micro-batch count and run policy of one placement,
    and finding NCCL's fabric of each group is most of a call's pricing otherwise."""
    hardware, tp_links, dp_links, pp_link = placement_links(devices, dp, tp, pp, cluster)
    ep_links, expert_dp_links = (placement_expert_links(devices, dp, tp, pp, ep, cluster)
                                 if ep > 1 else ((), ()))
    return Geometry(tuple(stage_layer_counts(num_layers, pp)), hardware, tp_links, dp_links,
                    pp_link, ep_links, expert_dp_links)


@lru_cache(maxsize=8192)
def placement_expert_links(devices: tuple[int, ...], dp: int, tp: int, pp: int, ep: int,
                           cluster: ClusterSpec
                           ) -> tuple[tuple[comm.Link, ...], tuple[comm.Link, ...]]:
    """Per stage the slowest link of its ep groups and of its expert-dp groups
    (planner.sharding.rank_groups: a stage holds tp x dp / ep ep groups and tp x ep
    expert-dp groups, in that order)."""
    groups = rank_groups(devices, dp, tp, pp, ep)
    per_stage_ep, per_stage_edp = tp * (dp // ep), tp * ep
    ep_links = tuple(_slowest_link(groups.ep_groups[s * per_stage_ep:(s + 1) * per_stage_ep],
                                   cluster) for s in range(pp))
    edp_links = tuple(_slowest_link(
        groups.expert_dp_groups[s * per_stage_edp:(s + 1) * per_stage_edp], cluster)
        for s in range(pp))
    return ep_links, edp_links


@lru_cache(maxsize=8192)
def placement_links(devices: tuple[int, ...], dp: int, tp: int, pp: int, cluster: ClusterSpec
                    ) -> tuple[tuple[tuple[HardwareSpec, ...], ...], tuple[comm.Link, ...],
                               tuple[comm.Link, ...], comm.Link | None]:
    """Per stage the hardware among its devices and the slowest link of its tp and of its
    dp groups, and the slowest pp link (None for pp 1): the part of placement_geometry that
    does not depend on the model, memoised apart so that models of other layer counts on
    one placement (a 70B actor, a 7B critic) find their groups' fabrics once."""
    lo = devices[0]
    if devices == tuple(range(lo, lo + len(devices))):
        return _run_links(lo, dp, tp, pp, cluster)
    all_devices = devices
    groups = rank_groups(all_devices, dp, tp, pp)
    per_stage = dp * tp
    hardware, tp_links, dp_links = [], [], []
    for stage in range(pp):
        devices = all_devices[stage * per_stage:(stage + 1) * per_stage]
        names = {}
        for d in devices:
            hw = cluster.hardware_of(d)
            names.setdefault(hw.name, hw)
        hardware.append(tuple(names.values()))
        tp_links.append(_slowest_link(groups.tp_groups[stage * dp:(stage + 1) * dp],
                                      cluster))
        dp_links.append(_slowest_link(groups.dp_groups[stage * tp:(stage + 1) * tp],
                                      cluster))
    pp_link = _slowest_link(groups.pp_groups, cluster) if pp > 1 else None
    return tuple(hardware), tuple(tp_links), tuple(dp_links), pp_link


def _run_links(lo: int, dp: int, tp: int, pp: int, cluster: ClusterSpec):
    """placement_links of the mesh lo, lo + 1, ..., lo + dp x tp x pp - 1 (every mesh the
    search builds, planner.domain.mesh allowed_meshes): the same result without listing the
    groups. On such a mesh each group of rank_groups is a progression of device ids (tp
    groups: stride 1, dp groups: stride tp, pp groups: stride dp x tp), in the same order,
    and a stage's devices are a run whose hardware is that of the nodes it spans, in node
    order."""
    per_stage = dp * tp
    hardware, tp_links, dp_links = [], [], []
    for stage in range(pp):
        first = lo + stage * per_stage
        names = {}
        for node in range(cluster.device_node[first],
                          cluster.device_node[first + per_stage - 1] + 1):
            hw = cluster.node_hardware[node]
            names.setdefault(hw.name, hw)
        hardware.append(tuple(names.values()))
        tp_links.append(_progression_link(range(first, first + per_stage, tp), 1, tp,
                                          cluster))
        dp_links.append(_progression_link(range(first, first + tp), tp, dp, cluster))
    pp_link = (_progression_link(range(lo, lo + per_stage), per_stage, pp, cluster)
               if pp > 1 else None)
    return tuple(hardware), tuple(tp_links), tuple(dp_links), pp_link


def _progression_link(starts: range, stride: int, size: int, cluster: ClusterSpec
                      ) -> comm.Link:
    """_slowest_link of the groups (start, start + stride, ..., start + (size - 1) x stride)
    of each start, in order: groups whose starts share a node group and a slot in their
    node are translations of each other (_translation_key), so each group's link is looked
    up once per distinct (node group, slot), not once per group."""
    links = _bounded_group_links(cluster)
    node_group, slot = _device_places(cluster)
    span = (size - 1) * stride
    by_place: dict[tuple, comm.Link] = {}
    distinct: dict[comm.Link, None] = {}
    for start in starts:
        group_index = node_group[start]
        place = (group_index, slot[start]) if node_group[start + span] == group_index \
            else (-1, start)
        link = by_place.get(place)
        if link is None:
            link = by_place[place] = _group_link(range(start, start + span + 1, stride),
                                                 links, cluster)
        distinct[link] = None
    return comm.slowest_of(list(distinct))


@lru_cache(maxsize=8)
def _device_places(cluster: ClusterSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per device, the index of its node group and its slot in its node (its id less its
    node's first device id)."""
    nodes = cluster.device_node
    return (tuple(cluster.node_group_index_of_node[n] for n in nodes),
            tuple(d - cluster.node_first_device[n] for d, n in enumerate(nodes)))


def _slowest_link(groups, cluster: ClusterSpec) -> comm.Link:
    """comm.slowest_link of `groups`: the same result, since it depends only on the
    distinct links in order, while each group's link is memoised (_group_links) across
    groups and placements alike by translation (_translation_key)."""
    links = _bounded_group_links(cluster)
    distinct: dict[comm.Link, None] = {}
    for group in groups:
        distinct[_group_link(group, links, cluster)] = None
    return comm.slowest_of(list(distinct))


def _group_link(group, links: dict[tuple, comm.Link], cluster: ClusterSpec) -> comm.Link:
    """comm.group_link of `group`, memoised in `links` by its _translation_key."""
    key = _translation_key(group, cluster)
    link = links.get(key)
    if link is None:
        link = links[key] = comm.group_link(group, cluster)
    return link


def _translation_key(group, cluster: ClusterSpec) -> tuple:
    """What a group's link (comm.group_link) depends on: inside one node group, the slots
    of its devices relative to the first device of the node its lowest device is on. The
    link reads of each device only its node's hardware and node group, its slot (its NIC)
    and which devices share a node, so groups that are translations of each other by whole
    nodes of one node group (the dp groups of alike replicas, the tp groups of alike
    stages) have one link. A group spanning node groups is keyed by its devices. A range
    (an ascending progression, _progression_link's groups) is read at its ends and shifted
    as a whole."""
    is_range = isinstance(group, range)
    lowest, highest = (group[0], group[-1]) if is_range else (min(group), max(group))
    node = cluster.device_node[lowest]
    node_group = cluster.node_group_index_of_node[node]
    if cluster.node_group_index_of_node[cluster.device_node[highest]] != node_group:
        return (-1, tuple(group))
    base = cluster.node_first_device[node]
    if is_range:
        return (node_group, tuple(range(group.start - base, group.stop - base, group.step)))
    return (node_group, tuple(d - base for d in group))


# Memoised group links, per cluster (hashing a ClusterSpec once per _slowest_link, not once
# per group): a dict of at most GROUP_LINK_ENTRIES groups each, by _translation_key.
GROUP_LINK_ENTRIES = 1 << 16


@lru_cache(maxsize=8)
def _group_links(cluster: ClusterSpec) -> dict[tuple, comm.Link]:
    return {}


def _bounded_group_links(cluster: ClusterSpec) -> dict[tuple, comm.Link]:
    """_group_links of the cluster, emptied first when it holds GROUP_LINK_ENTRIES."""
    links = _group_links(cluster)
    if len(links) >= GROUP_LINK_ENTRIES:
        links.clear()
    return links


@dataclass(frozen=True)
class CostKnobs:
    """What a calibration changes inside one call's model: a factor on every compute time,
    when set the latency of every collective step and send (seconds; comm.Link's
    step_latency_s), and a factor (> 0) on the bytes-over-bandwidth time of each (on a
    CPU, where the collective's copies and reductions run on the cores the call's
    processes share: costmodel/calibration.py)."""

    compute_scale: float = 1.0
    latency_s: float | None = None
    bandwidth_scale: float = 1.0

    def link(self, link: comm.Link) -> comm.Link:
        if self.bandwidth_scale != 1.0:
            link = replace(link, bandwidth_bytes_per_s=link.bandwidth_bytes_per_s
                           / self.bandwidth_scale)
        if self.latency_s is None:
            return link
        return link.with_step_latency(self.latency_s)


NEUTRAL_KNOBS = CostKnobs()
