"""Memory of a plan per device and per call, by part: the simulator's rule 6.

The compiled copy of this rule in planner/search/fast_evaluator.py bounds it from above and
equals it where no call is pipelined (tests/search/test_fast_memory.py). Per device d:

persistent(d) = sum over models: a trained model (one with a train call; its first train
call if several) adds its train state (weights + grads + optimizer states) on d when d is
in the train mesh; an untrained model adds the weights of each distinct placement of its
calls that covers d.
extra(c, d) for a call c covering d = its working set (activations / KV cache / logits /
workspace, and under FSDP / ZeRO-3 the gathered parameters and unsharded gradients), plus
every transient weights copy alive on d while c runs (below).
extra(r, d) for a realloc node r = the message buffers of d (the bytes it sends plus the
bytes it receives in its largest step, costmodel/realloc_cost.py), plus every transient copy
alive on d while r runs.
A transient copy is a trained model's weights held for a non-train call whose placement
(devices, dp, tp, pp) differs from the train call's, or that holds the weights otherwise
than a train call sharding them over dp (Execution.shard_parameters_over_dp: the sharded
train state has no full copy a call on the same placement could use, as verl's rollout
engine keeps its own). It lives as the runtime keeps it (runtime/executor/steps.py, the
worker's run_realloc): made by the reallocation into its call (in the first iteration the
model's first call makes its own), through every call and reallocation of the priority order
(planner.domain.augment.scheduled_nodes) up to and including the reallocation out of it,
which reads it as its source; so a call of another model on the same devices in between
holds it too (live_copies).
peak(d) = persistent(d) + max over call, realloc and push nodes covering d of extra(., d)
(ties: the earlier node in call order, then the reallocations, then the pushes).
Staleness s >= 1 (planner/domain/augment.py): a rollout model's rollout copy is resident on
its generate placement (ROLLOUT_COPY: the weights of that placement on each of its devices,
beside the train state, also where the two placements share devices), its generate calls
hold no transient copy (they read the rollout copy), and a weight push node needs the
message buffers of its reallocation (train call's execution -> generate call's), plus the
transient copies alive on its devices, as a reallocation does (with s = 1 the push runs as a
reallocation at its node, runtime/executor/weight_push.py). With s >= 2 the senders of
push(j) pack their outgoing messages and copy their local pieces right after train(j) and
keep them until push(j) (runtime/executor/weight_push.py post_push): PUSH_SENDS, on each
device of the train mesh the bytes of the schedule's pieces it sends or copies (with equal
placements, its whole training weights), during every node on it from right after train(j)
through push(j), as many pushes at once as the priority order holds (posted_sends), and
the push node itself needs only the receive buffers. With s = 0 none of this.
The estimate keeps this by part (PlanMemory): each resident part (weights, gradients,
optimizer states per model), each working part of a call (activations, KV cache, logits,
workspace; costmodel/memory.py), transient weights copies and message buffers.
Feasible iff peak(d) <= device memory for every d; otherwise the reason names the device
with the largest excess (node:slot), the bytes needed and available, and the call.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Mapping

import numpy as np

from costmodel.plan_cost import PlanCosts
from planner.domain.augment import (
    holds_parameters_alike,
    reallocations,
    rollout_models,
    scheduled_nodes,
    weight_pushes,
)
from planner.domain.cluster import ClusterSpec
from planner.domain.hardware import GIB
from planner.domain.layout import Execution
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.domain.placement import Placement
from planner.domain.workflow import Workflow
from planner.sharding.transfer_schedule import param_schedule


def trained_executions(workflow: Workflow, executions: Mapping[str, Execution]
                       ) -> dict[str, tuple[str, Execution]]:
    """Model role -> (its first train call, that call's execution)."""
    result = {}
    for name in workflow.call_order:
        call = workflow.call_by_name[name]
        if call.kind == "train" and call.model not in result:
            result[call.model] = (name, executions[name])
    return result


def _holding(ex: Execution) -> tuple:
    """What tells two holdings of a model's weights apart (augment.holds_parameters_alike)."""
    return ex.placement, ex.shard_parameters_over_dp


def _reads_rollout_copy(workflow: Workflow, call_name: str, staleness: int) -> bool:
    """A generate call of a rollout model under staleness >= 1 reads the rollout copy."""
    call = workflow.call_by_name[call_name]
    return bool(staleness) and call.kind == "generate" and call.model in rollout_models(workflow)


def _is_transient(workflow, executions, trained, call_name: str, staleness: int = 0) -> bool:
    call = workflow.call_by_name[call_name]
    if call.kind == "train" or call.model not in trained \
            or _reads_rollout_copy(workflow, call_name, staleness):
        return False
    return _holding(executions[call_name]) != _holding(trained[call.model][1])


# Two iterations: the first (no wrapping reallocations) and the steady state; a node holds
# the copies alive during it in either.
_LIFETIME_ITERATIONS = 2


def live_copies(workflow: Workflow, executions: Mapping[str, Execution], trained: dict,
                staleness: int = 0) -> dict[str, list[str]]:
    """Node name (a call, or a reallocation's move name, or a weight push's name) -> the
    calls whose transient copy (module docstring) is alive while it runs, one call per copy:
    the first of the model's calls holding it. Mirrors the worker: a move makes its
    destination copy unless that is the home, and frees its source after itself unless that
    is the home; a call whose copy is not there yet (the model's first call, first
    iteration) makes it; a push writes the resident rollout copy and makes or frees none."""
    holder = {}  # (model, holding) -> the first call holding it
    for name in workflow.call_order:
        model = workflow.call_by_name[name].model
        if _is_transient(workflow, executions, trained, name, staleness):
            holder.setdefault((model, _holding(executions[name])), name)
    alive: set = set()
    during: dict[str, list[str]] = {}

    def record(node: str) -> None:
        seen = during.setdefault(node, [])
        seen.extend(holder[key] for key in sorted(alive, key=lambda k: holder[k])
                    if holder[key] not in seen)

    # with staleness s the first push runs in iteration s + 1
    for node in scheduled_nodes(workflow, executions, _LIFETIME_ITERATIONS + staleness,
                                staleness):
        if node.push is not None:
            record(node.push.name)
            continue
        move = node.move
        if move is None:
            own = (workflow.call_by_name[node.call].model, _holding(executions[node.call]))
            if own in holder:
                alive.add(own)
            record(node.call)
            continue
        dst = (move.model, _holding(executions[move.dst_call]))
        if dst in holder:
            alive.add(dst)
        record(move.name)
        alive.discard((move.model, _holding(executions[move.src_call])))
    return during


def posted_sends(workflow: Workflow, executions: Mapping[str, Execution], staleness: int
                 ) -> dict[str, Counter]:
    """Node name (as live_copies names them) -> push name -> how many of that push's posted
    sends are alive while the node runs, the largest over the iterations (staleness >= 2,
    module docstring; empty otherwise). Mirrors the worker: a rank of the train call posts
    push(j) right after train(j) when push(j) exists, and push(j) finishes (and frees) it;
    the 2 + 2 s iterations walked hold, around iteration s, every node with as many posted
    sends as any later iteration."""
    if staleness < 2:
        return {}
    pushes = {push.train_call: push for push in weight_pushes(workflow, staleness)}
    num_iterations = _LIFETIME_ITERATIONS + 2 * staleness
    alive: Counter = Counter()
    during: dict[str, Counter] = {}

    def record(node: str) -> None:
        seen = during.setdefault(node, Counter())
        for name, count in alive.items():
            seen[name] = max(seen[name], count)

    for node in scheduled_nodes(workflow, executions, num_iterations, staleness):
        if node.push is not None:
            record(node.push.name)
            alive[node.push.name] -= 1
            continue
        record(node.call if node.move is None else node.move.name)
        push = pushes.get(node.call) if node.move is None else None
        if push is not None and node.iteration + staleness + 1 < num_iterations:
            alive[push.name] += 1
    return during


@lru_cache(maxsize=256)
def _schedule_send_bytes(spec: ModelSpec, head: HeadKind, src: Placement, dst: Placement,
                         cluster: ClusterSpec) -> tuple[tuple[int, float], ...]:
    """(device, bytes) each source device of the parameter schedule from `src` to `dst`
    sends or copies locally, in the source's compute dtype (what post_push packs)."""
    schedule = param_schedule(spec, head, src, dst, cluster.device_node)
    dtype_bytes = cluster.hardware_of(src.devices[0]).compute_dtype_bytes
    devices, per_device = np.unique(schedule.piece_src, return_inverse=True)
    sent = np.bincount(per_device, weights=schedule.piece_elements) * dtype_bytes
    return tuple((int(d), float(b)) for d, b in zip(devices, sent))


def push_send_bytes(workflow: Workflow, executions: Mapping[str, Execution],
                    costs: PlanCosts, staleness: int) -> dict[str, dict[int, float]]:
    """Push name -> train-mesh device -> the bytes it keeps posted per push (staleness >=
    2, module docstring): with equal placements its training weights (post_push copies
    every shard it holds), else the pieces it sends or copies in the push's schedule."""
    if staleness < 2:
        return {}
    result = {}
    for push in weight_pushes(workflow, staleness):
        src, dst = executions[push.train_call], executions[push.gen_call]
        if src.placement == dst.placement:
            weights = costs.call_memory(push.train_call, src).weights_bytes
            result[push.name] = {d: float(w) for d, w in zip(src.devices, weights)}
            continue
        role = workflow.models[push.model]
        result[push.name] = dict(_schedule_send_bytes(role.spec, role.head, src.placement,
                                                      dst.placement, costs.cluster))
    return result


# Per node: the rollout model -> device -> bytes of its posted push sends there.
Sends = dict[str, dict[int, float]]


def _sends_during(workflow: Workflow, executions: Mapping[str, Execution], costs: PlanCosts,
                  staleness: int) -> dict[str, Sends]:
    """Node name -> the posted push sends alive while it runs (Sends)."""
    per_push = push_send_bytes(workflow, executions, costs, staleness)
    model_of = {push.name: push.model for push in weight_pushes(workflow, staleness)}
    result: dict[str, Sends] = {}
    for node, counts in posted_sends(workflow, executions, staleness).items():
        result[node] = {model_of[name]: {d: count * size for d, size in per_push[name].items()}
                        for name, count in counts.items() if count > 0}
    return result


def _send_parts(sends: Sends, devices: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """The PUSH_SENDS parts on `devices` of the posted sends `sends`."""
    parts = []
    for model, held in sends.items():
        amount = np.array([held.get(int(d), 0.0) for d in devices], dtype=float)
        if amount.any():
            parts.append((PUSH_SENDS, model, amount))
    return parts


def _copy_parts(costs: PlanCosts, executions: Mapping[str, Execution], workflow: Workflow,
                copies: list[str], devices: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """WEIGHTS_COPY parts on `devices` of the copies held for the calls `copies`."""
    parts = []
    for name in copies:
        ex = executions[name]
        on = dict(zip(ex.devices, costs.call_memory(name, ex).weights_bytes))
        amount = np.array([on.get(int(d), 0.0) for d in devices], dtype=float)
        if amount.any():
            parts.append((WEIGHTS_COPY, workflow.call_by_name[name].model, amount))
    return parts


# Kinds of memory beside a call's parts (costmodel.memory.PART_KINDS), rule 6.
WEIGHTS_COPY = "weights_copy"        # a transient copy of a trained model's weights
ROLLOUT_COPY = "rollout_copy"        # staleness >= 1: a rollout model's generation weights
MESSAGE_BUFFERS = "message_buffers"  # a reallocation's largest step: sent + received bytes
PUSH_SENDS = "push_sends"            # staleness >= 2: a push's sends posted after train(j)
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
                     costs: PlanCosts, trained: dict, num_devices: int, staleness: int = 0
                     ) -> list[tuple[str, str, np.ndarray]]:
    """(kind, model, bytes per cluster device) of every resident part (rule 6)."""
    layers = []
    rollout_calls = {push.model: push.gen_call for push in weight_pushes(workflow, staleness)}
    for model, (train_call, ex) in trained.items():
        for kind, amount in costs.call_memory(train_call, ex).resident_parts():
            layer = np.zeros(num_devices)
            layer[list(ex.devices)] = amount
            layers.append((kind, model, layer))
        if model in rollout_calls:
            gen_ex = executions[rollout_calls[model]]
            layer = np.zeros(num_devices)
            layer[list(gen_ex.devices)] = costs.call_memory(rollout_calls[model],
                                                            gen_ex).weights_bytes
            layers.append((ROLLOUT_COPY, model, layer))
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
                copies: dict[str, list[str]], sends: dict[str, Sends]) -> list[NodeMemory]:
    """Each call's working parts, plus the transient copies and posted push sends alive
    on its devices."""
    nodes = []
    for name in workflow.call_order:
        ex, model = executions[name], workflow.call_by_name[name].model
        devices = np.array(ex.devices)
        parts = [(kind, model, amount)
                 for kind, amount in costs.call_memory(name, ex).working_parts()]
        parts += _copy_parts(costs, executions, workflow, copies.get(name, []), devices)
        parts += _send_parts(sends.get(name, {}), devices)
        nodes.append(NodeMemory(name, devices, tuple(parts)))
    return nodes


def _realloc_nodes(workflow: Workflow, executions: Mapping[str, Execution], costs: PlanCosts,
                   copies: dict[str, list[str]], staleness: int = 0,
                   sends: dict[str, Sends] | None = None) -> list[NodeMemory]:
    """Each reallocation's message buffers, plus the transient copies alive on its source
    and destination devices (its destination's, made by it; its source's, freed after it)."""
    nodes = []
    for move in reallocations(workflow, executions, staleness):
        src, dst = executions[move.src_call], executions[move.dst_call]
        buffers = costs.realloc(move.model, src, dst).message_buffer_bytes
        nodes.append(_moving_node(move.name, move.model, src, dst, buffers, executions,
                                  workflow, costs, copies.get(move.name, []),
                                  (sends or {}).get(move.name, {})))
    return nodes


def _moving_node(name: str, model: str, src: Execution, dst: Execution,
                 buffers: Mapping[int, float], executions: Mapping[str, Execution],
                 workflow: Workflow, costs: PlanCosts, held: list[str],
                 sends: Sends) -> NodeMemory:
    """A reallocation's or push's message `buffers` (device -> bytes), plus the transient
    copies `held` and the posted push sends `sends` alive on its source and destination
    devices."""
    holding = {d for call in held for d in executions[call].devices}
    holding |= {d for per_device in sends.values() for d in per_device}
    devices = np.array(sorted(set(buffers) | (holding
                                              & (set(src.devices) | set(dst.devices)))),
                       dtype=np.int64)
    parts = [(MESSAGE_BUFFERS, model,
              np.array([buffers.get(int(d), 0.0) for d in devices], dtype=float))]
    parts += _copy_parts(costs, executions, workflow, held, devices)
    parts += _send_parts(sends, devices)
    return NodeMemory(name, devices, tuple(parts))


def _push_nodes(workflow: Workflow, executions: Mapping[str, Execution], costs: PlanCosts,
                copies: dict[str, list[str]], staleness: int,
                sends: dict[str, Sends]) -> list[NodeMemory]:
    """Each weight push's buffers (none for a local copy between placements holding the
    parameters alike, which the simulator prices at 0 s): with staleness 1 the message
    buffers of a reallocation, with s >= 2 the receive buffers (its sends are posted after
    training, `sends`); and the transient copies alive on its devices."""
    nodes = []
    for push in weight_pushes(workflow, staleness):
        src, dst = executions[push.train_call], executions[push.gen_call]
        buffers = {}
        if not holds_parameters_alike(src, dst):
            cost = costs.realloc(push.model, src, dst)
            buffers = cost.message_buffer_bytes if staleness == 1 else \
                cost.receive_buffer_bytes
        nodes.append(_moving_node(push.name, push.model, src, dst, buffers, executions,
                                  workflow, costs, copies.get(push.name, []),
                                  sends.get(push.name, {})))
    return nodes


def plan_memory(workflow: Workflow, cluster: ClusterSpec, executions: Mapping[str, Execution],
                costs: PlanCosts, staleness: int = 0) -> PlanMemory:
    """Rule 6: persistent(d), peak(d), the node setting it and each call's peak, by part."""
    n = cluster.num_devices
    trained = trained_executions(workflow, executions)
    resident = _resident_layers(workflow, executions, costs, trained, n, staleness)
    copies = live_copies(workflow, executions, trained, staleness)
    sends = _sends_during(workflow, executions, costs, staleness)
    call_nodes = _call_nodes(workflow, executions, costs, copies, sends)
    nodes = call_nodes + _realloc_nodes(workflow, executions, costs, copies, staleness,
                                        sends) \
        + _push_nodes(workflow, executions, costs, copies, staleness, sends)
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
            f"GiB working set), has {capacity[worst] / GIB:.1f} GiB after the "
            f"{cluster.reserve_bytes(worst) / GIB:.1f} GiB reserve"
            + (f" and the {cluster.memory_headroom_gib:g} GiB headroom"
               if cluster.memory_headroom_gib else ""))
