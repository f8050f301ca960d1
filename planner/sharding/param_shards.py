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

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from planner.domain.layout import parallel_degrees_problem
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.sharding.pipeline_partition import layer_ranges

# One half-open (start, stop) range per dimension of the full tensor.
ShardSlice = tuple[tuple[int, int], ...]
SplitKind = Literal["column", "row", "kv", "replicated"]

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


def _block_params(spec: ModelSpec, layer: int, stage: int) -> list[ParamInfo]:
    h, q, kv, inter = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.intermediate_size
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
    params += [ParamInfo(f"{p}mlp.gate_proj.weight", (inter, h), stage, "column"),
               ParamInfo(f"{p}mlp.up_proj.weight", (inter, h), stage, "column"),
               ParamInfo(f"{p}mlp.down_proj.weight", (h, inter), stage, "row")]
    return params


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


def shard_slice(spec: ModelSpec, param: ParamInfo, tp_rank: int, tp: int) -> ShardSlice:
    """The slice of `param` held by tensor-parallel rank `tp_rank` of `tp`."""
    full = tuple((0, n) for n in param.shape)
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
    return int(np.prod([b - a for a, b in ranges]))


def stage_params(spec: ModelSpec, head: HeadKind, stage: int, pp: int) -> list[ParamInfo]:
    """Parameters held by pipeline stage `stage`."""
    return [p for p in model_params(spec, head, pp) if p.stage == stage]


@lru_cache(maxsize=1024)
def shard_elements(spec: ModelSpec, head: HeadKind, tp: int, pp: int) -> np.ndarray:
    """Parameter elements held by each device: array [pp, tp] (read-only)."""
    problem = parallel_degrees_problem(spec, tp, pp)
    if problem:
        raise ValueError(problem)
    counts = np.zeros((pp, tp), dtype=np.int64)
    # A parameter's slices depend on its shape and split only (not its name or layer):
    # each distinct (shape, split) is sliced once and its per-rank counts reused.
    per_rank: dict[tuple, np.ndarray] = {}
    for param in model_params(spec, head, pp):
        key = (param.shape, param.split)
        if key not in per_rank:
            per_rank[key] = np.array([slice_elements(shard_slice(spec, param, rank, tp))
                                      for rank in range(tp)], dtype=np.int64)
        counts[param.stage] += per_rank[key]
    counts.setflags(write=False)
    return counts
