"""Tensor-parallel LLaMA building blocks as functions of plain parameter tensors.

Parameters are the per-rank shards of `planner.sharding.param_shards`; activations between blocks are
replicated over the TP group ([batch, seq, hidden] on every TP rank). Conventions follow HF
`LlamaForCausalLM` so HF checkpoints give the same logits: RMSNorm computed in fp32, rotary
embeddings in the rotate-half layout (first and second half of each head dim form the pairs),
K/V heads shared by consecutive query heads (GQA), SwiGLU MLP. Qwen3's q/k norms (HF
`Qwen3Attention`): an RMSNorm over head_dim of each q and k head, after the projection and
before rotary, with one weight [head_dim] shared by all heads and replicated over tp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from planner.domain.modelspec import RopeScaling
from runtime.comm import copy_to_tp, reduce_from_tp
from runtime.moe import ExpertParallel, moe_mlp
from runtime.parallel_context import Group
from runtime.rope import attention_scaling, inverse_frequencies


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32, cast back to the input dtype before the weight (as HF does)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype,
                   scaling: RopeScaling | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [batch, 1, seq, head_dim] for integer `positions` [batch, seq],
    with the rotary `scaling` (runtime/rope.py; yarn also scales cos and sin, as HF does)."""
    inv_freq = inverse_frequencies(head_dim, theta, scaling, positions.device)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    factor = attention_scaling(scaling)
    return (angles.cos() * factor).to(dtype), (angles.sin() * factor).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding of x [batch, heads, seq, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@dataclass
class LayerCache:
    """K and V of one layer for this rank's kv heads: [batch, kv_heads_local, slots, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass(frozen=True)
class AttentionInputs:
    """What every attention layer of one forward pass shares.

    mask: bool [batch, 1, seq, keys], True where a query may attend; None for a cache-less
    pass whose rows are right-aligned (runtime/model.py forward_sequences: real tokens in the
    first slots), which attends causally (query slot i to key slots 0..i) with no mask
    tensor. cache_start: the cache slot of the first query token (only with caches).
    """

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None
    cache_start: int = 0


def attention(x: torch.Tensor, p: dict[str, torch.Tensor], prefix: str, head_dim: int,
              eps: float, inputs: AttentionInputs, tp: Group, cache: LayerCache | None
              ) -> torch.Tensor:
    """Grouped-query self-attention: column-parallel q/k/v, row-parallel output projection.

    The rank's query heads use its kv heads (group size local q heads / local kv heads):
    with tp above the kv-head count the rank holds one kv head, the one its q heads map to
    (planner.sharding.param_shards), replicated on the ranks sharing it; each copy's
    gradient then covers only this rank's q heads, and the optimizer sums the copies over
    the ranks sharing the head (runtime/optimizer.py). Forward needs no communication.

    q/k norms (when `{prefix}q_norm.weight` is there): each rank normalises its own heads,
    so a norm weight's gradient on one rank covers only those heads; copy_to_tp sums it over
    the tp group in backward, giving every rank the full (replicated) gradient.
    """
    batch, seq, _ = x.shape
    x = copy_to_tp(x, tp)

    def project(name: str) -> torch.Tensor:
        out = F.linear(x, p[f"{prefix}{name}_proj.weight"], p.get(f"{prefix}{name}_proj.bias"))
        out = out.view(batch, seq, -1, head_dim)
        norm = p.get(f"{prefix}{name}_norm.weight")
        if norm is not None:
            out = rms_norm(out, copy_to_tp(norm, tp), eps)
        return out.transpose(1, 2)

    q, k, v = project("q"), project("k"), project("v")
    q = apply_rotary(q, inputs.cos, inputs.sin)
    k = apply_rotary(k, inputs.cos, inputs.sin)
    if cache is not None:
        end = inputs.cache_start + seq
        cache.k[:, :, inputs.cache_start:end] = k
        cache.v[:, :, inputs.cache_start:end] = v
        k, v = cache.k[:, :, :end], cache.v[:, :, :end]
    # grouped-query attention: each kv head serves q heads / kv heads query heads; SDPA
    # reads K and V at kv width (enable_gqa), no copies repeated to the query heads. Without
    # a mask (right-aligned rows) it runs is_causal, which keeps it eligible for the flash
    # kernels on CUDA (any attn_mask rules them out) and lets them skip the key blocks above
    # the diagonal.
    causal = inputs.mask is None
    assert not causal or cache is None, "causal attention without a mask is cache-less"
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=inputs.mask, is_causal=causal,
                                         enable_gqa=q.shape[1] != k.shape[1])
    out = out.transpose(1, 2).reshape(batch, seq, -1)
    return reduce_from_tp(F.linear(out, p[f"{prefix}o_proj.weight"]), tp)


def swiglu_mlp(x: torch.Tensor, p: dict[str, torch.Tensor], prefix: str, tp: Group
               ) -> torch.Tensor:
    """SwiGLU MLP: column-parallel gate and up, row-parallel down projection."""
    x = copy_to_tp(x, tp)
    hidden = F.silu(F.linear(x, p[f"{prefix}gate_proj.weight"])) * F.linear(
        x, p[f"{prefix}up_proj.weight"])
    return reduce_from_tp(F.linear(hidden, p[f"{prefix}down_proj.weight"]), tp)


def attention_sublayer(x: torch.Tensor, p: dict[str, torch.Tensor], layer: int, head_dim: int,
                       eps: float, inputs: AttentionInputs, tp: Group,
                       cache: LayerCache | None) -> torch.Tensor:
    """The attention sub-layer of block `layer`: input norm, then attention (its output, to
    be added to the residual x)."""
    prefix = f"model.layers.{layer}."
    return attention(rms_norm(x, p[f"{prefix}input_layernorm.weight"], eps), p,
                     f"{prefix}self_attn.", head_dim, eps, inputs, tp, cache)


def decoder_block(x: torch.Tensor, p: dict[str, torch.Tensor], layer: int, head_dim: int,
                  eps: float, inputs: AttentionInputs, tp: Group, cache: LayerCache | None,
                  recompute_attention: bool = False, moe: ExpertParallel | None = None
                  ) -> torch.Tensor:
    """One pre-norm transformer block; its MLP is the SwiGLU MLP, or with `moe` (a
    mixture-of-experts model) the MoE block of runtime/moe.py.

    recompute_attention (the "selective" Execution.recompute): keep only the sub-layer's
    input x (the block input, which the checkpoint holds) and rerun the attention sub-layer
    in backward (torch.utils.checkpoint, non-reentrant); the MLP keeps its activations. It
    reruns the input norm, q/k/v projections, rotary, the attention core and the output
    projection, not the output projection's TP all-reduce: that is the sub-layer's last op
    and saves nothing for backward, so the checkpoint's early stop ends the rerun before it.
    Megatron-LM's selective recomputation reruns the attention core only, whose s^2 scores
    and softmax are most of the attention's memory without flash attention; with flash
    attention (SDPA here, also on CPU) the core keeps only q, k, v, its output and the row
    log-sum-exps, and q, k, v are the core's inputs, so a checkpoint around the core alone
    would free little: the whole sub-layer is what frees memory.
    """
    prefix = f"model.layers.{layer}."
    sublayer_args = (x, p, layer, head_dim, eps, inputs, tp, cache)
    if recompute_attention:
        x = x + checkpoint(attention_sublayer, *sublayer_args, use_reentrant=False)
    else:
        x = x + attention_sublayer(*sublayer_args)
    normed = rms_norm(x, p[f"{prefix}post_attention_layernorm.weight"], eps)
    if moe is not None:
        return x + moe_mlp(normed, p, f"{prefix}mlp.", moe)
    return x + swiglu_mlp(normed, p, f"{prefix}mlp.", tp)


def vocab_parallel_embedding(ids: torch.Tensor, weight: torch.Tensor, vocab_start: int,
                             tp: Group) -> torch.Tensor:
    """Embedding whose rows [vocab_start, vocab_start + rows) live on this rank."""
    local = ids - vocab_start
    outside = (local < 0) | (local >= weight.shape[0])
    out = F.embedding(local.clamp(0, weight.shape[0] - 1), weight)
    out = out.masked_fill(outside[..., None], 0.0)
    return reduce_from_tp(out, tp)
