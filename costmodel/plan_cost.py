"""Cached per-piece costs of one (workflow, cluster): what the search calls thousands of times.

    costs = PlanCosts(workflow, cluster)
    costs.call_time(call_name, execution)      -> CallTime   (seconds, phases, source)
    costs.call_memory(call_name, execution)    -> CallMemory (bytes per mesh position, by part)
    costs.realloc(model_role, src_ex, dst_ex)  -> ScheduleCost (time_s, message buffers)
    costs.transfer(src_call, dst_call, src_ex, dst_ex) -> ScheduleCost
    costs.proximal_time(train_call_name, execution) -> float  (seconds, staleness >= 1)

Every method is memoised on its arguments (Executions are frozen and hashable).
With a `calibration` (costmodel/calibration.py), call times use its fitted factors and
reallocation / transfer times its move scale and fixed overhead per move.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from costmodel.call_cost import CallTime, call_memory, call_time
from costmodel.memory import CallMemory
from costmodel.realloc_cost import ScheduleCost, realloc_cost, transfer_cost
from planner.domain.cluster import ClusterSpec
from planner.domain.data_keys import payload_bytes
from planner.domain.layout import Execution
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import ModelFunctionCall, Workflow

# The phase a train call's proximal forward adds under staleness >= 1 (proximal_time).
PROXIMAL_PHASE = "proximal_logprobs"


def proximal_forward(train: ModelFunctionCall) -> ModelFunctionCall:
    """The proximal forward of a rollout model's train call under staleness >= 1, as a call
    to price: an inference call of the same model over the train call's inputs that outputs
    `logprobs` (PlanCosts.proximal_time)."""
    return ModelFunctionCall(name=f"{train.name}:{PROXIMAL_PHASE}", model=train.model,
                             kind="inference", inputs=train.inputs, outputs=("logprobs",))


class PlanCosts:
    """Memoised call, reallocation and transfer costs for one workflow on one cluster."""

    def __init__(self, workflow: Workflow, cluster: ClusterSpec,
                 profiles_dir: Path = PROFILES_DIR, calibration=None):
        self.workflow = workflow
        self.cluster = cluster
        self.profiles_dir = Path(profiles_dir)
        self.calibration = calibration
        self._times: dict = {}
        self._memory: dict = {}
        self._reallocs: dict = {}
        self._transfers: dict = {}
        self._proximal: dict = {}

    def call_time(self, call_name: str, execution: Execution) -> CallTime:
        key = (call_name, execution)
        if key not in self._times:
            call = self.workflow.call_by_name[call_name]
            role = self.workflow.models[call.model]
            self._times[key] = call_time(call, role, execution, self.workflow.batch,
                                         self.cluster, self.profiles_dir, self.calibration)
        return self._times[key]

    def proximal_time(self, call_name: str, execution: Execution) -> float:
        """Seconds of the proximal forward a rollout model's train call `call_name` runs
        first when staleness >= 1: a no-grad forward of the training copy over the call's
        whole batch giving the current version's log-probabilities (AReaL's decoupled PPO,
        Fu et al. 2025, eq. 5; areal/engine/ppo/actor.py recomputes them the same way).
        Priced as an inference call of the same model that outputs `logprobs`, on the train
        call's execution (its layout and micro-batches), with the same calibration."""
        key = (call_name, execution)
        if key not in self._proximal:
            train = self.workflow.call_by_name[call_name]
            forward = proximal_forward(train)
            self._proximal[key] = call_time(forward, self.workflow.models[train.model],
                                            execution, self.workflow.batch, self.cluster,
                                            self.profiles_dir, self.calibration).time_s
        return self._proximal[key]

    def call_memory(self, call_name: str, execution: Execution) -> CallMemory:
        key = (call_name, execution)
        if key not in self._memory:
            call = self.workflow.call_by_name[call_name]
            role = self.workflow.models[call.model]
            self._memory[key] = call_memory(call, role, execution, self.workflow.batch,
                                            self.cluster)
        return self._memory[key]

    def realloc(self, model: str, src: Execution, dst: Execution) -> ScheduleCost:
        key = (model, src, dst)
        if key not in self._reallocs:
            role = self.workflow.models[model]
            self._reallocs[key] = self._calibrated(
                realloc_cost(role.spec, role.head, src, dst, self.cluster), src, dst)
        return self._reallocs[key]

    def _calibrated(self, cost: ScheduleCost, src: Execution, dst: Execution) -> ScheduleCost:
        cal = self.calibration
        if cal is None or cost.time_s == 0 or not (cal.applies_to(src, self.cluster)
                                                   and cal.applies_to(dst, self.cluster)):
            return cost
        return replace(cost, time_s=cal.move_time_s(cost.time_s))

    def transfer(self, src_call: str, dst_call: str, src: Execution,
                 dst: Execution) -> ScheduleCost:
        keys = tuple(self.workflow.graph.edges[src_call, dst_call]["keys"])
        key = (keys, src, dst)
        if key not in self._transfers:
            batch = self.workflow.batch
            per_sequence = payload_bytes(keys, batch) / batch.n_seqs
            self._transfers[key] = self._calibrated(
                transfer_cost(src, dst, batch.n_seqs, per_sequence, self.cluster), src, dst)
        return self._transfers[key]
