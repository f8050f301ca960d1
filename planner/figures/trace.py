"""Reading a measured trace to overlay on the estimated timeline.

The runtime writes a JSON with the shape of `plan estimate --json` plus one entry per
executed node; only `nodes` is read here:

    {"nodes": [{"name": "1/actor_gen", "start_s": 71.2, "end_s": 101.9, "devices": [0, 1]}]}

`name` is `<iteration>/<node>` as in the simulator and runtime/executor/steps.py: a call
name, `realloc:<model>:<src>-><dst>` (numbered by its source iteration, so a move into the
next iteration runs in iteration + 1) or `transfer:<src>-><dst>`. Other keys (bytes moved,
peak memory, ...) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.domain.augment import reallocations
from planner.domain.errors import InputError, validated
from planner.domain.input_files import load_json_input
from planner.domain.plan import Plan
from planner.figures.common import node_model, split_node_id


class TraceNode(BaseModel):
    """One measured node; extra keys written by the runtime are allowed and ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1)
    start_s: float
    end_s: float
    devices: tuple[int, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> "TraceNode":
        if self.end_s < self.start_s:
            raise ValueError(f"end_s {self.end_s} is before start_s {self.start_s}")
        return self


class TraceFile(BaseModel):
    """The part of a trace file the figures read (the estimate's keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    nodes: list[TraceNode] = Field(min_length=1)


@dataclass(frozen=True)
class MeasuredNode:
    """A measured node resolved against the plan."""

    iteration: int      # the iteration it runs in
    name: str
    model: str
    start_s: float
    end_s: float
    devices: tuple[int, ...]


def load_trace(path: Path, plan: Plan) -> list[MeasuredNode]:
    """The trace's nodes, checked against the plan; InputError (one line) on any problem."""
    path = Path(path)
    data = load_json_input(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: (top level): expected an object with a 'nodes' list, got "
                         f"{type(data).__name__}")
    parsed = validated(TraceFile, data, path)
    num_devices = plan.cluster.num_devices
    wrapping = {m.name for m in reallocations(plan.workflow, plan.executions, plan.staleness)
                if m.wraps}
    result = []
    for index, node in enumerate(parsed.nodes):
        field = f"{path}: nodes[{index}]"
        try:
            iteration, name = split_node_id(node.name)
        except ValueError as err:
            raise InputError(f"{field}.name: {err}") from None
        model = node_model(plan, name)
        if model is None:
            raise InputError(f"{field}.name: {name!r} is not a call of this plan "
                             f"({', '.join(plan.workflow.call_order)}), a reallocation "
                             f"'realloc:<model>:<src>-><dst>' or a transfer "
                             f"'transfer:<src>-><dst>'; is the trace from another plan?")
        bad = [d for d in node.devices if not 0 <= d < num_devices]
        if bad:
            raise InputError(f"{field}.devices: {bad} outside the cluster (devices 0-"
                             f"{num_devices - 1})")
        runs_in = iteration + 1 if name in wrapping else iteration
        result.append(MeasuredNode(runs_in, name, model, node.start_s, node.end_s,
                                   node.devices))
    return result
