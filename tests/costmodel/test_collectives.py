"""Collectives and sends against published NCCL measurements (../shared/gpu-anchors.md) and
the network as DGX/HGX nodes are built: one NIC per GPU, rail-optimised."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from costmodel import comm, nccl_model
from costmodel.call_geometry import CostKnobs
from costmodel.realloc_cost import schedule_cost
from planner.domain.cluster import (
    NodeGroupFile,
    build_cluster,
    cluster_preset,
    load_cluster_file,
    resolve_cluster,
)
from planner.domain.errors import InputError
from planner.domain.hardware import load_hardware_file
from planner.domain.paths import HARDWARE_DIR
from planner.sharding.transfer_schedule import Piece, Schedule

H100X8 = cluster_preset("h100x8")
H100X16 = cluster_preset("h100x16")
GIB = 2**30
NIC_BYTES_PER_S = 50e9  # one 400 Gb/s ConnectX-7


def test_one_gib_allreduce_on_eight_h100_is_within_15_percent_of_nccl_tests():
    """n1: dgxc-benchmarking nccl sample, 8 H100 in one node, 1 GiB: 4,029 us (NVLS)."""
    link = comm.group_link(range(8), H100X8)
    assert comm.allreduce_time_s(GIB, 8, link) == pytest.approx(4029e-6, rel=0.15)
    assert nccl_model.best_choice("allreduce", GIB, 8, link.fabric).algorithm == "nvls"


def test_512_kib_allreduce_on_eight_h100_is_within_30_percent_of_nccl_tests():
    """n2: same sample, 512 KiB: 20.7 us; latency-bound, far below 2 (n-1) x 5 us."""
    link = comm.group_link(range(8), H100X8)
    assert comm.allreduce_time_s(512 * 1024, 8, link) == pytest.approx(20.7e-6, rel=0.30)


def test_16_gib_allreduce_on_two_hgx_h100_nodes_is_within_20_percent_of_nccl_tests():
    """n3: nccl-tests issue #309, 2 x 8 H100, 8 x 400 Gb/s NICs per node, busbw ~470 GB/s
    -> 2 x 15/16 x 16 GiB / 470 GB/s = 68.6 ms. Every GPU drives its own NIC."""
    link = comm.group_link(range(16), H100X16)
    assert link.fabric.net_gb_per_s == pytest.approx(8 * 50.0)
    assert comm.allreduce_time_s(16 * GIB, 16, link) == pytest.approx(68.6e-3, rel=0.20)


def test_one_gpu_per_node_on_two_nodes_runs_at_one_nics_bandwidth():
    link = comm.group_link([0, 8], H100X16)
    assert link.fabric.net_gb_per_s == pytest.approx(50.0)
    # an all-reduce of 2 ranks moves 2 (n-1)/n = 1 x the buffer through each NIC
    assert comm.allreduce_time_s(GIB, 2, link) == pytest.approx(GIB / NIC_BYTES_PER_S,
                                                                rel=0.02)
    assert comm.allgather_time_s(GIB, 2, link) == pytest.approx(GIB / 2 / NIC_BYTES_PER_S,
                                                                rel=0.02)


def test_a_send_across_nodes_runs_at_one_nic():
    link = comm.p2p_link(H100X16, 3, 11)
    assert link.bandwidth_bytes_per_s == NIC_BYTES_PER_S
    assert comm.p2p_time_s(GIB, link) == pytest.approx(10e-6 + GIB / NIC_BYTES_PER_S)
    assert comm.group_link([3, 11], H100X16).bandwidth_bytes_per_s == NIC_BYTES_PER_S


def test_eight_gpus_sending_across_nodes_at_once_do_not_share_a_nic():
    """Rail-optimised: GPU slot i sends through NIC i, so eight concurrent messages of one
    step take as long as one."""
    def piece(i):
        return Piece(name="w", src=i, dst=8 + i, ranges=((0, 10**8),), num_elements=10**8)

    one = Schedule.of_pieces(local=(), steps=((piece(0),),))
    eight = Schedule.of_pieces(local=(), steps=(tuple(piece(i) for i in range(8)),))
    assert schedule_cost(eight, 2, H100X16).time_s == schedule_cost(one, 2, H100X16).time_s


def test_gpus_that_share_a_nic_share_its_bandwidth(tmp_path):
    """Four NICs on eight GPUs: two GPUs per rail, each gets half its NIC when all send, and
    a group of the two on a rail drives one NIC, not two."""
    path = tmp_path / "four-nics.yaml"
    path.write_text(yaml.safe_dump({"nodes": 2, "devices_per_node": 8,
                                    "device": "h100-sxm-80gb", "nics_per_node": 4}))
    cluster = load_cluster_file(path)
    assert cluster.nic_of(1) == (0, 0) and cluster.nic_of(2) == (0, 1)
    assert comm.p2p_link(cluster, 0, 8).bandwidth_bytes_per_s == NIC_BYTES_PER_S / 2
    assert comm.group_link([0, 1, 8, 9], cluster).fabric.net_gb_per_s == pytest.approx(50.0)
    assert comm.group_link([0, 2, 8, 10], cluster).fabric.net_gb_per_s == pytest.approx(100.0)


def test_the_chosen_algorithm_changes_with_size():
    """Small messages: LL, latency-bound (under twice the zero-byte time); large: Simple,
    bandwidth-bound (latency under 1% of the time)."""
    for cluster, n in ((H100X8, 8), (H100X16, 16)):
        fabric = comm.group_link(range(n), cluster).fabric
        small = nccl_model.best_choice("allreduce", 4096, n, fabric)
        large = nccl_model.best_choice("allreduce", 4 * GIB, n, fabric)
        assert small.protocol == "LL" and large.protocol == "Simple"
        latency_only = nccl_model.best_choice("allreduce", 0.0, n, fabric).time_s
        assert small.time_s < 2 * latency_only
        assert large.time_s > 100 * latency_only


def test_time_grows_with_size_and_arrays_price_elementwise():
    link = comm.group_link(range(16), H100X16)
    sizes = np.geomspace(1e3, 1e10, 40)
    times = comm.allreduce_time_s(sizes, 16, link)
    assert np.all(np.diff(times) > 0)
    assert list(times) == [comm.allreduce_time_s(float(b), 16, link) for b in sizes]


def test_a100_nodes_have_no_nvls_and_half_the_nic_bandwidth():
    a100 = cluster_preset("a100x16")
    link = comm.group_link(range(16), a100)
    assert not link.fabric.nvls and link.fabric.net_gb_per_s == pytest.approx(8 * 25.0)
    choice = nccl_model.best_choice("allreduce", GIB, 16, link.fabric)
    assert choice.algorithm in ("ring", "tree")
    h100 = comm.allreduce_time_s(GIB, 16, comm.group_link(range(16), H100X16))
    assert comm.allreduce_time_s(GIB, 16, link) > 1.5 * h100


def test_cpu_gloo_keeps_the_alpha_beta_ring():
    cpu4 = cluster_preset("cpu4")
    link = comm.group_link(range(4), cpu4)
    assert link.fabric is None
    alpha, bw = 500e-6, 1.5e9
    assert comm.allreduce_time_s(1e6, 4, link) == pytest.approx(6 * alpha + 1.5 * 1e6 / bw)
    assert comm.reduce_scatter_time_s(1e6, 4, link) == pytest.approx(3 * alpha + 0.75e6 / bw)


def test_a_calibrated_step_latency_replaces_every_hop_latency():
    knobs = CostKnobs(latency_s=1e-3)
    cpu = knobs.link(comm.group_link(range(4), cluster_preset("cpu4")))
    assert comm.allreduce_time_s(0.0, 4, cpu) == pytest.approx(6e-3)
    assert comm.p2p_time_s(0.0, cpu) == pytest.approx(1e-3)
    gpu = knobs.link(comm.group_link(range(8), H100X8))
    # the fastest algorithm at zero bytes is NVLS: one step
    assert comm.allreduce_time_s(0.0, 8, gpu) == pytest.approx(1e-3)


def test_cluster_file_nic_overrides_are_read(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump({
        "node_groups": [{"nodes": 2, "devices_per_node": 8, "device": "h100-sxm-80gb",
                         "nics_per_node": 2, "nic_bandwidth_gb_per_s": 25.0}],
        "inter_node_latency_us": 3.0}))
    cluster = resolve_cluster(str(path))
    group = cluster.node_groups[0]
    assert (group.nics_per_node, group.nic_bandwidth_gb_per_s) == (2, 25.0)
    assert cluster.inter_node_latency_us == 3.0
    assert comm.p2p_link(cluster, 0, 8).bandwidth_bytes_per_s == pytest.approx(25e9 / 4)
    default = build_cluster("d", [NodeGroupFile(nodes=2, devices_per_node=8,
                                                device="h100-sxm-80gb")])
    assert default.node_groups[0].nics_per_node == 8


@pytest.mark.parametrize("data, words", [
    ({"nodes": 2, "devices_per_node": 8, "device": "h100-sxm-80gb",
      "inter_node_bandwidth_gb_per_s": 100.0},
     ["inter_node_bandwidth_gb_per_s", "no longer read", "nics_per_node",
      "nic_bandwidth_gb_per_s"]),
    ({"node_groups": [{"nodes": 2, "devices_per_node": 8, "device": "h100-sxm-80gb"}],
      "nics_per_node": 4}, ["nics_per_node", "inside each node group"]),
    ({"nodes": 2, "devices_per_node": 8, "device": "h100-sxm-80gb", "nics_per_node": 0},
     ["nics_per_node", "greater than or equal to 1"]),
    ({"nodes": 2, "devices_per_node": 8, "device": "h100-sxm-80gb",
      "nic_bandwidth_gb_per_s": float("inf")}, ["nic_bandwidth_gb_per_s", "got inf"]),
    ({"nodes": 2, "devices_per_node": 8, "device": "h100-sxm-80gb", "nic_speed": 1},
     ["nic_speed", "unknown key"]),
])
def test_cluster_file_network_fields_are_refused_with_one_clear_line(tmp_path, data, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as refused:
        load_cluster_file(path)
    message = str(refused.value)
    assert "\n" not in message
    for word in [str(path), *words]:
        assert word in message, (word, message)


@pytest.mark.parametrize("device, changes, words", [
    ("h100-sxm-80gb", {"gpu_architecture": None}, ["gpu_architecture", "required for a cuda"]),
    ("a100-sxm-80gb", {"nvlink_sharp": True}, ["nvlink_sharp", "Hopper"]),
    ("cpu", {"host_cpu_vendor": "intel"}, ["host_cpu_vendor", "gloo, not NCCL"]),
    ("h100-sxm-80gb", {"inter_node_bandwidth_gb_per_s": 50.0},
     ["inter_node_bandwidth_gb_per_s", "unknown key"]),
])
def test_hardware_network_fields_are_checked(tmp_path, device, changes, words):
    spec = yaml.safe_load((HARDWARE_DIR / f"{device}.yaml").read_text())
    spec.update(changes)
    path = tmp_path / "device.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))
    with pytest.raises(InputError) as refused:
        load_hardware_file(path)
    for word in [str(path), *words]:
        assert word in str(refused.value), (word, refused.value)
