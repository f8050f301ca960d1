"""What `plan run` (and its torchrun entry point) checks before any rank starts: that the
plan uses nothing the runtime only prices (FSDP / ZeRO-3 executions of imported framework
configs), the runtime's own checks, then, with the cost model, that the plan fits in the
memory of the devices at hand.

The memory rule is the one `plan check` applies (costmodel.simulator, rule 6); on a GPU
machine whose GPUs are smaller than the plan's hardware it is applied with each GPU's memory
capped at what the local GPUs really have, so a plan made for 80 GiB GPUs is refused on 24
GiB ones before it starts. It lives here, in the command-line layer, because the runtime
imports nothing of the cost model.
"""

from __future__ import annotations

from costmodel.simulator import executions_memory_problem
from planner.domain.cluster import ClusterSpec
from planner.domain.errors import InputError
from planner.domain.hardware import GIB
from planner.domain.plan import Plan
from runtime.device import local_device_memory_bytes
from runtime.executor.config import RunConfig
from runtime.executor.launcher import check_before_start


class PlanDoesNotFit(Exception):
    """A valid plan whose memory check fails on the devices at hand (`plan run` exits 1)."""


def with_device_memory_at_most(cluster: ClusterSpec, hardware_names: set[str],
                               memory_bytes: float) -> ClusterSpec:
    """The cluster with the memory of the devices of `hardware_names` capped at
    `memory_bytes` (what the GPUs at hand have); others as they are."""
    data = cluster.model_dump()
    for group in data["node_groups"]:
        hardware = group["hardware"]
        if hardware["name"] in hardware_names:
            hardware["memory_gib"] = min(hardware["memory_gib"], memory_bytes / GIB)
    return ClusterSpec.model_validate(data)


def memory_problem_here(plan: Plan, hardware_here: set[str],
                        device_memory_bytes: float | None) -> str | None:
    """The plan's memory check (costmodel.simulator, the rule `plan check` applies), with the
    devices of `hardware_here` holding at most `device_memory_bytes` (None: as the plan's
    hardware says). A plan for 80 GiB GPUs is refused on 24 GiB ones before it starts.

    Capping only lowers memory, so the one check on the capped cluster covers the plan's own
    hardware too."""
    planned_gib = max((h.memory_gib for h in plan.cluster.node_hardware
                       if h.name in hardware_here), default=0.0)
    smaller_here = device_memory_bytes is not None and device_memory_bytes / GIB < planned_gib
    cluster = (with_device_memory_at_most(plan.cluster, hardware_here, device_memory_bytes)
               if smaller_here else plan.cluster)
    problem = executions_memory_problem(plan.workflow, cluster, plan.executions)
    if problem and smaller_here:
        return (f"{problem} (the GPUs here have {device_memory_bytes / GIB:.1f} GiB each, the "
                f"plan's hardware {planned_gib:g} GiB)")
    return problem


def priced_only_problem(plan: Plan, source: str) -> str | None:
    """The first call (in call order) whose execution shards its parameters over dp (FSDP /
    ZeRO-3, Execution.shard_parameters_over_dp), which the cost model prices for imported
    framework configs and the runtime cannot run, or None."""
    for name in plan.workflow.call_order:
        if plan.executions[name].shard_parameters_over_dp:
            return (f"{source}: executions.{name}: shard_parameters_over_dp (FSDP / ZeRO-3) "
                    f"is priced for imported framework configs only; the runtime shards only "
                    f"the optimizer states (ZeRO-1, shard_optimizer_over_dp), so it cannot "
                    f"run this plan (remove shard_parameters_over_dp to run it)")
    return None


def check_plan_can_start(plan: Plan, config: RunConfig, source: str, ranks_here: int,
                         hardware_here: set[str]) -> list[str]:
    """Everything checked before a rank of `plan run` (or of its torchrun entry point)
    starts, for the `ranks_here` ranks this machine runs on hardware `hardware_here`: that
    no execution is one the runtime only prices (InputError), the runtime's checks
    (InputError: what it cannot run, a bad --load or --save, or what this machine cannot
    host), then the memory of the devices at hand (PlanDoesNotFit). Returns the runtime's
    notes to print (a value head a checkpoint leaves to the seed)."""
    problem = priced_only_problem(plan, source)
    if problem:
        raise InputError(problem)
    notes = check_before_start(plan, config, source, ranks_here)
    memory = local_device_memory_bytes(plan.cluster, ranks_here)
    problem = memory_problem_here(plan, hardware_here, memory)
    if problem:
        raise PlanDoesNotFit(f"{source}: infeasible: {problem}")
    return notes
