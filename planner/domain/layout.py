"""Layouts and executions: how one call runs on its mesh.

A layout is data x tensor x pipeline degrees plus the number of micro-batches; an execution
is a mesh plus a layout plus the run policy of a train call (ZeRO-1 over dp, activation
recomputation), which the cost model prices and the runtime follows. Its placement (mesh and
degrees, planner.domain.placement) is what parameter and data movement depend on.
`execution_problem` checks an execution against the model, the batch and the cluster and
says, with every factor, what is wrong; `parallel_degrees_problem` is the one rule of which
tp / pp degrees a model can run, used by the search space, the cost model and the runtime.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from planner.domain.cluster import ClusterSpec
from planner.domain.mesh import mesh_problem
from planner.domain.modelspec import ModelSpec
from planner.domain.placement import Placement
from planner.domain.workflow import BatchSpec, ModelFunctionCall

# Activation recomputation of a train call, from most memory to least (runtime/layers.py
# says what each reruns, costmodel/recompute.py what each keeps and costs).
RecomputeMode = Literal["none", "selective", "full"]
RECOMPUTE_MODES: tuple[RecomputeMode, ...] = get_args(RecomputeMode)
# How a generate call batches its rows while decoding (costmodel/generate_cost.py prices
# each, runtime/generate.py runs each): "static" runs each micro-batch until its longest row
# ends; "continuous" refills a finished row's slot with the call's next prompt.
DecodeBatching = Literal["static", "continuous"]
DECODE_BATCHINGS: tuple[DecodeBatching, ...] = get_args(DecodeBatching)


class Execution(BaseModel):
    """Mesh (ordered device ids) and layout of one call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: tuple[int, ...] = Field(min_length=1)
    dp: int = Field(ge=1)
    tp: int = Field(ge=1)
    pp: int = Field(ge=1)
    micro_batches: int = Field(default=1, ge=1)
    ep: int = Field(default=1, ge=1, description=(
        "mixture-of-experts models: expert-parallel degree, the routed experts of every "
        "block split over ep consecutive dp ranks (planner.domain.placement); 1 for dense "
        "models"))
    shard_optimizer_over_dp: bool = Field(default=True, description=(
        "train calls: ZeRO-1, the Adam states sharded over the dp group (gradients "
        "reduce-scattered, updated weights all-gathered); false keeps full states per replica "
        "and all-reduces gradients"))
    recompute: RecomputeMode = Field(default="full", description=(
        "train calls: which activations the decoder blocks rerun in backward instead of "
        "keeping (torch.utils.checkpoint, non-reentrant): 'full' keeps each block's input "
        "and reruns the block; 'selective' reruns the attention sub-layer only (input norm, "
        "q/k/v projections, rotary, attention, output projection) and keeps the MLP's "
        "activations; 'none' keeps everything"))
    decode_batching: DecodeBatching = Field(default="static", description=(
        "generate calls: 'static' decodes each micro-batch until its longest row ends (its "
        "finished rows' slots idle); 'continuous' gives a finished row's slot (its KV "
        "cache rows) to the call's next prompt, so slots stay busy until the prompts run "
        "out (continuous batching, as vLLM and SGLang schedule)"))
    shard_parameters_over_dp: bool = Field(default=False, description=(
        "FSDP / ZeRO-3 (train and inference calls, pp 1): parameters, gradients and "
        "optimizer states sharded over the dp group, each layer's parameters all-gathered "
        "before its forward (and again before its backward), gradients reduce-scattered. "
        "Priced for configs imported from frameworks that train this way (plan import); the "
        "search does not offer it and plan run refuses it, since our runtime does not run it"))

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def placement(self) -> Placement:
        """Where the parameters and data rows live (planner.domain.placement). Executions
        that differ only in micro-batches or policy hold the parameters identically."""
        return Placement(self.devices, self.dp, self.tp, self.pp, self.ep)

    def layout_text(self) -> str:
        """Megatron-style short form, e.g. d2t4p1m2, with the expert degree when above 1
        (d8t1p1e8m2)."""
        expert = f"e{self.ep}" if self.ep > 1 else ""
        return f"d{self.dp}t{self.tp}p{self.pp}{expert}m{self.micro_batches}"

    def call_layout_text(self, call_kind: str) -> str:
        """layout_text, for a train call its recomputation mode (d2t4p1m2/selective),
        /continuous for a generate call decoding with continuous batching, and /fsdp when
        the parameters are sharded FSDP-style (d8t1p1m4/full/fsdp)."""
        suffix = f"/{self.recompute}" if call_kind == "train" else ""
        if self.decode_batching == "continuous":
            suffix += "/continuous"
        return self.layout_text() + suffix + ("/fsdp" if self.shard_parameters_over_dp else "")


def sequences_per_micro_batch_step(call: ModelFunctionCall, batch: BatchSpec) -> int:
    """Sequences one call processes per step: a minibatch for train, the batch otherwise."""
    if call.kind == "train":
        return batch.n_seqs // batch.ppo_minibatches
    return batch.n_seqs


def kv_heads_fit(num_kv_heads: int, tp: int) -> bool:
    """Whether tp ranks can share out `num_kv_heads` kv heads: tp divides them (each rank
    holds kv / tp whole heads) or is a multiple of them (each rank holds one head,
    replicated on the tp / kv consecutive ranks whose query heads use it)."""
    return num_kv_heads % tp == 0 or tp % num_kv_heads == 0


@lru_cache(maxsize=4096)   # the search asks it for every layout of every mesh
def parallel_degrees_problem(spec: ModelSpec, tp: int, pp: int) -> str | None:
    """Why model `spec` cannot be sharded over tp ranks and pp stages, or None.

    The one rule for the search space, the cost model and the runtime (what we price is what
    we run): every tensor-parallel split is even, so tp divides the attention heads, the
    MLP's intermediate size and the vocabulary (no padding rows); tp divides the kv heads or
    is a multiple of them: above the kv-head count each rank holds the one kv head its query
    heads use, replicated on the tp / kv ranks sharing it, whose gradients the runtime sums
    over those ranks (as vLLM's QKVParallelLinear replicates kv heads, num_kv_head_replicas
    = tp / kv); pp is between 1 and the layer count; tied embeddings (one tensor for the
    embedding and the LM head) need pp 1, since the two ends of the model sit on different
    stages otherwise.
    """
    sizes = {"attention heads": spec.num_heads}
    if spec.moe is None:
        sizes["intermediate_size"] = spec.intermediate_size
    else:
        sizes["expert_intermediate_size"] = spec.moe.expert_intermediate_size
        if spec.moe.shared_expert_intermediate_size:
            sizes["shared_expert_intermediate_size"] = spec.moe.shared_expert_intermediate_size
    sizes["vocab_size"] = spec.vocab_size
    uneven = [f"{value} {name}" for name, value in sizes.items() if value % tp]
    if uneven or not kv_heads_fit(spec.num_kv_heads, tp):
        valid = [t for t in range(1, spec.num_heads + 1)
                 if all(v % t == 0 for v in sizes.values())
                 and kv_heads_fit(spec.num_kv_heads, t)]
        what = (f"does not evenly split the {', '.join(uneven)}" if uneven else
                f"neither divides the {spec.num_kv_heads} kv heads nor is a multiple of them")
        return f"tp {tp} {what} of {spec.name}; valid tp: {valid}"
    if not 1 <= pp <= spec.num_layers:
        return f"pp {pp} must be between 1 and the {spec.num_layers} layers of {spec.name}"
    if spec.tie_embeddings and pp > 1:
        return f"{spec.name} ties its embeddings to the LM head, which needs pp 1 (got pp {pp})"
    return None


def expert_degree_problem(spec: ModelSpec, dp: int, ep: int) -> str | None:
    """Why model `spec` cannot split its experts over ep of its dp ranks, or None: ep above
    1 needs a mixture-of-experts model, ep divides dp (experts live on data-parallel ranks,
    planner.domain.placement) and the expert count (every rank holds as many)."""
    if ep == 1:
        return None
    if spec.moe is None:
        return f"ep {ep} applies to mixture-of-experts models; {spec.name} is dense (ep 1)"
    if dp % ep:
        return f"ep {ep} must divide dp {dp} (experts are split over data-parallel ranks)"
    if spec.moe.num_experts % ep:
        valid = [e for e in range(1, dp + 1) if dp % e == 0 and spec.moe.num_experts % e == 0]
        return (f"ep {ep} does not divide the {spec.moe.num_experts} experts of {spec.name}; "
                f"valid ep with dp {dp}: {valid}")
    return None


@lru_cache(maxsize=4096)
def _mesh_nodes(devices: tuple[int, ...], cluster: ClusterSpec) -> tuple[int, frozenset[int]]:
    """How many nodes a mesh spans and their device counts. Memoised: the search checks
    every layout of a mesh, and the mesh may span all of a large cluster."""
    nodes = {cluster.device_node[d] for d in devices}
    return len(nodes), frozenset(cluster.node_devices_per_node[n] for n in nodes)


def layout_problem(execution: Execution, spec: ModelSpec, cluster: ClusterSpec,
                   call: ModelFunctionCall, batch: BatchSpec) -> str | None:
    """Why the layout cannot run `call` of model `spec` on its mesh, or None."""
    ex = execution
    if ex.dp * ex.tp * ex.pp != ex.num_devices:
        return (f"dp {ex.dp} x tp {ex.tp} x pp {ex.pp} = {ex.dp * ex.tp * ex.pp}, "
                f"mesh has {ex.num_devices} devices")
    problem = (parallel_degrees_problem(spec, ex.tp, ex.pp)
               or expert_degree_problem(spec, ex.dp, ex.ep))
    if problem:
        return problem
    defaults = Execution.model_fields
    if call.kind != "train" and (
            ex.shard_optimizer_over_dp != defaults["shard_optimizer_over_dp"].default
            or ex.recompute != defaults["recompute"].default):
        return ("shard_optimizer_over_dp and recompute apply to train calls only; "
                f"{call.name} is {'an' if call.kind == 'inference' else 'a'} {call.kind} call "
                f"(leave them out)")
    if ex.decode_batching != defaults["decode_batching"].default and call.kind != "generate":
        return (f"decode_batching applies to generate calls only; {call.name} is "
                f"{'an' if call.kind == 'inference' else 'a'} {call.kind} call (leave it out)")
    if ex.shard_parameters_over_dp:
        if call.kind == "generate":
            return (f"shard_parameters_over_dp (FSDP / ZeRO-3) applies to train and inference "
                    f"calls; {call.name} is a generate call (leave it out)")
        if ex.pp > 1:
            return f"shard_parameters_over_dp (FSDP / ZeRO-3) needs pp 1 (got pp {ex.pp})"
        if call.kind == "train" and not ex.shard_optimizer_over_dp:
            return ("shard_parameters_over_dp (FSDP / ZeRO-3) shards the optimizer states "
                    "too: set shard_optimizer_over_dp true")
    num_nodes, node_sizes = _mesh_nodes(tuple(ex.devices), cluster)
    # TP groups are adjacent mesh positions: inside one node they always fit; across whole
    # nodes they fit when every node's device count is a multiple of tp.
    if num_nodes > 1 and any(size % ex.tp for size in node_sizes):
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
