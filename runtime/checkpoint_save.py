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

Gathering: the first data-parallel replica holds every shard once. On each pipeline stage its
tensor-parallel ranks gather every parameter to tp rank 0 (a gather over the stage's TP
group, concatenated along the split dimension of planner.sharding.param_shards), which
writes that stage's file; after a barrier over those writers (the PP group of tp rank 0),
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
from runtime.params import checkpoint_name

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
PAD_TOKEN_ID = 0  # runtime.executor.dataset.PAD_TOKEN_ID: what a classification head pools by
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_model_type(spec: ModelSpec) -> str:
    """transformers' model_type for the spec, the reverse of planner.domain.model_files:
    Qwen3 has q/k RMSNorm, Qwen2 q/k/v biases, Llama neither. (A spec with both has no
    model_type; the --save check refuses it, runtime.executor.checkpoints.)"""
    if spec.qk_norm:
        return "qwen3"
    return "qwen2" if spec.attention_bias else "llama"


# ModelSpec.rope_scaling field -> its name in transformers' rope object (modeling_rope_utils).
_HF_ROPE_NAMES = {"type": "rope_type",
                  "original_max_positions": "original_max_position_embeddings"}
_FAMILY = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}


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
    else:
        config["attention_bias"] = False
    if head == "value":
        config["id2label"], config["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    return config


def shard_file(stage: int, pp: int) -> str:
    return SINGLE_FILE if pp == 1 else f"model-{stage + 1:05d}-of-{pp:05d}.safetensors"


def _gather_full(model: ParallelModel, info: ParamInfo) -> torch.Tensor | None:
    """The full tensor on tp rank 0 of this stage (None on the other TP ranks)."""
    local = model.params[info.name].detach().contiguous()
    group = model.ctx.tp_group
    if group.size == 1 or info.split == "replicated":
        return local.cpu() if model.ctx.coord.tp_rank == 0 else None
    first = model.ctx.coord.tp_rank == 0
    pieces = [torch.empty_like(local) for _ in range(group.size)] if first else None
    dist.gather(local, pieces, group=group.handle, group_dst=0)
    if not first:
        return None
    full = torch.empty(info.shape, dtype=local.dtype)
    for rank, piece in enumerate(pieces):   # replicated kv heads: equal copies, one place
        ranges = shard_slice(model.spec, info, rank, group.size)
        full[tuple(slice(a, b) for a, b in ranges)] = piece
    return full


def save_hf_checkpoint(model: ParallelModel, directory: Path) -> None:
    """Write `model` to `directory` (module docstring). Collective over the model's ranks:
    every rank of its layout calls it; only the first replica's ranks take part."""
    ctx = model.ctx
    if ctx.coord.dp_rank != 0:
        return
    stage, pp = ctx.coord.pp_rank, ctx.pp
    params = [p for p in model_params(model.spec, model.head, pp) if p.stage == stage]
    full = {checkpoint_name(p.name): _gather_full(model, p) for p in params}
    if ctx.coord.tp_rank != 0:
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
        weight_map = {checkpoint_name(p.name): shard_file(p.stage, pp) for p in infos}
        total = sum(p.num_elements for p in infos) * model.device.dtype.itemsize
        atomic_write_text(directory / INDEX_FILE, json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
        (directory / SINGLE_FILE).unlink(missing_ok=True)
    atomic_write_text(directory / CONFIG_FILE,
                      json.dumps(hf_config(model.spec, model.head, model.device.dtype), indent=1))
