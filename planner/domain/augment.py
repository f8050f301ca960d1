"""The augmented graph of a plan: the workflow plus what the plan implies.

- A *reallocation* node wherever consecutive calls of the same model hold their
  parameters differently (devices or dp/tp/pp degrees, or one sharding them FSDP-style
  over dp and the other not, Execution.shard_parameters_over_dp; micro-batches do not
  count), including from the model's last call of iteration i to its first call of
  iteration i+1. It moves the parameters from one layout to the other.
- A *transfer* flag on every data edge whose two calls place their data differently: the
  rows of a batch live on the devices of their data-parallel replica, so a transfer is
  needed when the devices or the dp/tp/pp degrees differ (planner.sharding.transfer_schedule).
- Parameter-version edges: a trained model's train call of iteration i precedes the model's
  first call of iteration i+1 (through a reallocation when the executions differ).

Consecutive calls of one model are always ordered (edge kind `order`, or `version` when the
earlier call is a train call), because they share the model's parameters.

The priority order (`priority_order`, `scheduled_nodes`) is the one order in which the exact
simulator list-schedules the graph, the fast evaluator schedules its node types and the
executor posts its steps on every rank: iteration by iteration, the calls in
workflow.call_order, each preceded by the reallocation into it (a wrapping reallocation out
of iteration i runs right before its destination call in iteration i + 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import networkx as nx

from planner.domain.layout import Execution
from planner.domain.workflow import Workflow


@dataclass(frozen=True)
class Reallocation:
    """Parameters of `model` move from `src_call`'s execution to `dst_call`'s.

    `wraps` is True for the move from the last call of an iteration to the first call of
    the next one.
    """

    model: str
    src_call: str
    dst_call: str
    wraps: bool

    @property
    def name(self) -> str:
        return f"realloc:{self.model}:{self.src_call}->{self.dst_call}"


@dataclass(frozen=True)
class Transfer:
    """Data keys moving between two calls whose data placements differ."""

    src_call: str
    dst_call: str
    keys: tuple[str, ...]


def model_call_pairs(workflow: Workflow) -> list[tuple[str, str, str, bool]]:
    """(model, earlier call, later call, wraps) for consecutive calls of each model.

    A model with one call pairs with itself across iterations only when it is trained.
    """
    pairs = []
    trained = workflow.trained_models()
    for role in workflow.models:
        calls = workflow.calls_of_model(role)
        for a, b in zip(calls, calls[1:]):
            pairs.append((role, a, b, False))
        if len(calls) > 1 or role in trained:
            pairs.append((role, calls[-1], calls[0], True))
    return pairs


def priority_order(workflow: Workflow) -> list[tuple[tuple[str, str, str, bool] | None, str]]:
    """One iteration's node types in priority order: (the model pair into the call or None,
    the call), for each call in workflow.call_order.

    A call follows at most one call of its own model (its predecessor in the model's call
    order, or for the model's first call the wrap from its last call), so at most one pair
    leads into each call.
    """
    into = {b: (model, a, b, wraps) for model, a, b, wraps in model_call_pairs(workflow)}
    return [(into.get(call), call) for call in workflow.call_order]


@dataclass(frozen=True)
class ScheduledNode:
    """One node of the augmented graph in priority order: the call `call` of iteration
    `iteration`, or (when `move` is set) the reallocation into that call, which runs in
    `iteration` and is named by the iteration it leaves (`iteration - 1` when it wraps)."""

    iteration: int
    call: str
    move: Reallocation | None = None

    @property
    def name(self) -> str:
        """The node id in `augmented_graph`."""
        if self.move is None:
            return call_node(self.iteration, self.call)
        return f"{self.iteration - self.move.wraps}/{self.move.name}"


def scheduled_nodes(workflow: Workflow, executions: Mapping[str, Execution],
                    num_iterations: int) -> list[ScheduledNode]:
    """Every call and reallocation node of `num_iterations` iterations in priority order
    (module docstring); iteration 0 has no wrapping reallocation into it."""
    moves = {(r.src_call, r.dst_call): r for r in reallocations(workflow, executions)}
    nodes = []
    for i in range(num_iterations):
        for pair, call in priority_order(workflow):
            move = moves.get(pair[1:3]) if pair is not None else None
            if move is not None and not (move.wraps and i == 0):
                nodes.append(ScheduledNode(i, call, move))
            nodes.append(ScheduledNode(i, call))
    return nodes


def holds_parameters_alike(a: Execution, b: Execution) -> bool:
    """Whether two executions hold a model's parameters identically: the same placement and
    the same FSDP sharding (an FSDP call on the same devices and degrees as a rollout still
    holds only 1/dp of every tensor, so the rollout needs the weight sync)."""
    return a.placement == b.placement and a.shard_parameters_over_dp == b.shard_parameters_over_dp


def reallocations(workflow: Workflow, executions: Mapping[str, Execution]) -> list[Reallocation]:
    """Reallocations a plan implies: one per consecutive pair of a model's calls that hold
    its parameters differently (holds_parameters_alike)."""
    return [Reallocation(model, a, b, wraps) for model, a, b, wraps in model_call_pairs(workflow)
            if not holds_parameters_alike(executions[a], executions[b])]


def transfers(workflow: Workflow, executions: Mapping[str, Execution]) -> list[Transfer]:
    """Data edges between calls whose placements differ (module docstring)."""
    result = []
    for src, dst, data in workflow.graph.edges(data=True):
        if executions[src].placement != executions[dst].placement:
            result.append(Transfer(src, dst, tuple(data["keys"])))
    return result


def call_node(iteration: int, call: str) -> str:
    return f"{iteration}/{call}"


def augmented_graph(workflow: Workflow, executions: Mapping[str, Execution],
                    num_iterations: int = 2) -> nx.DiGraph:
    """The augmented DAG over `num_iterations` iterations.

    Node ids are `"<iteration>/<call>"` and `"<iteration>/realloc:<model>:<src>-><dst>"`;
    node attrs: kind (call|realloc), iteration, model, call or src/dst, devices. Edge attrs:
    kind (data|order|version), and for data edges `keys` and `transfer`.
    """
    graph = nx.DiGraph()
    moves = {(r.src_call, r.dst_call): r for r in reallocations(workflow, executions)}
    calls = workflow.call_by_name
    for i in range(num_iterations):
        for name in workflow.call_order:
            graph.add_node(call_node(i, name), kind="call", iteration=i, call=name,
                           model=calls[name].model, devices=executions[name].devices)
        for src, dst, data in workflow.graph.edges(data=True):
            graph.add_edge(call_node(i, src), call_node(i, dst), kind="data",
                           keys=tuple(data["keys"]),
                           transfer=executions[src].placement != executions[dst].placement)
    for i in range(num_iterations):
        for model, a, b, wraps in model_call_pairs(workflow):
            j = i + 1 if wraps else i
            if j >= num_iterations:
                continue
            kind = "version" if calls[a].kind == "train" else "order"
            src, dst = call_node(i, a), call_node(j, b)
            move = moves.get((a, b))
            if move is None:
                graph.add_edge(src, dst, kind=kind)
                continue
            node = f"{i}/{move.name}"
            devices = tuple(sorted(set(executions[a].devices) | set(executions[b].devices)))
            graph.add_node(node, kind="realloc", iteration=i, model=model, src=a, dst=b,
                           devices=devices)
            graph.add_edge(src, node, kind=kind)
            graph.add_edge(node, dst, kind="order")
    assert nx.is_directed_acyclic_graph(graph)
    return graph
