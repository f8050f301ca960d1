"""The executor's step list: the plan's augmented graph as one global order (pure, no torch).

Every rank walks the same list and runs the steps whose devices contain it, so collectives
and point-to-point messages are posted in one order everywhere (no deadlock, NCCL-safe) and
calls on disjoint meshes overlap by themselves. The order is the priority order the
simulator and the fast evaluator use (planner.domain.augment.scheduled_nodes): iteration by
iteration, the calls in workflow.call_order, each preceded by the reallocation into it (a
wrapping reallocation of iteration i runs before its destination call of iteration i + 1)
and by the data transfers into it.

- A reallocation moves a model's parameters from the source call's placement to the
  destination call's (planner.domain.augment.reallocations; placement = devices, dp, tp, pp) by
  planner.sharding.transfer_schedule.param_schedule, the schedule the cost model prices.
- A transfer moves the keys of one data edge between calls whose layouts differ, by
  planner.sharding.transfer_schedule.data_schedule: its senders post their messages as soon
  as the source call has ended (they do not wait for the transfer's place in the order, so
  no later step of theirs delays the consumer: the simulator's transfer occupies no
  device), its receivers take them at that place. Calls on the same devices with another dp split
  still exchange rows (the cost model counts no transfer there); such a step runs when the
  schedule has messages between devices. Dataset inputs (prompts, pairs) are never moved:
  every rank reads its own rows.
- Each model has a *home* placement that lives for the whole run: its (first) train call's
  placement when trained, else its first call's. Any other placement holds a transient
  copy, made by the reallocation into it and freed right after the reallocation out of it;
  a model whose calls share one placement is never copied. The first iteration has no
  wrapping reallocation into a model's first call: that call's copy is made from the seed
  (or checkpoint) inside the call's first step, so in every iteration a copy lives from just
  before its call to the end of the reallocation out of it, never across the calls before
  (costmodel/plan_memory.py prices that lifetime).
- Staleness s >= 1 (Plan.staleness): a rollout model's generate calls read its rollout copy,
  made at start on their placement from the initial weights (version 0); a PushStep of
  push(j) (planner.domain.augment.WeightPush), listed right after its last generate call of
  iteration j + s, writes version j + 1 into it for iteration j + s + 1
  (runtime/executor/weight_push.py). Its
  other calls (the training chain) hold the training copy as above: the home, the
  transient copies and the first call's copy are the training chain's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Mapping, Sequence, Union

from planner.domain.augment import (
    Reallocation,
    WeightPush,
    rollout_models,
    scheduled_nodes,
)
from planner.domain.layout import Execution
from planner.domain.placement import Placement
from planner.domain.workflow import Workflow
from planner.sharding.transfer_schedule import Schedule, data_schedule


@dataclass(frozen=True)
class CallStep:
    iteration: int
    call: str
    devices: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.iteration}/{self.call}"


@dataclass(frozen=True)
class ReallocStep:
    """Named as in planner.domain.augment (a wrapping move by its source iteration); it runs in
    `runs_in`, the iteration of its destination call."""

    iteration: int
    move: Reallocation
    devices: tuple[int, ...]  # union of the source and destination meshes
    runs_in: int

    @property
    def name(self) -> str:
        return f"{self.iteration}/{self.move.name}"


# Message tags of data transfers: TRANSFER_TAG_OFFSET + the transfer's index in the step
# list, so that each transfer's messages match only each other wherever its sends are posted
# (runtime/executor/data.py); above the tags of reallocations (0) and pushes (14).
TRANSFER_TAG_OFFSET = 1 << 16


@dataclass(frozen=True)
class TransferStep:
    """A data edge's move (module docstring). Its senders post their messages right after
    the source call, its receivers take them at the step's place in the order."""

    iteration: int
    src_call: str
    dst_call: str
    keys: tuple[str, ...]
    schedule: Schedule
    devices: tuple[int, ...]  # senders and receivers of its messages
    tag: int = 0              # its messages' tag (build_steps: TRANSFER_TAG_OFFSET + index)

    @property
    def edge(self) -> str:
        return f"{self.src_call}->{self.dst_call}"

    @property
    def name(self) -> str:
        return f"{self.iteration}/transfer:{self.edge}"


@dataclass(frozen=True)
class PushStep:
    """push(iteration): the weights after train(iteration) into the rollout copy, for the
    generation of iteration + staleness + 1; listed (and run) in `runs_in` = iteration +
    staleness, right after the model's last generate call there (scheduled_nodes)."""

    iteration: int
    push: WeightPush
    devices: tuple[int, ...]  # union of the train and generate meshes
    runs_in: int

    @property
    def name(self) -> str:
        return f"{self.iteration}/{self.push.name}"


Step = Union[CallStep, ReallocStep, TransferStep, PushStep]


def home_call(workflow: Workflow, role: str) -> str:
    """The call whose placement is `role`'s home (module docstring): its first train call
    when trained, else its first call."""
    calls = workflow.calls_of_model(role)
    trains = [c for c in calls if workflow.call_by_name[c].kind == "train"]
    return (trains or calls)[0]


def model_homes(workflow: Workflow, executions: Mapping[str, Execution]) -> dict[str, Placement]:
    """The placement each model keeps for the whole run (module docstring)."""
    return {role: executions[home_call(workflow, role)].placement for role in workflow.models}


def training_chain(workflow: Workflow, role: str, staleness: int) -> list[str]:
    """The calls of `role` that use its training copy: all of them, or with staleness >= 1
    a rollout model's non-generate calls (module docstring)."""
    calls = workflow.calls_of_model(role)
    if staleness and role in rollout_models(workflow):
        return [c for c in calls if workflow.call_by_name[c].kind != "generate"]
    return calls


def initial_placements(workflow: Workflow, executions: Mapping[str, Execution],
                       staleness: int = 0) -> dict[str, list[Placement]]:
    """Placements each model's training copy is created on: its home (at start) and its
    first call's of the training chain (by that call's first step, module docstring), home
    first."""
    homes = model_homes(workflow, executions)
    result = {}
    for role in workflow.models:
        first = executions[training_chain(workflow, role, staleness)[0]].placement
        result[role] = [homes[role]] + ([first] if first != homes[role] else [])
    return result


def transfer_steps_into(workflow: Workflow, executions: Mapping[str, Execution], call: str,
                        iteration: int, device_node: Sequence[int]) -> list[TransferStep]:
    """Transfers of every data edge into `call` whose schedule sends between devices."""
    steps = []
    for src in workflow.call_order:
        if not workflow.graph.has_edge(src, call):
            continue
        keys = tuple(workflow.graph.edges[src, call]["keys"])
        schedule = data_schedule(executions[src].placement, executions[call].placement,
                                 workflow.batch.n_seqs, device_node)
        if not schedule.steps:
            continue
        devices = sorted({d for p in schedule.sends() for d in (p.src, p.dst)})
        steps.append(TransferStep(iteration, src, call, keys, schedule, tuple(devices)))
    return steps


def build_steps(workflow: Workflow, executions: Mapping[str, Execution], num_iterations: int,
                device_node: Sequence[int], staleness: int = 0) -> list[Step]:
    """Every step of `num_iterations` iterations in the global order: the shared priority
    order (planner.domain.augment.scheduled_nodes), with each call's data transfers right
    before it."""
    transfers = {c: transfer_steps_into(workflow, executions, c, 0, device_node)
                 for c in workflow.call_order}
    steps: list[Step] = []
    tags = itertools.count(TRANSFER_TAG_OFFSET)
    for node in scheduled_nodes(workflow, executions, num_iterations, staleness):
        i, call, move, push = node.iteration, node.call, node.move, node.push
        if push is not None:
            union = set(executions[push.train_call].devices) | set(
                executions[push.gen_call].devices)
            steps.append(PushStep(i - staleness - 1, push, tuple(sorted(union)), i - 1))
            continue
        if move is not None:
            union = set(executions[move.src_call].devices) | set(
                executions[move.dst_call].devices)
            steps.append(ReallocStep(i - move.wraps, move, tuple(sorted(union)), i))
            continue
        for t in transfers[call]:
            steps.append(replace(t, iteration=i, tag=next(tags)))
        steps.append(CallStep(i, call, tuple(executions[call].devices)))
    return steps


def distinct_layouts(workflow: Workflow, executions: Mapping[str, Execution]) -> list[Placement]:
    """Placements of the plan in call order, each once: the process groups to create."""
    seen: list[Placement] = []
    for call in workflow.call_order:
        placement = executions[call].placement
        if placement not in seen:
            seen.append(placement)
    return seen
