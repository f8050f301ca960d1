"""placement_links on a run of consecutive devices (the meshes the search builds) finds its
links from the groups' progressions without listing them (costmodel/call_geometry.py
_run_links): the result equals that of listing every group of rank_groups and taking
comm.slowest_link of each family, on alike and on mixed node groups, partial nodes included,
and a progression has the memo key of its listed devices."""

from __future__ import annotations

import pytest

from costmodel import call_geometry, comm
from planner.domain.cluster import ClusterSpec, cluster_preset
from planner.domain.mesh import allowed_meshes
from planner.sharding.rank_groups import rank_groups


def listed_links(devices: tuple[int, ...], dp: int, tp: int, pp: int, cluster: ClusterSpec):
    """placement_links' answer from every group of rank_groups, one family at a time."""
    groups = rank_groups(devices, dp, tp, pp)
    per_stage = dp * tp
    hardware = tuple(tuple({cluster.hardware_of(d).name: cluster.hardware_of(d)
                            for d in devices[s * per_stage:(s + 1) * per_stage]}.values())
                     for s in range(pp))
    tp_links = tuple(comm.slowest_link(groups.tp_groups[s * dp:(s + 1) * dp], cluster)
                     for s in range(pp))
    dp_links = tuple(comm.slowest_link(groups.dp_groups[s * tp:(s + 1) * tp], cluster)
                     for s in range(pp))
    pp_link = comm.slowest_link(groups.pp_groups, cluster) if pp > 1 else None
    return hardware, tp_links, dp_links, pp_link


def factorisations(n: int):
    return [(dp, tp, n // (dp * tp)) for dp in range(1, n + 1) if n % dp == 0
            for tp in range(1, n // dp + 1) if (n // dp) % tp == 0]


@pytest.mark.parametrize("name", ["h100x16", "h100x64+a100x64"])
def test_links_of_a_run_of_devices_are_those_of_its_listed_groups(name):
    cluster = cluster_preset(name)
    meshes = [m for m in allowed_meshes(cluster) if len(m) in (2, 4, 8, 12, 16, 24, 32)]
    meshes += [tuple(range(cluster.num_devices))]
    checked = 0
    for mesh in meshes[::3]:
        for dp, tp, pp in factorisations(len(mesh)):
            call_geometry.placement_links.cache_clear()
            assert call_geometry.placement_links(mesh, dp, tp, pp, cluster) == \
                listed_links(mesh, dp, tp, pp, cluster), (mesh, dp, tp, pp)
            checked += 1
    assert checked > 30


def test_a_mesh_across_two_node_groups_is_keyed_by_its_devices():
    # devices 60-67 span the last H100 node and the first A100 node: its groups that cross
    # the node groups are not translations of any other group
    cluster = cluster_preset("h100x64+a100x64")
    mesh = tuple(range(60, 68))
    for dp, tp, pp in [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 8)]:
        call_geometry.placement_links.cache_clear()
        assert call_geometry.placement_links(mesh, dp, tp, pp, cluster) == \
            listed_links(mesh, dp, tp, pp, cluster)


@pytest.mark.parametrize("name", ["h100x16", "h100x64+a100x64"])
def test_a_progression_has_the_translation_key_of_its_listed_devices(name):
    # _progression_link looks up groups as ranges; the link memo must see one key per group
    cluster = cluster_preset(name)
    for start in range(cluster.num_devices):
        for stride, size in [(1, 4), (2, 4), (8, 2), (3, 3)]:
            group = range(start, start + (size - 1) * stride + 1, stride)
            if group[-1] < cluster.num_devices:
                assert call_geometry._translation_key(group, cluster) == \
                    call_geometry._translation_key(tuple(group), cluster)
