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
   placement (devices, dp, tp, pp) differs from the train call's (that copy lives only
   during the call).
   extra(r, d) for a realloc node r = the receive buffer of d (its largest received message
   in one step), plus the destination weights on d when the destination call is such a
   transient copy.
   peak(d) = persistent(d) + max over call and realloc nodes covering d of extra(., d)
   (ties: the earlier node in call order, then the reallocations).
   The estimate keeps this by part (PlanMemory): each resident part (weights, gradients,
   optimizer states per model), each working part of a call (activations, KV cache, logits,
   workspace; costmodel/memory.py), transient weights copies and receive buffers.
   Feasible iff peak(d) <= device memory for every d; otherwise the reason names the device
   with the largest excess (node:slot), the bytes needed and available, and the call.
7. Critical path: from the node that ends last, walk back through whichever constraint set
   each node's start (the predecessor edge, or the node that last held the binding device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping

import numpy as np

from costmodel.plan_cost import PlanCosts
from planner.domain.augment import augmented_graph, reallocations, scheduled_nodes
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
    memory: PlanMemory       # rule 6 by part: what peak_memory_bytes and the call peaks hold
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


# Kinds of memory beside a call's parts (costmodel.memory.PART_KINDS), rule 6.
WEIGHTS_COPY = "weights_copy"        # a transient copy of a trained model's weights
RECEIVE_BUFFER = "receive_buffer"    # a reallocation's largest received message
MemoryItem = tuple[str, str, float]  # (kind, model, bytes)


@dataclass(frozen=True)
class NodeMemory:
    """What one call or reallocation node adds on its devices while it runs (rule 6's
    extra), by part: (kind, model, bytes per device of `devices`)."""

    name: str
    devices: np.ndarray
    parts: tuple[tuple[str, str, np.ndarray], ...]

    @cached_property
    def total_bytes(self) -> np.ndarray:
        return sum(amount for _, _, amount in self.parts)

    def items_at(self, position: int) -> list[MemoryItem]:
        return [(kind, model, float(amount[position])) for kind, model, amount in self.parts
                if amount[position] > 0]


@dataclass(eq=False)
class PlanMemory:
    """Rule 6 by part. Each device's peak is its resident parts (per model, on every device
    of the cluster) plus the parts of the node that sets its peak; each call's peak is the
    same at the call's highest device. The breakdowns are built when first read."""

    resident: list[tuple[str, str, np.ndarray]]   # (kind, model, bytes per cluster device)
    nodes: list[NodeMemory]                        # calls in call order, then reallocations
    persistent_bytes: np.ndarray                   # per device: the resident parts' sum
    peak_bytes: np.ndarray                         # per device
    peak_node_index: np.ndarray                    # per device: index into nodes, -1: none
    peak_position: np.ndarray                      # per device: its position in that node
    call_peak_device: dict[str, int]
    call_peak_bytes: dict[str, float]

    def peak_node(self, device: int) -> str | None:
        """The call or reallocation during which `device` reaches its peak."""
        k = int(self.peak_node_index[device])
        return None if k < 0 else self.nodes[k].name

    def resident_items(self, device: int) -> list[MemoryItem]:
        return [(kind, model, float(layer[device])) for kind, model, layer in self.resident
                if layer[device] > 0]

    @cached_property
    def device_parts(self) -> dict[int, list[MemoryItem]]:
        """Device -> the parts of its peak; they add up to peak_bytes[device]."""
        parts = {}
        for d in range(len(self.peak_bytes)):
            k = int(self.peak_node_index[d])
            node = [] if k < 0 else self.nodes[k].items_at(int(self.peak_position[d]))
            parts[d] = self.resident_items(d) + node
        return parts

    @cached_property
    def call_parts(self) -> dict[str, list[MemoryItem]]:
        """Call -> the parts at its highest device; they add up to call_peak_bytes[call]."""
        nodes = {node.name: node for node in self.nodes[:len(self.call_peak_device)]}
        parts = {}
        for call, device in self.call_peak_device.items():
            node = nodes[call]
            position = int(np.flatnonzero(node.devices == device)[0])
            parts[call] = self.resident_items(device) + node.items_at(position)
        return parts


def _resident_layers(workflow: Workflow, executions: Mapping[str, Execution],
                     costs: PlanCosts, trained: dict, num_devices: int
                     ) -> list[tuple[str, str, np.ndarray]]:
    """(kind, model, bytes per cluster device) of every resident part (rule 6)."""
    layers = []
    for model, (train_call, ex) in trained.items():
        for kind, amount in costs.call_memory(train_call, ex).resident_parts():
            layer = np.zeros(num_devices)
            layer[list(ex.devices)] = amount
            layers.append((kind, model, layer))
    for model in workflow.models:
        if model in trained:
            continue
        layer, seen = np.zeros(num_devices), set()
        for name in workflow.calls_of_model(model):
            ex = executions[name]
            if ex.placement not in seen:
                seen.add(ex.placement)
                layer[list(ex.devices)] += costs.call_memory(name, ex).weights_bytes
        layers.append(("weights", model, layer))
    return layers


def _call_nodes(workflow: Workflow, executions: Mapping[str, Execution], costs: PlanCosts,
                trained: dict) -> list[NodeMemory]:
    """Each call's working parts, plus its weights when it is a transient copy."""
    nodes = []
    for name in workflow.call_order:
        ex, model = executions[name], workflow.call_by_name[name].model
        mem = costs.call_memory(name, ex)
        parts = [(kind, model, amount) for kind, amount in mem.working_parts()]
        if _is_transient(workflow, executions, trained, name):
            parts.append((WEIGHTS_COPY, model, mem.weights_bytes))
        nodes.append(NodeMemory(name, np.array(ex.devices), tuple(parts)))
    return nodes


def _realloc_nodes(workflow: Workflow, executions: Mapping[str, Execution], costs: PlanCosts,
                   trained: dict) -> list[NodeMemory]:
    """Each reallocation's receive buffers, plus the destination weights on the receivers
    when the destination call is a transient copy."""
    nodes = []
    for move in reallocations(workflow, executions):
        src, dst = executions[move.src_call], executions[move.dst_call]
        buffers = costs.realloc(move.model, src, dst).receive_buffer_bytes
        copy = {}
        if _is_transient(workflow, executions, trained, move.dst_call):
            weights = costs.call_memory(move.dst_call, dst).weights_bytes
            copy = dict(zip(dst.devices, weights))
        devices = np.array(sorted(set(buffers) | set(copy)), dtype=np.int64)
        parts = [(RECEIVE_BUFFER, move.model,
                  np.array([buffers.get(d, 0.0) for d in devices], dtype=float))]
        if copy:
            parts.append((WEIGHTS_COPY, move.model,
                          np.array([copy.get(d, 0.0) for d in devices], dtype=float)))
        nodes.append(NodeMemory(move.name, devices, tuple(parts)))
    return nodes


def plan_memory(workflow: Workflow, cluster: ClusterSpec, executions: Mapping[str, Execution],
                costs: PlanCosts) -> PlanMemory:
    """Rule 6: persistent(d), peak(d), the node setting it and each call's peak, by part."""
    n = cluster.num_devices
    trained = trained_executions(workflow, executions)
    resident = _resident_layers(workflow, executions, costs, trained, n)
    call_nodes = _call_nodes(workflow, executions, costs, trained)
    nodes = call_nodes + _realloc_nodes(workflow, executions, costs, trained)
    persistent = sum((layer for _, _, layer in resident), np.zeros(n))
    extra, owner, position = np.zeros(n), np.full(n, -1), np.zeros(n, dtype=np.int64)
    for k, node in enumerate(nodes):
        amount = node.total_bytes
        higher = amount > extra[node.devices]   # ties: the earlier node keeps the peak
        devices = node.devices[higher]
        extra[devices], owner[devices] = amount[higher], k
        position[devices] = np.flatnonzero(higher)
    call_device, call_peak = {}, {}
    for node in call_nodes:
        totals = persistent[node.devices] + node.total_bytes
        best = int(np.argmax(totals))
        call_device[node.name] = int(node.devices[best])
        call_peak[node.name] = float(totals[best])
    return PlanMemory(resident=resident, nodes=nodes, persistent_bytes=persistent,
                      peak_bytes=persistent + extra, peak_node_index=owner,
                      peak_position=position, call_peak_device=call_device,
                      call_peak_bytes=call_peak)


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


def memory_reason(cluster: ClusterSpec, memory: PlanMemory) -> str | None:
    """None when every device fits; else one line naming the worst device (rule 6)."""
    capacity = np.array([cluster.usable_memory_bytes(d) for d in range(cluster.num_devices)])
    peak, persistent = memory.peak_bytes, memory.persistent_bytes
    excess = peak - capacity
    worst = int(np.argmax(excess))
    if excess[worst] <= 0:
        return None
    where = f"{cluster.device_node[worst]}:{cluster.slot_of(worst)}"
    node = memory.peak_node(worst)
    during = f" during {node}" if node else ""
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
                    memory=memory, node_times={n: (start_of[n], end_of[n]) for n in start_of})


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
