"""Write a model as an HF checkpoint: config.json plus safetensors that transformers loads.

Layout of the files (transformers' own, `PreTrainedModel.save_pretrained`): `config.json`;
the weights in `model.safetensors`, or, when the model runs in pp > 1 stages, one file per
stage `model-0000s-of-0000P.safetensors` listed in `model.safetensors.index.json`
({"metadata": {"total_size": bytes}, "weight_map": {tensor: file}}). Tensors are stored in
the compute dtype (what the engine runs, so transformers reproduces its logits) with the
`{"format": "pt"}` metadata transformers checks. A value-head model is written as
`LlamaForSequenceClassification` (Qwen2..., Qwen3...) with `score.weight`
[1, h] and num_labels 1; our value head's bias goes to `score.bias`, which our loader reads
back and transformers' score layer (no bias) leaves out.

Mixture-of-experts models (spec.moe) are written as their family's transformers 5 model
(model_type qwen3_moe / qwen2_moe / mixtral, Qwen3MoeForCausalLM, Qwen2MoeForCausalLM,
MixtralForCausalLM, or *ForSequenceClassification) with the family's MoE fields (Qwen:
num_experts, num_experts_per_tok, moe_intermediate_size, norm_topk_prob, every block sparse:
decoder_sparse_step 1, mlp_only_layers []; qwen2_moe also shared_expert_intermediate_size
and its q/k/v biases as qkv_bias; Mixtral: num_local_experts, num_experts_per_tok, its
intermediate_size being the expert width), and each stacked expert tensor of ours [E, ...]
split into the family's per-expert tensors (runtime.params.checkpoint_names: Qwen
`mlp.experts.{j}.{gate,up,down}_proj.weight`, Mixtral `block_sparse_moe.experts.{j}.w1/w3/w2`
and `block_sparse_moe.gate.weight`), the names transformers' save_pretrained writes and its
from_pretrained reads.

Gathering: the first data-parallel replica holds every shard once, except the routed experts,
which the first expert-parallel group (dp ranks 0 .. ep - 1, expert slices 0 .. ep - 1)
holds. On each pipeline stage the tensor-parallel ranks of dp rank 0 gather every parameter
to tp rank 0 (a gather over the stage's TP group, concatenated along the split dimension of
planner.sharding.param_shards); for a stacked expert tensor every dp rank of that ep group
does so for its expert slice, then its tp rank 0 ranks gather the slices over their ep group
to dp rank 0 (expert order is ep-rank order). Each rank takes the parameters in model order,
so the gathers of each group run in one order everywhere. Tp rank 0 of dp rank 0 writes the
stage's file; after a barrier over those writers (the PP group of tp rank 0),
stage 0 writes the index and config.json. Every file is written to a temporary name in the
same folder and renamed (planner.domain.output_files.atomic_write_bytes), so a reader sees
the old checkpoint or the new one, and a stale file of the other form (a single file where
an index is written now, or the reverse) is removed once the new one is in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save as safetensors_bytes

from planner.domain.modelspec import HeadKind, ModelSpec
from planner.domain.output_files import atomic_write_bytes, atomic_write_text
from planner.sharding.param_shards import ParamInfo, model_params, shard_slice
from runtime.model import ParallelModel
from runtime.params import checkpoint_names

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
PAD_TOKEN_ID = 0  # runtime.executor.dataset.PAD_TOKEN_ID: what a classification head pools by
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_model_type(spec: ModelSpec) -> str:
    """transformers' model_type for the spec, the reverse of planner.domain.model_files: a
    MoE model's family; else Qwen3 has q/k RMSNorm, Qwen2 q/k/v biases, Llama neither. (A
    spec with both, or one its MoE family cannot express, has no model_type; the --save
    check refuses it, runtime.executor.checkpoints.)"""
    if spec.moe is not None:
        return spec.moe.family
    if spec.qk_norm:
        return "qwen3"
    return "qwen2" if spec.attention_bias else "llama"


# ModelSpec.rope_scaling field -> its name in transformers' rope object (modeling_rope_utils).
_HF_ROPE_NAMES = {"type": "rope_type",
                  "original_max_positions": "original_max_position_embeddings"}
_FAMILY = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "qwen2_moe": "Qwen2Moe",
           "qwen3_moe": "Qwen3Moe", "mixtral": "Mixtral"}


def hf_rope_parameters(spec: ModelSpec) -> dict[str, Any]:
    """transformers 5's `rope_parameters`: rope_theta, rope_type and the scaling's fields."""
    scaling = spec.rope_scaling
    fields = {} if scaling is None else scaling.model_dump(exclude_none=True)
    rope = {_HF_ROPE_NAMES.get(k, k): v for k, v in fields.items()}
    return {"rope_type": "default", **rope, "rope_theta": spec.rope_theta}


def hf_config(spec: ModelSpec, head: HeadKind, dtype: torch.dtype) -> dict[str, Any]:
    """The config.json of `spec` (LlamaConfig / Qwen2Config / Qwen3Config field names).
    rope_theta is written both at the top level (transformers 4) and in rope_parameters
    (transformers 5, which also holds the rope scaling)."""
    model_type = hf_model_type(spec)
    kind = "SequenceClassification" if head == "value" else "CausalLM"
    config: dict[str, Any] = {
        "architectures": [f"{_FAMILY[model_type]}For{kind}"],
        "model_type": model_type, "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size, "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim, "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_positions, "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta, "rope_parameters": hf_rope_parameters(spec),
        "tie_word_embeddings": spec.tie_embeddings, "hidden_act": "silu", "mlp_bias": False,
        "dtype": _DTYPE_NAMES[dtype], "pad_token_id": PAD_TOKEN_ID}
    if model_type == "qwen2":
        config["use_sliding_window"] = False
    elif model_type != "mixtral":   # MixtralConfig has no attention_bias
        config["attention_bias"] = False
    if spec.moe is not None:
        config.update(hf_moe_fields(spec))
    if head == "value":
        config["id2label"], config["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    return config


def hf_moe_fields(spec: ModelSpec) -> dict[str, Any]:
    """The MoE fields of the family's config (Qwen3MoeConfig, Qwen2MoeConfig, MixtralConfig
    field names; module docstring)."""
    moe = spec.moe
    if moe.family == "mixtral":
        return {"num_local_experts": moe.num_experts, "num_experts_per_tok": moe.experts_per_token,
                "sliding_window": None}
    fields = {"num_experts": moe.num_experts, "num_experts_per_tok": moe.experts_per_token,
              "moe_intermediate_size": moe.expert_intermediate_size,
              "norm_topk_prob": moe.normalize_top_k, "decoder_sparse_step": 1,
              "mlp_only_layers": []}
    if moe.family == "qwen2_moe":
        fields.update({"shared_expert_intermediate_size": moe.shared_expert_intermediate_size,
                       "qkv_bias": spec.attention_bias, "use_sliding_window": False})
    return fields


def shard_file(stage: int, pp: int) -> str:
    return SINGLE_FILE if pp == 1 else f"model-{stage + 1:05d}-of-{pp:05d}.safetensors"


def _gather_tp(model: ParallelModel, info: ParamInfo) -> torch.Tensor | None:
    """This rank's expert slice of the tensor (all of it for a dense parameter), whole over
    tp, on tp rank 0 of this stage (None on the other TP ranks)."""
    local = model.params[info.name].detach().contiguous()
    group = model.ctx.tp_group
    if group.size == 1 or info.split == "replicated":
        return local.cpu() if model.ctx.coord.tp_rank == 0 else None
    first = model.ctx.coord.tp_rank == 0
    pieces = [torch.empty_like(local) for _ in range(group.size)] if first else None
    dist.gather(local, pieces, group=group.handle, group_dst=0)
    if not first:
        return None
    ep = model.ctx.ep if info.is_expert else 1
    shape = (info.shape[0] // ep, *info.shape[1:])
    full = torch.empty(shape, dtype=local.dtype)
    for rank, piece in enumerate(pieces):   # replicated kv heads: equal copies, one place
        ranges = shard_slice(model.spec, info, rank, group.size, 0, ep)  # within the slice
        full[tuple(slice(a, b) for a, b in ranges)] = piece.cpu()
    return full


def _gather_full(model: ParallelModel, info: ParamInfo) -> torch.Tensor | None:
    """The full tensor on tp rank 0 of dp rank 0 of this stage (None elsewhere; module
    docstring: experts gathered over the first ep group)."""
    part = _gather_tp(model, info)
    group = model.ctx.ep_group
    if not info.is_expert or group.size == 1 or part is None:
        return part
    first = model.ctx.coord.dp_rank == 0
    pieces = [torch.empty_like(part) for _ in range(group.size)] if first else None
    dist.gather(part, pieces, group=group.handle, group_dst=0)
    return torch.cat(pieces) if first else None


def hf_tensors(spec: ModelSpec, info: ParamInfo, full: torch.Tensor) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of our full parameter `info` (module docstring): itself under
    its HF name, or a stacked expert tensor as one tensor per expert."""
    names = checkpoint_names(spec, info.name)
    if not info.is_expert:
        return {names[0]: full}
    return {name: full[j].clone() for j, name in enumerate(names)}


def save_hf_checkpoint(model: ParallelModel, directory: Path) -> None:
    """Write `model` to `directory` (module docstring). Collective over the model's ranks:
    every rank of its layout calls it; only the first replica's ranks take part (and for a
    MoE model's experts those of the first ep group)."""
    ctx = model.ctx
    expert_holder = model.spec.moe is not None and ctx.coord.dp_rank < ctx.ep
    if ctx.coord.dp_rank != 0 and not expert_holder:
        return
    stage, pp = ctx.coord.pp_rank, ctx.pp
    full: dict[str, torch.Tensor] = {}
    for p in model_params(model.spec, model.head, pp):
        if p.stage != stage or (ctx.coord.dp_rank != 0 and not p.is_expert):
            continue
        tensor = _gather_full(model, p)
        if tensor is not None:
            full.update(hf_tensors(model.spec, p, tensor))
    if ctx.coord.dp_rank != 0 or ctx.coord.tp_rank != 0:
        return
    file = shard_file(stage, pp)
    atomic_write_bytes(directory / file, safetensors_bytes(full, metadata={"format": "pt"}))
    if ctx.pp_group.size > 1:
        dist.barrier(group=ctx.pp_group.handle)
    if stage != 0:
        return
    if pp == 1:
        (directory / INDEX_FILE).unlink(missing_ok=True)
    else:
        infos = model_params(model.spec, model.head, pp)
        weight_map = {name: shard_file(p.stage, pp) for p in infos
                      for name in checkpoint_names(model.spec, p.name)}
        total = sum(p.num_elements for p in infos) * model.device.dtype.itemsize
        atomic_write_text(directory / INDEX_FILE, json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
        (directory / SINGLE_FILE).unlink(missing_ok=True)
    atomic_write_text(directory / CONFIG_FILE,
                      json.dumps(hf_config(model.spec, model.head, model.device.dtype), indent=1))
