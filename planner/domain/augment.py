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

Staleness s >= 1 (Plan.staleness, at most workflow.max_staleness; the design of issue 14,
as verl's one-step off-policy trainer and AReaL run it): a rollout model R (rollout_models)
keeps two parameter copies, the training copy (its train call's placement, and every
non-generate call of R as with s = 0) and the rollout copy (the one placement of R's
generate calls, which the plan checks). Version v of R is its weights after v train steps.
- R's generate calls form the rollout chain (consecutive ones paired, no wrap) and its other
  calls the training chain (consecutive ones paired, plus the wrap from its last call to its
  first of the next iteration); no pair crosses the chains, so generation of iteration i + 1
  no longer waits for R's training in iteration i.
- A weight push node push(j) (WeightPush) for every iteration j whose receiver j + s + 1 is
  simulated: it copies the training copy after train(j) (version j + 1) into the rollout
  copy, a reallocation from the train call's execution to the first generate call's. Edges:
  train(j) -> push(j) (version); last generate call of j + s -> push(j) (order: the push
  overwrites the copy generation reads, so generation pauses for it); push(j) -> first
  generate call of j + s + 1 (order). So generation of iteration i reads a version >= i - s;
  iterations i <= s need no push (version 0 is within the bound).
- Priority order: push(i - s - 1), the push iteration i's generation waits for, is placed
  right after R's last generate call of iteration i - 1, its last predecessor, not right
  before R's first generate call of iteration i: the push occupies the training devices
  too (they send), and listed after iteration i - 1's training calls it would wait for
  them on those devices (list scheduling does not backfill), so generation of iteration i
  would wait for training of i - 1 and no iteration would overlap. Placed there, the
  training copy it reads is at a version >= j + 1, which keeps the bound.
With s = 0 nothing of this exists and every function returns exactly what it did before.
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
class WeightPush:
    """With staleness >= 1: the rollout model `model`'s weights move from its training copy
    (`train_call`'s execution) to its rollout copy (`gen_call`'s, the model's first generate
    call), once per iteration (module docstring)."""

    model: str
    train_call: str
    gen_call: str

    @property
    def name(self) -> str:
        return f"push:{self.model}:{self.train_call}->{self.gen_call}"


@dataclass(frozen=True)
class Transfer:
    """Data keys moving between two calls whose data placements differ."""

    src_call: str
    dst_call: str
    keys: tuple[str, ...]


def rollout_models(workflow: Workflow) -> tuple[str, ...]:
    """Trained model roles with a generate call (PPO, GRPO, ReMax, RLOO: the actor), in the
    order of workflow.models: the models a staleness >= 1 gives a rollout copy."""
    return workflow.rollout_models()


def _is_generate(workflow: Workflow, call: str) -> bool:
    return workflow.call_by_name[call].kind == "generate"


def weight_pushes(workflow: Workflow, staleness: int = 0) -> list[WeightPush]:
    """One WeightPush per rollout model when staleness >= 1 (none otherwise): from its last
    train call (the weights after the iteration's training) to its first generate call."""
    if staleness == 0:
        return []
    pushes = []
    for role in rollout_models(workflow):
        calls = workflow.calls_of_model(role)
        train = [c for c in calls if workflow.call_by_name[c].kind == "train"]
        generate = [c for c in calls if _is_generate(workflow, c)]
        pushes.append(WeightPush(role, train[-1], generate[0]))
    return pushes


def model_call_pairs(workflow: Workflow, staleness: int = 0
                     ) -> list[tuple[str, str, str, bool]]:
    """(model, earlier call, later call, wraps) for consecutive calls of each model.

    A model with one call pairs with itself across iterations only when it is trained. With
    staleness >= 1 a rollout model's generate calls and its other calls form two chains
    (module docstring): consecutive calls of each chain are paired, and only the training
    chain wraps.
    """
    pairs = []
    trained = workflow.trained_models()
    split = set(rollout_models(workflow)) if staleness else set()
    for role in workflow.models:
        calls = workflow.calls_of_model(role)
        if role in split:
            rollout = [c for c in calls if _is_generate(workflow, c)]
            training = [c for c in calls if not _is_generate(workflow, c)]
            pairs.extend((role, a, b, False) for a, b in zip(rollout, rollout[1:]))
            pairs.extend((role, a, b, False) for a, b in zip(training, training[1:]))
            pairs.append((role, training[-1], training[0], True))
            continue
        for a, b in zip(calls, calls[1:]):
            pairs.append((role, a, b, False))
        if len(calls) > 1 or role in trained:
            pairs.append((role, calls[-1], calls[0], True))
    return pairs


def priority_order(workflow: Workflow, staleness: int = 0
                   ) -> list[tuple[tuple[str, str, str, bool] | None, str]]:
    """One iteration's node types in priority order: (the model pair into the call or None,
    the call), for each call in workflow.call_order.

    A call follows at most one call of its own model (its predecessor in the model's call
    order, or for the model's first call the wrap from its last call), so at most one pair
    leads into each call.
    """
    into = {b: (model, a, b, wraps)
            for model, a, b, wraps in model_call_pairs(workflow, staleness)}
    return [(into.get(call), call) for call in workflow.call_order]


@dataclass(frozen=True)
class ScheduledNode:
    """One node of the augmented graph in priority order: the call `call` of iteration
    `iteration`, or (when `move` is set) the reallocation into that call, which runs in
    `iteration` and is named by the iteration it leaves (`iteration - 1` when it wraps), or
    (when `push` is set) the weight push into that call for `iteration` (listed after the
    model's last generate call of `iteration - 1`), which pushes the weights after iteration
    `iteration - staleness - 1`'s training and is named by that iteration."""

    iteration: int
    call: str
    move: Reallocation | None = None
    push: WeightPush | None = None
    staleness: int = 0

    @property
    def name(self) -> str:
        """The node id in `augmented_graph`."""
        if self.push is not None:
            return f"{self.iteration - self.staleness - 1}/{self.push.name}"
        if self.move is None:
            return call_node(self.iteration, self.call)
        return f"{self.iteration - self.move.wraps}/{self.move.name}"


def scheduled_nodes(workflow: Workflow, executions: Mapping[str, Execution],
                    num_iterations: int, staleness: int = 0) -> list[ScheduledNode]:
    """Every call, reallocation and weight push node of `num_iterations` iterations in
    priority order (module docstring); iteration 0 has no wrapping reallocation into it and
    iterations up to `staleness` no push. A push node's `iteration` is the one whose
    generation reads what it pushes (`call`: the first generate call it writes for); it is
    listed right after the model's last generate call of the iteration before."""
    moves = {(r.src_call, r.dst_call): r
             for r in reallocations(workflow, executions, staleness)}
    pushes_after = {}
    for push in weight_pushes(workflow, staleness):
        generate = [c for c in workflow.calls_of_model(push.model) if _is_generate(workflow, c)]
        pushes_after.setdefault(generate[-1], []).append(push)
    nodes = []
    for i in range(num_iterations):
        for pair, call in priority_order(workflow, staleness):
            move = moves.get(pair[1:3]) if pair is not None else None
            if move is not None and not (move.wraps and i == 0):
                nodes.append(ScheduledNode(i, call, move))
            nodes.append(ScheduledNode(i, call))
            if i + 1 > staleness and i + 1 < num_iterations:
                nodes.extend(ScheduledNode(i + 1, push.gen_call, push=push, staleness=staleness)
                             for push in pushes_after.get(call, ()))
    return nodes


def holds_parameters_alike(a: Execution, b: Execution) -> bool:
    """Whether two executions hold a model's parameters identically: the same placement and
    the same FSDP sharding (an FSDP call on the same devices and degrees as a rollout still
    holds only 1/dp of every tensor, so the rollout needs the weight sync)."""
    return a.placement == b.placement and a.shard_parameters_over_dp == b.shard_parameters_over_dp


def reallocations(workflow: Workflow, executions: Mapping[str, Execution],
                  staleness: int = 0) -> list[Reallocation]:
    """Reallocations a plan implies: one per consecutive pair of a model's calls that hold
    its parameters differently (holds_parameters_alike)."""
    return [Reallocation(model, a, b, wraps)
            for model, a, b, wraps in model_call_pairs(workflow, staleness)
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
                    num_iterations: int = 2, staleness: int = 0) -> nx.DiGraph:
    """The augmented DAG over `num_iterations` iterations.

    Node ids are `"<iteration>/<call>"`, `"<iteration>/realloc:<model>:<src>-><dst>"` and,
    with staleness >= 1, `"<iteration>/push:<model>:<train call>-><generate call>"` (the
    iteration whose training it pushes); node attrs: kind (call|realloc|push), iteration,
    model, call or src/dst, devices (a realloc's or push's: the union of both meshes). Edge
    attrs: kind (data|order|version), and for data edges `keys` and `transfer`.
    """
    graph = nx.DiGraph()
    moves = {(r.src_call, r.dst_call): r
             for r in reallocations(workflow, executions, staleness)}
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
        for model, a, b, wraps in model_call_pairs(workflow, staleness):
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
    _add_pushes(graph, workflow, executions, num_iterations, staleness)
    assert nx.is_directed_acyclic_graph(graph)
    return graph


def _add_pushes(graph: nx.DiGraph, workflow: Workflow, executions: Mapping[str, Execution],
                num_iterations: int, staleness: int) -> None:
    """push(j) for every j whose receiving iteration j + staleness + 1 is in the graph, with
    its version and order edges (module docstring)."""
    for push in weight_pushes(workflow, staleness):
        generate = [c for c in workflow.calls_of_model(push.model) if _is_generate(workflow, c)]
        devices = tuple(sorted(set(executions[push.train_call].devices)
                               | set(executions[push.gen_call].devices)))
        for j in range(num_iterations - staleness - 1):
            node = f"{j}/{push.name}"
            graph.add_node(node, kind="push", iteration=j, model=push.model,
                           src=push.train_call, dst=push.gen_call, devices=devices)
            graph.add_edge(call_node(j, push.train_call), node, kind="version")
            graph.add_edge(call_node(j + staleness, generate[-1]), node, kind="order")
            graph.add_edge(node, call_node(j + staleness + 1, push.gen_call), kind="order")
