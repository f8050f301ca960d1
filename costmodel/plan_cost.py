"""Cached per-piece costs of one (workflow, cluster): what the search calls thousands of times.

    costs = PlanCosts(workflow, cluster)
    costs.call_time(call_name, execution)      -> CallTime   (seconds, phases, source)
    costs.call_memory(call_name, execution)    -> CallMemory (bytes per mesh position)
    costs.realloc(model_role, src_ex, dst_ex)  -> ScheduleCost (time_s, receive buffers)
    costs.transfer(src_call, dst_call, src_ex, dst_ex) -> ScheduleCost

Every method is memoised on its arguments (Executions are frozen and hashable).
"""

from __future__ import annotations

from pathlib import Path

from costmodel.call_cost import CallMemory, CallTime, call_memory, call_time
from costmodel.realloc_cost import ScheduleCost, realloc_cost, transfer_cost
from planner.cluster import ClusterSpec
from planner.layout import Execution
from planner.data_keys import payload_bytes
from planner.paths import PROFILES_DIR
from planner.workflow import Workflow


class PlanCosts:
    """Memoised call, reallocation and transfer costs for one workflow on one cluster."""

    def __init__(self, workflow: Workflow, cluster: ClusterSpec,
                 profiles_dir: Path = PROFILES_DIR):
        self.workflow = workflow
        self.cluster = cluster
        self.profiles_dir = Path(profiles_dir)
        self._times: dict = {}
        self._memory: dict = {}
        self._reallocs: dict = {}
        self._transfers: dict = {}

    def call_time(self, call_name: str, execution: Execution) -> CallTime:
        key = (call_name, execution)
        if key not in self._times:
            call = self.workflow.call_by_name[call_name]
            role = self.workflow.models[call.model]
            self._times[key] = call_time(call, role, execution, self.workflow.batch,
                                         self.cluster, self.profiles_dir)
        return self._times[key]

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
            self._reallocs[key] = realloc_cost(role.spec, role.head, src, dst, self.cluster)
        return self._reallocs[key]

    def transfer(self, src_call: str, dst_call: str, src: Execution,
                 dst: Execution) -> ScheduleCost:
        keys = tuple(self.workflow.graph.edges[src_call, dst_call]["keys"])
        key = (keys, src, dst)
        if key not in self._transfers:
            batch = self.workflow.batch
            per_sequence = payload_bytes(keys, batch) / batch.n_seqs
            self._transfers[key] = transfer_cost(src, dst, batch.n_seqs, per_sequence,
                                                 self.cluster)
        return self._transfers[key]
