"""Layouts and executions: how one call runs on its mesh.

A layout is data x tensor x pipeline degrees plus the number of micro-batches; an execution
is a mesh plus a layout. `execution_problem` checks an execution against the model, the batch
and the cluster and says, with every factor, what is wrong.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from planner.domain.cluster import ClusterSpec
from planner.domain.mesh import mesh_problem
from planner.domain.modelspec import ModelSpec
from planner.domain.workflow import BatchSpec, ModelFunctionCall


class Execution(BaseModel):
    """Mesh (ordered device ids) and layout of one call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: tuple[int, ...] = Field(min_length=1)
    dp: int = Field(ge=1)
    tp: int = Field(ge=1)
    pp: int = Field(ge=1)
    micro_batches: int = Field(default=1, ge=1)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def placement(self) -> tuple[tuple[int, ...], int, int, int]:
        """Where the parameters live: devices and degrees. Two executions that differ only
        in micro-batches hold the parameters identically, so no reallocation is needed."""
        return (self.devices, self.dp, self.tp, self.pp)

    def layout_text(self) -> str:
        """Megatron-style short form, e.g. d2t4p1m2."""
        return f"d{self.dp}t{self.tp}p{self.pp}m{self.micro_batches}"


def sequences_per_micro_batch_step(call: ModelFunctionCall, batch: BatchSpec) -> int:
    """Sequences one call processes per step: a minibatch for train, the batch otherwise."""
    if call.kind == "train":
        return batch.n_seqs // batch.ppo_minibatches
    return batch.n_seqs


def layout_problem(execution: Execution, spec: ModelSpec, cluster: ClusterSpec,
                   call: ModelFunctionCall, batch: BatchSpec) -> str | None:
    """Why the layout cannot run `call` of model `spec` on its mesh, or None."""
    ex = execution
    if ex.dp * ex.tp * ex.pp != ex.num_devices:
        return (f"dp {ex.dp} x tp {ex.tp} x pp {ex.pp} = {ex.dp * ex.tp * ex.pp}, "
                f"mesh has {ex.num_devices} devices")
    if spec.num_heads % ex.tp:
        return f"tp {ex.tp} does not divide the {spec.num_heads} attention heads of {spec.name}"
    if spec.num_kv_heads % ex.tp:
        # The runtime gives each tensor-parallel rank whole kv heads; it does not replicate
        # a kv head over several ranks (that would need their gradients summed), so neither
        # do the plans we search: what we price is what we run.
        return (f"tp {ex.tp} does not divide the {spec.num_kv_heads} kv heads of {spec.name}; "
                f"valid tp: {[t for t in range(1, spec.num_kv_heads + 1) if spec.num_kv_heads % t == 0]}")
    if ex.pp > spec.num_layers:
        return f"pp {ex.pp} is above the {spec.num_layers} layers of {spec.name}"
    nodes = {cluster.device_node[d] for d in ex.devices}
    node_sizes = {cluster.node_devices_per_node[n] for n in nodes}
    # TP groups are adjacent mesh positions: inside one node they always fit; across whole
    # nodes they fit when every node's device count is a multiple of tp.
    if len(nodes) > 1 and any(size % ex.tp for size in node_sizes):
        return (f"tp {ex.tp} would span nodes (nodes have {sorted(node_sizes)} devices); "
                f"tensor-parallel groups must stay inside one node")
    seqs = sequences_per_micro_batch_step(call, batch)
    if seqs < ex.dp * ex.micro_batches:
        return (f"dp {ex.dp} x micro_batches {ex.micro_batches} = {ex.dp * ex.micro_batches} "
                f"exceeds the {seqs} sequences per step of {call.name}")
    return None


def execution_problem(execution: Execution, spec: ModelSpec, cluster: ClusterSpec,
                      call: ModelFunctionCall, batch: BatchSpec) -> str | None:
    """Mesh problem or layout problem of an execution, or None when it is valid."""
    return mesh_problem(tuple(execution.devices), cluster) or \
        layout_problem(execution, spec, cluster, call, batch)
