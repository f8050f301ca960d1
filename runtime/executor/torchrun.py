"""Ranks started by torchrun (multi-node `plan run`): where torchrun put this process, whether
that matches the plan's nodes, and running this rank.

The command-line entry point is planner/cli/torchrun_rank.py, which checks the plan (as
`plan run` does, cost-model memory check included) before `run_under_torchrun` starts the
process group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.distributed as dist

from planner.domain.cluster import ClusterSpec
from planner.domain.errors import InputError
from planner.domain.plan import Plan
from runtime.device import rank_device_config
from runtime.executor.config import RunConfig
from runtime.executor.worker import execute

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")


@dataclass(frozen=True)
class TorchrunPlace:
    """Where torchrun started this process (its environment variables; GROUP_RANK is the
    node's index, --node-rank or the rendezvous' choice)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node: int

    def label(self) -> str:
        return f"rank {self.rank} (node {self.node})"


def torchrun_place(environ: Mapping[str, str]) -> TorchrunPlace:
    """This process' place from torchrun's variables; InputError when one is missing."""
    values = {}
    for name in TORCHRUN_ENV:
        text = environ.get(name)
        if text is None or not text.isdigit():
            raise InputError(f"environment: {name} is {text!r}, not a rank number: start "
                             f"this under torchrun (see `plan run --help`), or use plan run")
        values[name] = int(text)
    return TorchrunPlace(rank=values["RANK"], world_size=values["WORLD_SIZE"],
                         local_rank=values["LOCAL_RANK"],
                         local_world_size=values["LOCAL_WORLD_SIZE"], node=values["GROUP_RANK"])


def node_structure_problem(cluster: ClusterSpec, place: TorchrunPlace) -> str | None:
    """Why torchrun's processes are not the plan's devices, or None.

    The plan numbers devices node-major and so does torchrun its ranks, so besides the
    world size the node must exist, run as many processes as the plan has devices on it,
    and hold the ranks of those devices (a 1x4 plan started as 2 nodes x 2 processes has
    the right world size and the wrong nodes: its tensor-parallel groups would cross nodes
    the cost model priced as one).
    """
    shape = " + ".join(str(n) for n in cluster.node_devices_per_node)
    if place.world_size != cluster.num_devices:
        return (f"the plan has {cluster.num_devices} device(s) (devices per node: {shape}), "
                f"torchrun started {place.world_size} processes")
    if place.node >= cluster.num_nodes:
        return (f"torchrun's node {place.node} is not in the plan, which has {cluster.num_nodes}"
                f" node(s) (devices per node: {shape}); give --nnodes {cluster.num_nodes}")
    wanted = cluster.node_devices_per_node[place.node]
    if place.local_world_size != wanted:
        return (f"node {place.node} has {wanted} devices in the plan (devices per node: "
                f"{shape}), torchrun started {place.local_world_size} processes on it; give "
                f"--nproc-per-node {wanted}")
    expected_rank = cluster.node_first_device[place.node] + place.local_rank
    if place.rank != expected_rank:
        return (f"rank {place.rank} is local rank {place.local_rank} of node {place.node}, "
                f"which is device {expected_rank} in the plan; start the nodes so that ranks "
                f"follow the plan's node order")
    return None


def run_under_torchrun(plan: Plan, config: RunConfig, place: TorchrunPlace,
                        trace_path: Path) -> None:
    """Start the process group, run this rank, gather the trace on rank 0 and write it."""
    import json
    from datetime import timedelta

    from planner.domain.output_files import atomic_write_text
    from planner.domain.plan import plan_to_mapping
    from runtime.executor.trace import build_trace, progress_line

    device = rank_device_config(plan.cluster, place.rank, place.local_rank)
    if device.device.type == "cuda":
        torch.cuda.set_device(device.device)
    torch.set_num_threads(1)
    dist.init_process_group(device.backend, timeout=timedelta(minutes=30))
    rank, world = dist.get_rank(), dist.get_world_size()
    messages: list[dict] = []
    execute(rank, world, messages.append, plan_to_mapping(plan), config, place.local_rank)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(messages, gathered, dst=0)
    if rank == 0:
        flat = [m for per_rank in gathered for m in per_rank]
        trace = build_trace(plan, flat, config.iterations)
        for item in trace["iterations"]:
            print(progress_line(item["iteration"], config.iterations, item["seconds"],
                                item["metrics"]))
        atomic_write_text(trace_path, json.dumps(trace, indent=1))
        print(f"trace: {trace_path}")
    dist.destroy_process_group()
