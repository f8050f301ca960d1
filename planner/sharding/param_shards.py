"""Parameter shards of a LLaMA model under a (tp, pp) layout: a shared pure function (no torch).

The cost model prices, and the runtime executes, parameter moves from these shards, so both
agree on which device holds which slice of which tensor.

Names and full shapes follow HF `LlamaForCausalLM`:
- `model.embed_tokens.weight` [V, h]                     stage 0, vocab-split on dim 0
- `model.layers.{i}.self_attn.q_proj.weight` [heads*d, h] column-parallel, split on dim 0
- `model.layers.{i}.self_attn.{k,v}_proj.weight` [kv_heads*d, h]   split "kv": by whole kv
  heads on dim 0; with tp above the kv heads, rank r holds kv head r // (tp / kv_heads)
  (+ `.bias` when spec.attention_bias, split like its weight; d = spec.head_dim)
- `model.layers.{i}.self_attn.o_proj.weight` [h, heads*d] row-parallel, split on dim 1
- `model.layers.{i}.self_attn.{q,k}_norm.weight` [d]     replicated (spec.qk_norm, Qwen3)
- `model.layers.{i}.mlp.{gate,up}_proj.weight` [I, h]    column-parallel, dim 0
- `model.layers.{i}.mlp.down_proj.weight` [h, I]         row-parallel, dim 1
- `model.layers.{i}.{input,post_attention}_layernorm.weight` [h]   replicated
Mixture-of-experts blocks (spec.moe) replace the three MLP tensors by (E experts, I_e
expert width, I_s shared-expert width; experts stacked on dim 0, as transformers 5 holds
them in memory, while checkpoints name each expert: the runtime maps one to the other):
- `model.layers.{i}.mlp.gate.weight` [E, h]              router, replicated
- `model.layers.{i}.mlp.experts.{gate,up}_proj` [E, I_e, h]   "expert_column": experts
  split over ep on dim 0 (ep rank e holds [e E/ep, (e+1) E/ep)), then tp on dim 1
- `model.layers.{i}.mlp.experts.down_proj` [E, h, I_e]   "expert_row": ep on dim 0, tp dim 2
- `model.layers.{i}.mlp.shared_expert.{gate,up}_proj.weight` [I_s, h]   column (qwen2_moe)
- `model.layers.{i}.mlp.shared_expert.down_proj.weight` [h, I_s]        row
- `model.layers.{i}.mlp.shared_expert_gate.weight` [1, h]              replicated
- `model.norm.weight` [h]                                last stage, replicated
- `lm_head.weight` [V, h] (head "lm", untied)            last stage, vocab-split on dim 0
- `value_head.weight` [1, h], `value_head.bias` [1] (head "value")   last stage, replicated

Rules:
- Blocks sit on the stage given by `planner.sharding.pipeline_partition.layer_ranges`.
- Every split is even, and tied embeddings (no `lm_head.weight` tensor) need pp = 1: the
  degrees a model can run are those planner.domain.layout.parallel_degrees_problem accepts
  (tp divides the heads, intermediate_size and vocab_size, and divides the kv heads or is a
  multiple of them), the rule the search space and the runtime use too.
- k/v projections split by whole kv heads: kv_heads / tp heads per rank when tp divides
  them; when tp is a multiple of them, one head per rank, the same head on the tp / kv_heads
  consecutive ranks whose query heads use it (rank r holds query heads [r q/tp, (r+1) q/tp),
  which GQA maps to kv head r // (tp / kv_heads)), as vLLM's QKVParallelLinear replicates
  them (num_kv_head_replicas = tp / kv_heads). Those copies are what `kv_replicas` counts;
  the runtime sums their gradients over the ranks sharing them (runtime/optimizer.py).

Example, llama-tiny (h 256, 8 heads, 4 kv heads, head_dim 32), tp=4, tp_rank=2:
    model.layers.0.self_attn.k_proj.weight  full (128, 256) -> rows [64, 96) (kv head 2)
    model.layers.0.self_attn.o_proj.weight  full (256, 256) -> all rows, columns [128, 192)
and at tp=8 (two ranks per kv head), tp_rank=5:
    model.layers.0.self_attn.k_proj.weight  full (128, 256) -> rows [64, 96) (kv head 2)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from planner.domain.layout import parallel_degrees_problem
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.sharding.pipeline_partition import layer_ranges

# One half-open (start, stop) range per dimension of the full tensor.
ShardSlice = tuple[tuple[int, int], ...]
SplitKind = Literal["column", "row", "kv", "replicated", "expert_column", "expert_row"]
EXPERT_SPLITS: frozenset[str] = frozenset({"expert_column", "expert_row"})

EMBEDDING = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
VALUE_HEAD_WEIGHT = "value_head.weight"
VALUE_HEAD_BIAS = "value_head.bias"


@dataclass(frozen=True)
class ParamInfo:
    """One parameter: HF name, full shape, pipeline stage, and how TP splits it."""

    name: str
    shape: tuple[int, ...]
    stage: int
    split: SplitKind

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def is_expert(self) -> bool:
        """Routed experts' weights: split over the ep ranks (and then tp), so data-parallel
        ranks of different expert rank hold different slices."""
        return self.split in EXPERT_SPLITS


def _mlp_params(spec: ModelSpec, prefix: str, stage: int) -> list[ParamInfo]:
    """The dense SwiGLU MLP, or the MoE block (module docstring)."""
    h = spec.hidden_size
    if spec.moe is None:
        inter = spec.intermediate_size
        return [ParamInfo(f"{prefix}mlp.gate_proj.weight", (inter, h), stage, "column"),
                ParamInfo(f"{prefix}mlp.up_proj.weight", (inter, h), stage, "column"),
                ParamInfo(f"{prefix}mlp.down_proj.weight", (h, inter), stage, "row")]
    experts, inter = spec.moe.num_experts, spec.moe.expert_intermediate_size
    params = [ParamInfo(f"{prefix}mlp.gate.weight", (experts, h), stage, "replicated"),
              ParamInfo(f"{prefix}mlp.experts.gate_proj", (experts, inter, h), stage,
                        "expert_column"),
              ParamInfo(f"{prefix}mlp.experts.up_proj", (experts, inter, h), stage,
                        "expert_column"),
              ParamInfo(f"{prefix}mlp.experts.down_proj", (experts, h, inter), stage,
                        "expert_row")]
    shared = spec.moe.shared_expert_intermediate_size
    if shared:
        params += [ParamInfo(f"{prefix}mlp.shared_expert.gate_proj.weight", (shared, h), stage,
                             "column"),
                   ParamInfo(f"{prefix}mlp.shared_expert.up_proj.weight", (shared, h), stage,
                             "column"),
                   ParamInfo(f"{prefix}mlp.shared_expert.down_proj.weight", (h, shared), stage,
                             "row"),
                   ParamInfo(f"{prefix}mlp.shared_expert_gate.weight", (1, h), stage,
                             "replicated")]
    return params


def _block_params(spec: ModelSpec, layer: int, stage: int) -> list[ParamInfo]:
    h, q, kv = spec.hidden_size, spec.q_dim, spec.kv_dim
    p = f"model.layers.{layer}."
    params = [ParamInfo(f"{p}input_layernorm.weight", (h,), stage, "replicated"),
              ParamInfo(f"{p}post_attention_layernorm.weight", (h,), stage, "replicated"),
              ParamInfo(f"{p}self_attn.q_proj.weight", (q, h), stage, "column"),
              ParamInfo(f"{p}self_attn.k_proj.weight", (kv, h), stage, "kv"),
              ParamInfo(f"{p}self_attn.v_proj.weight", (kv, h), stage, "kv"),
              ParamInfo(f"{p}self_attn.o_proj.weight", (h, q), stage, "row")]
    if spec.qk_norm:
        params += [ParamInfo(f"{p}self_attn.q_norm.weight", (spec.head_dim,), stage,
                             "replicated"),
                   ParamInfo(f"{p}self_attn.k_norm.weight", (spec.head_dim,), stage,
                             "replicated")]
    if spec.attention_bias:
        params += [ParamInfo(f"{p}self_attn.q_proj.bias", (q,), stage, "column"),
                   ParamInfo(f"{p}self_attn.k_proj.bias", (kv,), stage, "kv"),
                   ParamInfo(f"{p}self_attn.v_proj.bias", (kv,), stage, "kv")]
    return params + _mlp_params(spec, p, stage)


@lru_cache(maxsize=256)
def model_params(spec: ModelSpec, head: HeadKind, pp: int) -> tuple[ParamInfo, ...]:
    """Every parameter of the model in HF order with its stage under `pp` stages."""
    problem = parallel_degrees_problem(spec, 1, pp)
    if problem:
        raise ValueError(problem)
    last = pp - 1
    h, vocab = spec.hidden_size, spec.vocab_size
    params = [ParamInfo(EMBEDDING, (vocab, h), 0, "column")]
    for stage, (start, end) in enumerate(layer_ranges(spec.num_layers, pp)):
        for layer in range(start, end):
            params += _block_params(spec, layer, stage)
    params.append(ParamInfo(FINAL_NORM, (h,), last, "replicated"))
    if head == "value":
        params += [ParamInfo(VALUE_HEAD_WEIGHT, (1, h), last, "replicated"),
                   ParamInfo(VALUE_HEAD_BIAS, (1,), last, "replicated")]
    elif not spec.tie_embeddings:
        params.append(ParamInfo(LM_HEAD, (vocab, h), last, "column"))
    return tuple(params)


def kv_replicas(spec: ModelSpec, tp: int) -> int:
    """Ranks holding each kv head's copy: tp / kv_heads when tp exceeds the kv heads, else 1
    (module docstring)."""
    return max(1, tp // spec.num_kv_heads)


def shard_slice(spec: ModelSpec, param: ParamInfo, tp_rank: int, tp: int, ep_rank: int = 0,
                ep: int = 1) -> ShardSlice:
    """The slice of `param` held by tensor-parallel rank `tp_rank` of `tp` whose data-parallel
    rank has expert rank `ep_rank` of `ep` (rank_groups.expert_rank; only routed experts'
    weights depend on it)."""
    full = tuple((0, n) for n in param.shape)
    if param.is_expert:
        experts = param.shape[0] // ep
        own = ((ep_rank * experts, (ep_rank + 1) * experts),)
        inner = ParamInfo(param.name, param.shape[1:], param.stage,
                          "column" if param.split == "expert_column" else "row")
        return own + shard_slice(spec, inner, tp_rank, tp)
    if tp == 1 or param.split == "replicated":
        return full
    dim = 1 if param.split == "row" else 0
    size = param.shape[dim]
    parts, part = tp, tp_rank
    if param.split == "kv" and kv_replicas(spec, tp) > 1:
        parts, part = spec.num_kv_heads, tp_rank // kv_replicas(spec, tp)
    assert size % parts == 0, (param.name, size, parts)
    chunk = size // parts
    ranges = list(full)
    ranges[dim] = (part * chunk, (part + 1) * chunk)
    return tuple(ranges)


def slice_elements(ranges: ShardSlice) -> int:
    return int(math.prod(b - a for a, b in ranges))


def stage_params(spec: ModelSpec, head: HeadKind, stage: int, pp: int) -> list[ParamInfo]:
    """Parameters held by pipeline stage `stage`."""
    return [p for p in model_params(spec, head, pp) if p.stage == stage]


def shard_elements(spec: ModelSpec, head: HeadKind, tp: int, pp: int, ep: int = 1
                   ) -> np.ndarray:
    """Parameter elements held by each device: array [pp, tp] (read-only); every expert rank
    of an ep split holds as many."""
    return _shard_elements(spec, head, tp, pp, ep)


# Memoised apart from shard_elements, so that a call that names ep = 1 and one that leaves
# it out share an entry.
@lru_cache(maxsize=1024)
def _shard_elements(spec: ModelSpec, head: HeadKind, tp: int, pp: int, ep: int) -> np.ndarray:
    problem = parallel_degrees_problem(spec, tp, pp)
    if problem:
        raise ValueError(problem)
    counts = np.zeros((pp, tp), dtype=np.int64)
    kinds, per_stage = _param_kinds(spec, head, pp)
    per_rank = [np.array([slice_elements(shard_slice(spec, param, rank, tp, 0, ep))
                          for rank in range(tp)], dtype=np.int64) for param in kinds]
    for stage, kind, count in per_stage:
        counts[stage] += count * per_rank[kind]
    counts.setflags(write=False)
    return counts


@lru_cache(maxsize=256)
def _param_kinds(spec: ModelSpec, head: HeadKind, pp: int
                 ) -> tuple[tuple[ParamInfo, ...], tuple[tuple[int, int, int], ...]]:
    """The model's parameters under `pp` stages by kind: a parameter's slices depend on its
    shape and split only (not its name or layer), so shard_elements slices one parameter
    of each distinct (shape, split) (the first, in HF order) and adds its counts to a stage
    once per parameter of that kind there (integers: the same sums in any grouping).
    Returns (one parameter per kind, (stage, kind, parameters of the kind on the stage))."""
    kinds: dict[tuple, int] = {}
    first: list[ParamInfo] = []
    per_stage: Counter = Counter()
    for param in model_params(spec, head, pp):
        key = (param.shape, param.split)
        if key not in kinds:
            kinds[key] = len(first)
            first.append(param)
        per_stage[param.stage, kinds[key]] += 1
    return tuple(first), tuple((stage, kind, count)
                               for (stage, kind), count in per_stage.items())
