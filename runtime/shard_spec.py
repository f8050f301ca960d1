"""Per-rank shard format of model parameters: a shared pure function (no torch).

The runtime stores every parameter as a plain tensor holding one slice of the full (HF-shaped)
tensor; the executor's parameter reallocation and the cost model's transfer schedule both use
this module to know which rank holds what.

Assumptions (Megatron-style tensor parallelism, HF LLaMA parameter names and shapes):
- Column-parallel (output rows split evenly over TP ranks, dim 0): q/k/v projections and their
  biases, MLP gate and up projections, the vocab-parallel embedding and LM head.
- Row-parallel (input columns split, dim 1): attention output projection, MLP down projection.
- Replicated on every TP rank: RMSNorm weights and the scalar value head.
- tp must divide num_heads, num_kv_heads, intermediate_size and vocab_size (checked by
  `check_tp_supported`); kv-head replication for tp > num_kv_heads is refused.
- Pipeline stage s holds the blocks of `layer_ranges(num_layers, pp)[s]`; stage 0 also holds
  the embedding, the last stage the final norm and head. Tied embeddings need pp = 1 (the head
  then reuses `model.embed_tokens.weight`).
- A value head ("value") is `value_head.weight` [1, h] and `value_head.bias` [1].

Example, llama-tiny (h 256, 8 heads, 4 kv heads, head_dim 32), tp=2, tp_rank=1:
    model.layers.0.self_attn.k_proj.weight  full (128, 256) -> rows [64, 128), all columns
    model.layers.0.self_attn.o_proj.weight  full (256, 256) -> all rows, columns [128, 256)
"""

from __future__ import annotations

from typing import Literal

from planner.modelspec import ModelSpec
from planner.pipeline_partition import layer_ranges

HeadKind = Literal["lm", "value"]
# A shard is one half-open (start, stop) range per dimension of the full tensor.
ShardSlice = tuple[tuple[int, int], ...]

EMBEDDING = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
VALUE_HEAD_WEIGHT = "value_head.weight"
VALUE_HEAD_BIAS = "value_head.bias"

_COLUMN_PARALLEL_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias",
                             "k_proj.bias", "v_proj.bias", "gate_proj.weight", "up_proj.weight")
_ROW_PARALLEL_SUFFIXES = ("o_proj.weight", "down_proj.weight")


def check_tp_supported(spec: ModelSpec, tp: int) -> None:
    """Raise ValueError unless tensor parallel degree `tp` can shard `spec` evenly."""
    sizes = {"num_heads": spec.num_heads, "num_kv_heads": spec.num_kv_heads,
             "intermediate_size": spec.intermediate_size, "vocab_size": spec.vocab_size}
    bad = [f"{name} {value}" for name, value in sizes.items() if value % tp]
    if bad:
        raise ValueError(f"{spec.name}: tp {tp} does not divide {', '.join(bad)} "
                         f"(kv-head replication for tp > num_kv_heads is not supported)")


def check_pp_supported(spec: ModelSpec, pp: int) -> None:
    """Raise ValueError unless `spec` can be split into `pp` pipeline stages."""
    if pp > spec.num_layers:
        raise ValueError(f"{spec.name}: pp {pp} exceeds num_layers {spec.num_layers}")
    if spec.tie_embeddings and pp > 1:
        raise ValueError(f"{spec.name}: tied embeddings need pp 1, got pp {pp}")


def layer_param_names(spec: ModelSpec, layer: int) -> list[str]:
    """HF names of the parameters of transformer block `layer`."""
    prefix = f"model.layers.{layer}."
    names = [f"{prefix}input_layernorm.weight", f"{prefix}post_attention_layernorm.weight"]
    names += [f"{prefix}self_attn.{p}_proj.weight" for p in ("q", "k", "v", "o")]
    if spec.attention_bias:
        names += [f"{prefix}self_attn.{p}_proj.bias" for p in ("q", "k", "v")]
    names += [f"{prefix}mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    return names


def head_param_names(spec: ModelSpec, head: HeadKind) -> list[str]:
    """Final norm and output head parameters (the tied LM head has no tensor of its own)."""
    if head == "value":
        return [FINAL_NORM, VALUE_HEAD_WEIGHT, VALUE_HEAD_BIAS]
    return [FINAL_NORM] if spec.tie_embeddings else [FINAL_NORM, LM_HEAD]


def stage_param_names(spec: ModelSpec, head: HeadKind, pp_stage: int, pp: int) -> list[str]:
    """Names of the parameters held by pipeline stage `pp_stage` of `pp`, in a fixed order."""
    start, end = layer_ranges(spec.num_layers, pp)[pp_stage]
    names = [EMBEDDING] if pp_stage == 0 else []
    for layer in range(start, end):
        names += layer_param_names(spec, layer)
    if pp_stage == pp - 1:
        names += head_param_names(spec, head)
    return names


def all_param_names(spec: ModelSpec, head: HeadKind) -> list[str]:
    """Every parameter of the model, in stage order."""
    return stage_param_names(spec, head, 0, 1)


def full_shape(spec: ModelSpec, name: str) -> tuple[int, ...]:
    """Shape of the full (unsharded) parameter `name`, as in an HF checkpoint."""
    h, kv, inter = spec.hidden_size, spec.kv_dim, spec.intermediate_size
    if name in (EMBEDDING, LM_HEAD):
        return (spec.vocab_size, h)
    if name == VALUE_HEAD_WEIGHT:
        return (1, h)
    if name == VALUE_HEAD_BIAS:
        return (1,)
    if name.endswith("norm.weight"):
        return (h,)
    suffix = name.rsplit(".", 2)[-2:]
    shapes = {
        "q_proj": {"weight": (h, h), "bias": (h,)},
        "k_proj": {"weight": (kv, h), "bias": (kv,)},
        "v_proj": {"weight": (kv, h), "bias": (kv,)},
        "o_proj": {"weight": (h, h)},
        "gate_proj": {"weight": (inter, h)},
        "up_proj": {"weight": (inter, h)},
        "down_proj": {"weight": (h, inter)},
    }
    try:
        return shapes[suffix[0]][suffix[1]]
    except KeyError:
        raise ValueError(f"unknown parameter name {name!r}") from None


def split_dim(name: str) -> int | None:
    """The dimension split over TP ranks (0 column-parallel, 1 row-parallel), None if replicated."""
    if name in (EMBEDDING, LM_HEAD) or name.endswith(_COLUMN_PARALLEL_SUFFIXES):
        return 0
    if name.endswith(_ROW_PARALLEL_SUFFIXES):
        return 1
    return None


def shard_slice(spec: ModelSpec, name: str, tp_rank: int, tp: int) -> ShardSlice:
    """The (start, stop) range per dimension of the full tensor `name` held by `tp_rank`."""
    shape = full_shape(spec, name)
    dim = split_dim(name)
    ranges = [(0, size) for size in shape]
    if dim is not None:
        assert shape[dim] % tp == 0, (name, shape, tp)
        part = shape[dim] // tp
        ranges[dim] = (tp_rank * part, (tp_rank + 1) * part)
    return tuple(ranges)


def shard_shape(spec: ModelSpec, name: str, tp_rank: int, tp: int) -> tuple[int, ...]:
    """Shape of the shard of `name` on `tp_rank`."""
    return tuple(stop - start for start, stop in shard_slice(spec, name, tp_rank, tp))


def is_tp_replicated(name: str) -> bool:
    """True when every TP rank holds the whole tensor (count it once in global norms)."""
    return split_dim(name) is None
