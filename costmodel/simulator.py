"""The plan simulator: list-schedule the augmented graph, and check memory (plan_memory.py).

Semantics (a vectorised re-implementation must reproduce exactly these):

1. Graph: planner.domain.augment.augmented_graph(workflow, executions, K), K = 3 by default.
2. Priority order: planner.domain.augment.scheduled_nodes (shared with the fast evaluator
   and the executor): iteration by iteration; within an iteration the calls in
   workflow.call_order, each reallocation node placed immediately before its destination
   call (a wrapping reallocation of iteration i goes right before its destination call in
   iteration i+1).
3. Durations: a call node takes PlanCosts.call_time; a realloc node PlanCosts.realloc
   (its model, source call's execution -> destination call's execution).
4. A node starts at max(end of every predecessor, plus the transfer time on a data edge
   with transfer=True (the transfer delays the consumer and occupies no device); the time
   every one of its devices becomes free). It ends start + duration; its devices are busy
   until then. A realloc node's devices are the union of its source and destination meshes.
5. Steady-state iteration time = (end(K-1) - end(0)) / (K-1), end(i) = max end over the
   nodes of iteration i in the priority order: its call nodes and the reallocation nodes
   placed before them (so a wrapping reallocation out of iteration i counts in i+1, where
   it runs; counting it in i would make end(0) late and the estimate too short).
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

from costmodel.plan_cost import PlanCosts
from costmodel.plan_memory import PlanMemory, memory_reason, plan_memory
from planner.domain.augment import augmented_graph, scheduled_nodes
from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import Workflow

DEFAULT_ITERATIONS = 3


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


def simulate(workflow: Workflow, cluster: ClusterSpec, executions: Mapping[str, Execution],
             num_iterations: int = DEFAULT_ITERATIONS, costs: PlanCosts | None = None,
             profiles_dir: Path = PROFILES_DIR) -> Estimate:
    """Estimate one plan (module docstring). `costs` may be shared across plans."""
    if num_iterations < 2:
        raise ValueError(f"num_iterations {num_iterations} must be at least 2")
    costs = costs or PlanCosts(workflow, cluster, profiles_dir)
    graph = augmented_graph(workflow, executions, num_iterations)
    free = np.zeros(cluster.num_devices)
    holder: list[str | None] = [None] * cluster.num_devices
    start_of: dict[str, float] = {}
    end_of: dict[str, float] = {}
    binding: dict[str, str | None] = {}
    call_times, realloc_times, transfer_times = {}, {}, {}
    call_phases: dict[str, dict[str, float]] = {}
    sources: set[str] = set()
    timeline: dict[int, list[tuple[float, float, str]]] = {}
    scheduled = scheduled_nodes(workflow, executions, num_iterations)
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
            call_times[attrs["call"]] = duration
            call_phases[attrs["call"]] = dict(result.phases_s)
        else:
            src, dst = executions[attrs["src"]], executions[attrs["dst"]]
            duration = costs.realloc(attrs["model"], src, dst).time_s
            realloc_times[node.split("/", 1)[1]] = duration
        ready, bound = 0.0, None
        for pred in graph.predecessors(node):
            edge = graph.edges[pred, node]
            t = end_of[pred]
            if edge.get("transfer"):
                pa = graph.nodes[pred]
                cost = costs.transfer(pa["call"], attrs["call"], executions[pa["call"]],
                                      executions[attrs["call"]])
                t += cost.time_s
                transfer_times[f"{pa['call']}->{attrs['call']}"] = cost.time_s
            if t > ready:
                ready, bound = t, pred
        devices = list(attrs["devices"])
        busy_index = int(np.argmax(free[devices]))
        if free[devices][busy_index] > ready:
            ready, bound = float(free[devices][busy_index]), holder[devices[busy_index]]
        start_of[node], end_of[node], binding[node] = ready, ready + duration, bound
        free[devices] = ready + duration
        for d in devices:
            holder[d] = node
            timeline.setdefault(d, []).append((ready, ready + duration, node))
    iteration_end = [0.0] * num_iterations
    for node, group in iteration_group.items():
        iteration_end[group] = max(iteration_end[group], end_of[node])
    iteration_s = (iteration_end[-1] - iteration_end[0]) / (num_iterations - 1)
    path, node = [], max(end_of, key=end_of.get)
    while node is not None:
        path.append(node)
        node = binding[node]
    memory = plan_memory(workflow, cluster, executions, costs)
    reason = not_finite_reason(call_times, realloc_times, transfer_times, iteration_s) \
        or memory_reason(cluster, memory)
    return Estimate(iteration_s=iteration_s, call_times_s=call_times,
                    realloc_times_s=realloc_times, transfer_times_s=transfer_times,
                    timeline=timeline,
                    peak_memory_bytes={d: float(memory.peak_bytes[d])
                                       for d in range(cluster.num_devices)},
                    call_peak_memory_bytes=dict(memory.call_peak_bytes),
                    feasible=reason is None, reason=reason,
                    critical_path=path[::-1], compute_source=", ".join(sorted(sources)),
                    memory=memory, node_times={n: (start_of[n], end_of[n]) for n in start_of},
                    call_phases_s=call_phases)


def estimate_plan(plan, num_iterations: int = DEFAULT_ITERATIONS,
                  costs: PlanCosts | None = None) -> Estimate:
    """`simulate` for a planner.domain.plan.Plan."""
    return simulate(plan.workflow, plan.cluster, plan.executions, num_iterations, costs)


def memory_problem(plan, costs: PlanCosts | None = None) -> str | None:
    """Why the plan does not fit in device memory (rule 6), or None."""
    return executions_memory_problem(plan.workflow, plan.cluster, plan.executions, costs)


def executions_memory_problem(workflow: Workflow, cluster: ClusterSpec,
                              executions: Mapping[str, Execution],
                              costs: PlanCosts | None = None) -> str | None:
    """Rule 6 for one assignment of executions to calls: the reason it does not fit, or None."""
    costs = costs or PlanCosts(workflow, cluster)
    return memory_reason(cluster, plan_memory(workflow, cluster, executions, costs))
