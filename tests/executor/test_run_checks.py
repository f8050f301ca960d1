"""What `plan run` and the torchrun entry point check before a rank starts, the device
config they derive from the plan, and that a local run listens on 127.0.0.1 only.

Plans are the shipped tiny ones in plans/, or copies edited in tmp_path. CUDA is simulated
by monkeypatching torch.cuda (these tests run on CPU machines); the torchrun refusals run
`planner.cli.torchrun_rank.main` in this process with torchrun's variables set, and fail loudly if it ever
reaches the process group.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from planner.cli import run_checks
from planner.cli.main import main
from planner.cli.run_checks import memory_problem_here
from planner.cli.torchrun_rank import main as torchrun_main
from planner.domain.cluster import ClusterSpec
from planner.domain.hardware import GIB, hardware_by_name
from planner.domain.plan import load_plan
from runtime.device import cluster_backend, cluster_device_problem, rank_device_config
from runtime.executor.torchrun import TorchrunPlace, node_structure_problem
from runtime.launch import run_distributed, serve_rendezvous_store

REPO = Path(__file__).resolve().parents[2]
MICRO_CPU1 = REPO / "plans" / "ppo-llama-micro-cpu1.yaml"        # 1 node x 1 device
TINY_CPU4 = REPO / "plans" / "ppo-llama-tiny-cpu4-realloc.yaml"  # 1 node x 4 devices
TCP_LISTEN_STATE = "0A"    # /proc/net/tcp `st` of a listening socket
LOOPBACK_HEX = {"0100007F",                                     # 127.0.0.1 in /proc/net/tcp
                "00000000000000000000000001000000",             # ::1 in /proc/net/tcp6
                "0000000000000000FFFF00000100007F"}             # ::ffff:127.0.0.1


def edited_plan(tmp_path: Path, source: Path, **hardware_fields) -> Path:
    """A copy of `source` whose hardware has `hardware_fields` (or, with `spec=NAME`, the
    whole spec of profiles/hardware/NAME.yaml)."""
    data = yaml.safe_load(source.read_text())
    for group in data["cluster"]["node_groups"]:
        if "spec" in hardware_fields:
            group["hardware"] = hardware_by_name(hardware_fields["spec"]).model_dump(mode="json")
        else:
            group["hardware"].update(hardware_fields)
    out = tmp_path / f"edited-{source.name}"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def one_line_of(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


# ---- plan run: local checks ----------------------------------------------------------

def test_plan_run_refuses_a_plan_that_does_not_fit_with_exit_1(tmp_path, capsys, no_spawning):
    plan = edited_plan(tmp_path, MICRO_CPU1, memory_gib=0.001)
    trace = tmp_path / "t.json"
    assert main(["run", str(plan), "--trace", str(trace)]) == 1
    line = one_line_of(capsys)
    assert "infeasible" in line and "needs" in line and "nothing was started" in line
    assert not trace.exists()


def test_plan_run_refuses_an_fsdp_execution_with_one_line_exit_2(tmp_path, capsys,
                                                                  no_spawning):
    """FSDP / ZeRO-3 is priced for imported framework configs; the runtime runs ZeRO-1."""
    data = yaml.safe_load(MICRO_CPU1.read_text())
    data["executions"]["actor_train"]["shard_parameters_over_dp"] = True
    plan = tmp_path / "fsdp.yaml"
    plan.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_plan(plan).executions["actor_train"].shard_parameters_over_dp
    trace = tmp_path / "t.json"
    assert main(["run", str(plan), "--trace", str(trace)]) == 2
    line = one_line_of(capsys)
    assert "executions.actor_train: shard_parameters_over_dp (FSDP / ZeRO-3)" in line
    assert "imported framework configs only" in line and "ZeRO-1" in line
    assert not trace.exists()


def test_plan_run_of_a_cuda_plan_without_cuda_is_one_line_exit_2(tmp_path, capsys,
                                                                  monkeypatch, no_spawning):
    fake_gpus(monkeypatch, 0)
    plan = edited_plan(tmp_path, MICRO_CPU1, spec="h100-sxm-80gb")
    assert main(["run", str(plan)]) == 2
    line = one_line_of(capsys)
    assert "cluster" in line and "no CUDA GPU" in line and "h100-sxm-80gb" in line


def test_plan_run_needs_a_gpu_per_rank(tmp_path, capsys, monkeypatch, no_spawning):
    fake_gpus(monkeypatch, 2)
    plan = edited_plan(tmp_path, TINY_CPU4, spec="h100-sxm-80gb")
    assert main(["run", str(plan)]) == 2
    assert "4 ranks on this machine, one GPU each, and it has 2 GPU(s)" in one_line_of(capsys)


def test_bf16_on_cpu_is_refused(tmp_path, capsys, no_spawning):
    plan = edited_plan(tmp_path, MICRO_CPU1, compute_dtype="bf16")
    assert main(["run", str(plan)]) == 2
    line = one_line_of(capsys)
    assert "compute_dtype bf16 on cpu" in line and "valid on cpu: fp32" in line


def test_plan_run_refuses_when_the_gpus_here_are_smaller(tmp_path, capsys, monkeypatch,
                                                         no_spawning):
    """The plan fits its hardware's 5 GiB, not a GPU of 1 MiB."""
    monkeypatch.setattr(run_checks, "local_device_memory_bytes", lambda cluster, ranks: 2**20)
    assert main(["run", str(MICRO_CPU1)]) == 1
    line = one_line_of(capsys)
    assert "infeasible" in line and "the GPUs here have 0.0 GiB each" in line
    planned_gib = load_plan(MICRO_CPU1).cluster.node_hardware[0].memory_gib
    assert f"the plan's hardware {planned_gib:g} GiB" in line


def test_memory_check_caps_only_the_hardware_running_here():
    plan = load_plan(MICRO_CPU1)
    assert memory_problem_here(plan, {"cpu"}, None) is None
    assert memory_problem_here(plan, {"cpu"}, 64 * GIB) is None          # more than the spec
    assert "GPUs here" in memory_problem_here(plan, {"cpu"}, 2**20)
    assert memory_problem_here(plan, {"another-device"}, 2**20) is None


def test_a_cpu_plan_runs_on_cpu_gloo_fp32_even_with_gpus(monkeypatch):
    fake_gpus(monkeypatch, 8)
    cluster = load_plan(TINY_CPU4).cluster
    assert cluster_device_problem(cluster, 4) is None
    assert cluster_backend(cluster) == "gloo"
    config = rank_device_config(cluster, 3, 3)
    assert (config.device, config.dtype, config.backend) == (torch.device("cpu"),
                                                             torch.float32, "gloo")


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16),
                                               ("fp32", torch.float32)])
def test_a_cuda_plan_runs_in_its_hardware_dtype(tmp_path, dtype, torch_dtype):
    plan = load_plan(edited_plan(tmp_path, TINY_CPU4, spec="h100-sxm-80gb"))
    data = plan.cluster.model_dump(mode="json")
    data["node_groups"][0]["hardware"]["compute_dtype"] = dtype
    cluster = ClusterSpec.model_validate(data)
    config = rank_device_config(cluster, 3, 1)
    assert (config.device, config.dtype, config.backend) == (torch.device("cuda", 1),
                                                             torch_dtype, "nccl")
    assert cluster_backend(cluster) == "nccl"


def test_a_cluster_mixing_cpu_and_cuda_is_refused():
    cpu = load_plan(TINY_CPU4).cluster
    data = cpu.model_dump(mode="json")
    data["node_groups"].append({"nodes": 1, "devices_per_node": 2, "nics_per_node": 2,
                                "nic_bandwidth_gb_per_s": 50.0, "hardware":
                                hardware_by_name("h100-sxm-80gb").model_dump(mode="json")})
    problem = cluster_device_problem(ClusterSpec.model_validate(data), 6)
    assert "mix" in problem and "cpu fp32" in problem and "cuda bf16" in problem


def test_plan_run_of_a_shipped_plan_passes_the_checks_and_runs(tmp_path, capsys):
    trace = tmp_path / "micro.trace.json"
    assert main(["run", str(MICRO_CPU1), "--iterations", "1", "--trace", str(trace),
                 "--reward", "programmatic:target_token=7"]) == 0
    assert trace.exists() and f"trace: {trace}" in capsys.readouterr().out


# ---- torchrun entry point ------------------------------------------------------------

def torchrun_env(monkeypatch, rank: int, world: int, local_rank: int, local_world: int,
                 node: int) -> None:
    for name, value in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", local_rank),
                        ("LOCAL_WORLD_SIZE", local_world), ("GROUP_RANK", node)):
        monkeypatch.setenv(name, str(value))


def test_torchrun_refuses_a_1x4_plan_started_as_2_nodes_of_2(monkeypatch, capsys,
                                                            no_spawning):
    torchrun_env(monkeypatch, rank=0, world=4, local_rank=0, local_world=2, node=0)
    assert torchrun_main([str(TINY_CPU4)]) == 2
    line = one_line_of(capsys)
    assert line.startswith("python -m planner.cli.torchrun_rank: rank 0 (node 0): error:")
    assert "node 0 has 4 devices in the plan" in line and "--nproc-per-node 4" in line
    torchrun_env(monkeypatch, rank=2, world=4, local_rank=0, local_world=2, node=1)
    assert torchrun_main([str(TINY_CPU4)]) == 2
    assert "node 1 is not in the plan" in one_line_of(capsys)


def test_torchrun_reports_once_per_node_from_local_rank_0(monkeypatch, capsys, no_spawning):
    torchrun_env(monkeypatch, rank=1, world=4, local_rank=1, local_world=2, node=0)
    assert torchrun_main([str(TINY_CPU4)]) == 2
    assert capsys.readouterr().err == ""


def test_torchrun_malformed_plan_is_one_line(tmp_path, monkeypatch, capsys, no_spawning):
    bad = tmp_path / "bad.yaml"
    bad.write_text("executions: [\n")
    torchrun_env(monkeypatch, rank=0, world=1, local_rank=0, local_world=1, node=0)
    assert torchrun_main([str(bad)]) == 2
    assert "bad.yaml" in one_line_of(capsys)


def test_torchrun_world_size_must_be_the_plans(monkeypatch, capsys, no_spawning):
    torchrun_env(monkeypatch, rank=0, world=2, local_rank=0, local_world=2, node=0)
    assert torchrun_main([str(MICRO_CPU1)]) == 2
    assert "the plan has 1 device(s) (devices per node: 1), torchrun started 2" in one_line_of(capsys)


def test_torchrun_outside_torchrun_says_how_to_start(monkeypatch, capsys, no_spawning):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_main([str(MICRO_CPU1)]) == 2
    assert "start this under torchrun" in one_line_of(capsys)


def test_torchrun_cuda_plan_without_cuda_and_infeasible_plan(tmp_path, monkeypatch, capsys,
                                                            no_spawning):
    fake_gpus(monkeypatch, 0)
    torchrun_env(monkeypatch, rank=0, world=1, local_rank=0, local_world=1, node=0)
    assert torchrun_main([str(edited_plan(tmp_path, MICRO_CPU1, spec="h100-sxm-80gb"))]) == 2
    assert "no CUDA GPU" in one_line_of(capsys)
    assert torchrun_main([str(edited_plan(tmp_path, MICRO_CPU1, memory_gib=0.001))]) == 1
    assert "infeasible" in one_line_of(capsys)


def test_node_structure_needs_ranks_in_the_plans_node_order():
    data = load_plan(TINY_CPU4).cluster.model_dump(mode="json")
    data["node_groups"][0].update(nodes=2, devices_per_node=2)
    cluster = ClusterSpec.model_validate(data)
    right = TorchrunPlace(rank=2, world_size=4, local_rank=0, local_world_size=2, node=1)
    assert node_structure_problem(cluster, right) is None
    swapped = TorchrunPlace(rank=0, world_size=4, local_rank=0, local_world_size=2, node=1)
    assert "device 2 in the plan" in node_structure_problem(cluster, swapped)


# ---- a local run listens on 127.0.0.1 only -------------------------------------------

def listening_addresses(pids: list[int]) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) of the listening TCP sockets
    the processes `pids` hold."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            address, state, inode = fields[1], fields[3], fields[9]
            if state == TCP_LISTEN_STATE and inode in inodes:
                found.append(address.split(":")[0])
    return found


def _listening_addresses_of_rank_and_parent(rank: int, world_size: int) -> list[str]:
    dist.barrier()     # every rank's sockets are up
    addresses = listening_addresses([os.getpid(), os.getppid()])
    dist.barrier()
    return addresses


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc/net/tcp")
def test_rendezvous_store_listens_on_loopback_only():
    store, port = serve_rendezvous_store(timeout_s=30)
    port_hex = f"{port:04X}"
    listeners = [fields[1].split(":")[0] for table in ("/proc/net/tcp", "/proc/net/tcp6")
                 for fields in (row.split() for row in Path(table).read_text().splitlines()[1:])
                 if fields[1].endswith(f":{port_hex}") and fields[3] == TCP_LISTEN_STATE]
    assert listeners and set(listeners) <= LOOPBACK_HEX, listeners
    client = dist.TCPStore("127.0.0.1", port, None, False)
    client.set("checked", "yes")
    assert store.get("checked") == b"yes"


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc/net/tcp")
def test_a_local_run_listens_on_loopback_only():
    per_rank = run_distributed(_listening_addresses_of_rank_and_parent, 2, timeout_s=300)
    for addresses in per_rank:
        assert addresses, "expected the store (parent) and gloo (ranks) to listen"
        assert set(addresses) <= LOOPBACK_HEX, addresses
