"""The plan simulator: list-schedule the augmented graph, and check memory (plan_memory.py).

Semantics (a vectorised re-implementation must reproduce exactly these):

1. Graph: planner.domain.augment.augmented_graph(workflow, executions, K, s), s the plan's
   staleness (0: synchronous), K = DEFAULT_ITERATIONS + 2 s by default (simulated_iterations:
   s iterations of start-up before the pipeline of stale generation is full, and as many
   again so the steady state is measured over at least DEFAULT_ITERATIONS - 1 + s of them).
2. Priority order: planner.domain.augment.scheduled_nodes (shared with the fast evaluator
   and the executor): iteration by iteration; within an iteration the calls in
   workflow.call_order, each reallocation node placed immediately before its destination
   call (a wrapping reallocation of iteration i goes right before its destination call in
   iteration i+1).
3. Durations: a call node takes PlanCosts.call_time; a realloc node PlanCosts.realloc
   (its model, source call's execution -> destination call's execution). With s >= 1 a
   rollout model's train call adds PlanCosts.proximal_time (phase "proximal_logprobs"), and
   a weight push node takes PlanCosts.realloc(model, train call's execution, generate call's
   execution), 0 when the two hold the parameters alike (a local copy on the same devices,
   as a reallocation between equal placements costs nothing).
4. A node starts at max(end of every predecessor, plus the transfer time on a data edge
   with transfer=True (the transfer delays the consumer and occupies no device); the time
   every one of its devices becomes free). It ends start + duration; its devices are busy
   until then. A realloc or push node's devices are the union of its source and
   destination meshes (the senders and receivers of the transfer schedule). On a CPU node
   with fewer cores than devices (known from the calibration), the calls running at once
   share its cores: each progresses at min(1, cores / cores they need together) of its
   speed alone, and the schedule is simulated event by event
   (costmodel/core_sharing.py; with no such node, every rate is 1 and this is the list
   schedule above).
5. Steady-state iteration time = (end(K-1) - end(s)) / (K-1-s), end(i) = max end over the
   nodes of iteration i in the priority order: its call nodes and the reallocation and push
   nodes placed before them (so a wrapping reallocation out of iteration i counts in i+1,
   where it runs; counting it in i would make end(0) late and the estimate too short).
   With core-limited nodes (rule 4), at least the seconds per iteration the busiest one's
   cores need for one iteration's calls (core_sharing.core_work_s: the long-run period a
   few simulated iterations can undercut).
   Iterations up to s generate on the initial weights without waiting for any push, so the
   steady state starts after them. The staleness reached: the largest i - v over the
   generate calls of iteration i, v the version they read (1 + the last j whose push(j)
   ended by the call's start; 0 if none); 0 when s = 0 (generation reads the training copy).
6. Memory: costmodel/plan_memory.py (rule 6 there): per device, the resident models plus the
   largest working set of a call or reallocation on it, by part. Feasible iff every device
   fits and every time is finite.
7. Critical path: from the node that ends last, walk back through whichever constraint set
   each node's start (the predecessor edge, or the node that last held the binding device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from costmodel.core_sharing import (
    ScheduledWork,
    core_demand,
    core_limited_nodes,
    core_work_s,
    shared_core_schedule,
)
from costmodel.plan_cost import PROXIMAL_PHASE, PlanCosts
from costmodel.plan_memory import PlanMemory, memory_reason, plan_memory
from planner.domain.augment import (
    augmented_graph,
    call_node,
    holds_parameters_alike,
    rollout_models,
    scheduled_nodes,
    weight_pushes,
)
from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import Workflow

DEFAULT_ITERATIONS = 3


def simulated_iterations(staleness: int) -> int:
    """Iterations simulated by default for a plan of staleness s (module docstring, rule 1)."""
    return DEFAULT_ITERATIONS + 2 * staleness


@dataclass
class Estimate:
    """What the simulator reports for one plan."""

    iteration_s: float
    call_times_s: dict[str, float]
    realloc_times_s: dict[str, float]
    transfer_times_s: dict[str, float]
    timeline: dict[int, list[tuple[float, float, str]]]
    peak_memory_bytes: dict[int, float]
    call_peak_memory_bytes: dict[str, float]
    feasible: bool
    reason: str | None
    critical_path: list[str]
    compute_source: str
    memory: PlanMemory       # rule 6 by part: what peak_memory_bytes and the call peaks hold
    node_times: dict[str, tuple[float, float]] = field(default_factory=dict)
    # per call, the seconds of each phase of its time (costmodel.call_cost.CallTime.phases_s)
    call_phases_s: dict[str, dict[str, float]] = field(default_factory=dict)
    # staleness >= 1: each weight push's seconds by name (WeightPush.name), the plan's
    # staleness, and the staleness the simulated schedule reached (rule 5)
    push_times_s: dict[str, float] = field(default_factory=dict)
    staleness: int = 0
    staleness_reached: int = 0


def not_finite_reason(call_times: dict[str, float], realloc_times: dict[str, float],
                      transfer_times: dict[str, float], iteration_s: float) -> str | None:
    """Why the estimate is not a number a plan can be judged by (a NaN or infinite time,
    from a profile or calibration that slipped past the input checks), or None. Such an
    estimate is never feasible."""
    for kind, times in (("call", call_times), ("reallocation", realloc_times),
                        ("transfer", transfer_times)):
        for name, seconds in times.items():
            if not math.isfinite(seconds):
                return f"{kind} {name} is estimated at {seconds} s, not a finite time"
    if not math.isfinite(iteration_s):
        return f"the iteration is estimated at {iteration_s} s, not a finite time"
    return None


def list_schedule(order: list[str], work: dict[str, ScheduledWork], num_devices: int
                  ) -> tuple[dict[str, float], dict[str, float], dict[str, str | None]]:
    """(start, end, binding) of every node by rule 4 in the priority order `order`."""
    free = np.zeros(num_devices)
    holder: list[str | None] = [None] * num_devices
    start_of: dict[str, float] = {}
    end_of: dict[str, float] = {}
    binding: dict[str, str | None] = {}
    for node in order:
        w = work[node]
        ready, bound = 0.0, None
        for pred, delay in w.preds:
            if end_of[pred] + delay > ready:
                ready, bound = end_of[pred] + delay, pred
        devices = list(w.devices)
        busy_index = int(np.argmax(free[devices]))
        if free[devices][busy_index] > ready:
            ready, bound = float(free[devices][busy_index]), holder[devices[busy_index]]
        start_of[node], end_of[node], binding[node] = ready, ready + w.duration_s, bound
        free[devices] = ready + w.duration_s
        for d in devices:
            holder[d] = node
    return start_of, end_of, binding


def simulate(workflow: Workflow, cluster: ClusterSpec, executions: Mapping[str, Execution],
             num_iterations: int | None = None, costs: PlanCosts | None = None,
             profiles_dir: Path = PROFILES_DIR, staleness: int = 0) -> Estimate:
    """Estimate one plan (module docstring). `costs` may be shared across plans;
    num_iterations defaults to simulated_iterations(staleness)."""
    if num_iterations is None:
        num_iterations = simulated_iterations(staleness)
    if num_iterations < staleness + 2:
        raise ValueError(f"num_iterations {num_iterations} must be at least staleness "
                         f"{staleness} + 2")
    costs = costs or PlanCosts(workflow, cluster, profiles_dir)
    graph = augmented_graph(workflow, executions, num_iterations, staleness)
    proximal = {name for name in workflow.call_order if staleness
                and workflow.call_by_name[name].kind == "train"
                and workflow.call_by_name[name].model in rollout_models(workflow)}
    limited = core_limited_nodes(cluster, costs.calibration)
    work: dict[str, ScheduledWork] = {}
    call_times, realloc_times, transfer_times, push_times = {}, {}, {}, {}
    call_phases: dict[str, dict[str, float]] = {}
    sources: set[str] = set()
    timeline: dict[int, list[tuple[float, float, str]]] = {}
    scheduled = scheduled_nodes(workflow, executions, num_iterations, staleness)
    order = [node.name for node in scheduled]
    # Rule 5: a node counts in the iteration it runs in (a wrapping reallocation out of
    # iteration i runs, and counts, in i + 1, right before its destination call).
    iteration_group = {node.name: node.iteration for node in scheduled}
    for node in order:
        attrs = graph.nodes[node]
        if attrs["kind"] == "call":
            result = costs.call_time(attrs["call"], executions[attrs["call"]])
            duration = result.time_s
            sources.update(s for s in result.source.split(", ") if s)
            call_phases[attrs["call"]] = dict(result.phases_s)
            if attrs["call"] in proximal:
                forward = costs.proximal_time(attrs["call"], executions[attrs["call"]])
                call_phases[attrs["call"]][PROXIMAL_PHASE] = forward
                duration += forward
            call_times[attrs["call"]] = duration
        elif attrs["kind"] == "push":
            src, dst = executions[attrs["src"]], executions[attrs["dst"]]
            duration = 0.0 if holds_parameters_alike(src, dst) else \
                costs.realloc(attrs["model"], src, dst).time_s
            push_times[node.split("/", 1)[1]] = duration
        else:
            src, dst = executions[attrs["src"]], executions[attrs["dst"]]
            duration = costs.realloc(attrs["model"], src, dst).time_s
            realloc_times[node.split("/", 1)[1]] = duration
        preds = []
        for pred in graph.predecessors(node):
            delay = 0.0
            if graph.edges[pred, node].get("transfer"):
                pa = graph.nodes[pred]
                delay = costs.transfer(pa["call"], attrs["call"], executions[pa["call"]],
                                       executions[attrs["call"]]).time_s
                transfer_times[f"{pa['call']}->{attrs['call']}"] = delay
            preds.append((pred, delay))
        demand = core_demand(executions[attrs["call"]], cluster, limited) \
            if attrs["kind"] == "call" and limited else {}
        work[node] = ScheduledWork(tuple(attrs["devices"]), duration, demand, tuple(preds))
    start_of, end_of, binding = (shared_core_schedule(order, work, limited) if limited
                                 else list_schedule(order, work, cluster.num_devices))
    for node in order:
        for d in work[node].devices:
            timeline.setdefault(d, []).append((start_of[node], end_of[node], node))
    iteration_end = [0.0] * num_iterations
    for node, group in iteration_group.items():
        iteration_end[group] = max(iteration_end[group], end_of[node])
    iteration_s = (iteration_end[-1] - iteration_end[staleness]) / \
        (num_iterations - 1 - staleness)
    if limited:
        iteration_s = max(iteration_s, core_work_s(call_times, executions, cluster, limited))
    path, node = [], max(end_of, key=end_of.get)
    while node is not None:
        path.append(node)
        node = binding[node]
    memory = plan_memory(workflow, cluster, executions, costs, staleness)
    reason = not_finite_reason(call_times, {**realloc_times, **push_times}, transfer_times,
                               iteration_s) or memory_reason(cluster, memory)
    return Estimate(iteration_s=iteration_s, call_times_s=call_times,
                    realloc_times_s=realloc_times, transfer_times_s=transfer_times,
                    timeline=timeline,
                    peak_memory_bytes={d: float(memory.peak_bytes[d])
                                       for d in range(cluster.num_devices)},
                    call_peak_memory_bytes=dict(memory.call_peak_bytes),
                    feasible=reason is None, reason=reason,
                    critical_path=path[::-1], compute_source=", ".join(sorted(sources)),
                    memory=memory, node_times={n: (start_of[n], end_of[n]) for n in start_of},
                    call_phases_s=call_phases, push_times_s=push_times, staleness=staleness,
                    staleness_reached=staleness_reached(workflow, staleness, num_iterations,
                                                        start_of, end_of))


def staleness_reached(workflow: Workflow, staleness: int, num_iterations: int,
                      start_of: Mapping[str, float], end_of: Mapping[str, float]) -> int:
    """Rule 5: the largest i - (version read) over the rollout models' generate calls."""
    reached = 0
    for push in weight_pushes(workflow, staleness):
        generate = [c for c in workflow.calls_of_model(push.model)
                    if workflow.call_by_name[c].kind == "generate"]
        pushed = [end_of[f"{j}/{push.name}"] for j in range(num_iterations - staleness - 1)]
        for i in range(num_iterations):
            for call in generate:
                start = start_of[call_node(i, call)]
                version = 1 + max((j for j, end in enumerate(pushed) if end <= start),
                                  default=-1)
                reached = max(reached, i - version)
    return reached


def estimate_plan(plan, num_iterations: int | None = None,
                  costs: PlanCosts | None = None, staleness: int | None = None) -> Estimate:
    """`simulate` for a planner.domain.plan.Plan, at the plan's staleness unless given."""
    staleness = plan.staleness if staleness is None else staleness
    return simulate(plan.workflow, plan.cluster, plan.executions, num_iterations, costs,
                    staleness=staleness)


def memory_problem(plan, costs: PlanCosts | None = None) -> str | None:
    """Why the plan does not fit in device memory (rule 6), or None."""
    return executions_memory_problem(plan.workflow, plan.cluster, plan.executions, costs,
                                     plan.staleness)


def executions_memory_problem(workflow: Workflow, cluster: ClusterSpec,
                              executions: Mapping[str, Execution],
                              costs: PlanCosts | None = None,
                              staleness: int = 0) -> str | None:
    """Rule 6 for one assignment of executions to calls: the reason it does not fit, or None."""
    costs = costs or PlanCosts(workflow, cluster)
    return memory_reason(cluster, plan_memory(workflow, cluster, executions, costs,
                                              staleness))
