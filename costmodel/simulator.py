"""The plan simulator: list-schedule the augmented graph, and check memory.

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
6. Memory per device d:
   persistent(d) = sum over models: a trained model (one with a train call; its first train
   call if several) adds its train state (weights + grads + optimizer states) on d when d is
   in the train mesh; an untrained model adds the weights of each distinct placement of its
   calls that covers d.
   extra(c, d) for a call c covering d = its working set (activations / KV cache / logits /
   workspace), plus c's weights on d when c is a non-train call of a trained model whose
   placement (devices, dp, tp, pp) differs from the train call's (that copy lives only during the call).
   extra(r, d) for a realloc node r = the receive buffer of d (its largest received message
   in one step), plus the destination weights on d when the destination call is such a
   transient copy.
   peak(d) = persistent(d) + max over call and realloc nodes covering d of extra(., d).
   Feasible iff peak(d) <= device memory for every d; otherwise the reason names the device
   with the largest excess (node:slot), the bytes needed and available, and the call.
7. Critical path: from the node that ends last, walk back through whichever constraint set
   each node's start (the predecessor edge, or the node that last held the binding device).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from costmodel.plan_cost import PlanCosts
from planner.domain.augment import augmented_graph, scheduled_nodes
from planner.domain.cluster import ClusterSpec
from planner.domain.hardware import GIB
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
    node_times: dict[str, tuple[float, float]] = field(default_factory=dict)


def trained_executions(workflow: Workflow, executions: Mapping[str, Execution]
                       ) -> dict[str, tuple[str, Execution]]:
    """Model role -> (its first train call, that call's execution)."""
    result = {}
    for name in workflow.call_order:
        call = workflow.call_by_name[name]
        if call.kind == "train" and call.model not in result:
            result[call.model] = (name, executions[name])
    return result


def _is_transient(workflow, executions, trained, call_name: str) -> bool:
    call = workflow.call_by_name[call_name]
    return (call.kind != "train" and call.model in trained
            and executions[call_name].placement != trained[call.model][1].placement)


def memory_per_device(workflow: Workflow, cluster: ClusterSpec,
                      executions: Mapping[str, Execution], costs: PlanCosts
                      ) -> tuple[np.ndarray, np.ndarray, list[str | None], dict[str, float]]:
    """persistent(d), peak(d), the node setting each device's peak, and each call's peak."""
    n = cluster.num_devices
    trained = trained_executions(workflow, executions)
    persistent = np.zeros(n)
    for model, (train_call, ex) in trained.items():
        persistent[list(ex.devices)] += costs.call_memory(train_call, ex).train_state_bytes
    for model in workflow.models:
        if model in trained:
            continue
        seen = set()
        for name in workflow.calls_of_model(model):
            ex = executions[name]
            if ex.placement not in seen:
                seen.add(ex.placement)
                persistent[list(ex.devices)] += costs.call_memory(name, ex).weights_bytes
    extra = np.zeros(n)
    extra_node: list[str | None] = [None] * n
    call_extra: dict[str, np.ndarray] = {}

    def add(label: str, devices: list[int], amount: np.ndarray) -> None:
        for d, value in zip(devices, amount):
            if value > extra[d]:
                extra[d], extra_node[d] = value, label

    for name in workflow.call_order:
        ex = executions[name]
        mem = costs.call_memory(name, ex)
        amount = mem.working_bytes + (mem.weights_bytes if _is_transient(
            workflow, executions, trained, name) else 0.0)
        call_extra[name] = amount
        add(name, list(ex.devices), amount)
    from planner.domain.augment import reallocations
    for move in reallocations(workflow, executions):
        src, dst = executions[move.src_call], executions[move.dst_call]
        cost = costs.realloc(move.model, src, dst)
        buffers = dict(cost.receive_buffer_bytes)
        if _is_transient(workflow, executions, trained, move.dst_call):
            weights = costs.call_memory(move.dst_call, dst).weights_bytes
            for d, w in zip(dst.devices, weights):
                buffers[d] = buffers.get(d, 0.0) + w
        for d, value in buffers.items():
            add(move.name, [d], [value])
    peak = persistent + extra
    call_peak = {name: float(np.max(persistent[list(executions[name].devices)]
                                    + call_extra[name])) for name in workflow.call_order}
    return persistent, peak, extra_node, call_peak


def memory_reason(cluster: ClusterSpec, persistent: np.ndarray, peak: np.ndarray,
                  extra_node: list[str | None]) -> str | None:
    """None when every device fits; else one line naming the worst device (rule 6)."""
    capacity = np.array([cluster.usable_memory_bytes(d) for d in range(cluster.num_devices)])
    excess = peak - capacity
    worst = int(np.argmax(excess))
    if excess[worst] <= 0:
        return None
    where = f"{cluster.device_node[worst]}:{cluster.slot_of(worst)}"
    during = f" during {extra_node[worst]}" if extra_node[worst] else ""
    return (f"device {where} needs {peak[worst] / GIB:.1f} GiB{during} (resident models "
            f"{persistent[worst] / GIB:.1f} GiB + {(peak[worst] - persistent[worst]) / GIB:.1f} "
            f"GiB working set), has {capacity[worst] / GIB:.1f} GiB"
            + (f" after the {cluster.memory_headroom_gib:g} GiB headroom"
               if cluster.memory_headroom_gib else ""))


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
    persistent, peak, extra_node, call_peak = memory_per_device(workflow, cluster, executions,
                                                                costs)
    reason = memory_reason(cluster, persistent, peak, extra_node)
    return Estimate(iteration_s=iteration_s, call_times_s=call_times,
                    realloc_times_s=realloc_times, transfer_times_s=transfer_times,
                    timeline=timeline,
                    peak_memory_bytes={d: float(peak[d]) for d in range(cluster.num_devices)},
                    call_peak_memory_bytes=call_peak, feasible=reason is None, reason=reason,
                    critical_path=path[::-1], compute_source=", ".join(sorted(sources)),
                    node_times={n: (start_of[n], end_of[n]) for n in start_of})


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
    persistent, peak, extra_node, _ = memory_per_device(workflow, cluster, executions, costs)
    return memory_reason(cluster, persistent, peak, extra_node)
