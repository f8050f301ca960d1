"""What each activation recomputation mode of a train call (Execution.recompute) keeps for
backward and what it reruns there, per decoder block.

Activation bytes of one block per token, from what autograd saves in the ops of
runtime/layers.py (efficiency.py lists each op's tensors and how they were measured), with
h the hidden size, d the compute dtype's bytes, t the tp degree, q = heads x head_dim / t
the rank's query width, i = intermediate / t, and keys the keys per query:
- attention sub-layer with its norm: the input norm (fp32 input 4h, rsqrt 4, normed d h),
  its output as the q/k/v projections' input (d h), SDPA's q and output (2 d q) and k and v
  (2 d kv, the rank's kv width: enable_gqa, no repeat), its log-sum-exp (4 per local head) and fp32 mask
  (4 keys); with Qwen3's q/k norms also theirs (fp32 input 4 and normed d per element of q
  and of the rank's kv width, rsqrt 4 per head);
- MLP sub-layer with its norm: the norm (4h + 4 + d h), its output as gate/up input (d h),
  and SwiGLU's gate, silu(gate), up and product (4 d i); a mixture-of-experts block keeps
  its router's outputs, the routed rows and their SwiGLU, the combined outputs and the
  shared expert's instead of the SwiGLU (costmodel/moe_cost.py).
Korthikanti et al. 2022 (section 4.1) count h (10 + 24/t) in 16-bit for GPT (a GeLU MLP of
4h, no fp32 norm copies); our SwiGLU MLP of intermediate width and the fp32 norm copies keep
more (llama-tiny in fp32: 80.2 h bytes per token where their count, scaled to fp32, gives
68 h). A block's input, which a checkpoint keeps to rerun from, is d h.

Per mode (runtime/layers.py runs exactly these), kept until backward per token and block,
and rerun in backward:
- "none": both sub-layers; reruns nothing.
- "selective": the block input + the MLP sub-layer; reruns the attention sub-layer (input
  norm, q/k/v projections, rotary, attention, output projection).
- "full": the block input; reruns the block.
Backward of a rerun part holds its activations again, for one block at a time, beside the
gradients of the op being differentiated (RECOMPUTED_WORKING_COPIES, measured;
memory.train_stage_activation_bytes).

Rerun time (stage_timer.recompute_s): the rerun part's share of the block's forward time,
taken equal to its share of the block's forward FLOPs (roofline.forward_flops_block: 2 per
weight MAC, plus the attention core, whatever the roofline counts for it beyond the weight
GEMMs); assumption: both sub-layers run at the same efficiency (norms, rotary and the
softmax are a small memory-bound rest on either side).
TP all-reduces rerun per block: the non-reentrant checkpoint stops rerunning once every
tensor backward needs is back (torch.utils.checkpoint early stop), so a rerun part's last
op, its row-parallel all-reduce (which saves nothing for backward), is never rerun: the
attention sub-layer's one all-reduce is its last op (0 rerun); a full block reruns the
attention all-reduce but not the MLP's (efficiency.RECOMPUTED_TP_ALLREDUCES_PER_BLOCK).
tests/runtime/test_runtime_recompute_modes.py counts them in a TP 2 run.
"""

from __future__ import annotations

import numpy as np

from costmodel import efficiency as eff
from costmodel import moe_cost
from costmodel.roofline import forward_flops_block, kv_heads_per_rank
from planner.domain.modelspec import ModelSpec

# A rerun part's activations are back in backward for one block at a time, beside the
# gradients of the op being differentiated: measured (peak - blocks' kept - head's kept) /
# rerun part = 1.32 and 1.40 for "full" on llama-tiny (fp32, 2 x 256 and 2 x 64 tokens; the
# peak during the last block's rerun, from the live-bytes series of the backward).
RECOMPUTED_WORKING_COPIES = 1.4

# TP all-reduces each mode reruns per block (module docstring: the early stop skips a rerun
# part's last all-reduce).
RECOMPUTED_TP_ALLREDUCES = {"none": 0, "selective": 0,
                            "full": eff.RECOMPUTED_TP_ALLREDUCES_PER_BLOCK}


def rms_norm_bytes(width: float, rows: float, dtype_bytes: int) -> float:
    """What one RMSNorm over `width` elements in `rows` rows keeps (efficiency.RMSNORM_*)."""
    return (width * (eff.RMSNORM_FP32_INPUT_BYTES + eff.RMSNORM_SAVED_DTYPE_COPIES * dtype_bytes)
            + rows * eff.RMSNORM_RSQRT_BYTES_PER_ROW)


def attention_bytes_per_token(spec: ModelSpec, tp: int, keys: float, dtype_bytes: int) -> float:
    """Bytes per token the attention sub-layer with its norm keeps (module docstring)."""
    h, q_width = spec.hidden_size, spec.q_dim / tp
    heads, kv_heads = spec.num_heads / tp, kv_heads_per_rank(spec, tp)
    kept = rms_norm_bytes(h, 1, dtype_bytes) + h * dtype_bytes
    kept += (eff.SDPA_SAVED_Q_WIDTH_TENSORS * q_width
             + eff.SDPA_SAVED_KV_WIDTH_TENSORS * kv_heads * spec.head_dim) * dtype_bytes
    kept += eff.SDPA_LSE_BYTES_PER_HEAD * heads + eff.SDPA_MASK_BYTES_PER_KEY * keys
    if spec.qk_norm:
        kept += rms_norm_bytes((heads + kv_heads) * spec.head_dim, heads + kv_heads,
                                dtype_bytes)
    return kept


def mlp_bytes_per_token(spec: ModelSpec, tp: int, dtype_bytes: int, ep: int = 1) -> float:
    """Bytes per token the MLP sub-layer with its norm keeps (module docstring); of a
    mixture-of-experts block under expert degree `ep`, the norm and its output and what
    costmodel.moe_cost.mlp_kept_bytes_per_token counts instead of the SwiGLU."""
    h = spec.hidden_size
    norm = rms_norm_bytes(h, 1, dtype_bytes) + h * dtype_bytes
    if spec.moe is not None:
        return norm + moe_cost.mlp_kept_bytes_per_token(spec, tp, ep, dtype_bytes)
    return norm + eff.SWIGLU_SAVED_TENSORS * spec.intermediate_size / tp * dtype_bytes


def block_bytes_per_token(spec: ModelSpec, tp: int, keys: float, dtype_bytes: int,
                          ep: int = 1) -> float:
    """Bytes per token a whole block keeps (both sub-layers)."""
    return attention_bytes_per_token(spec, tp, keys, dtype_bytes) + mlp_bytes_per_token(
        spec, tp, dtype_bytes, ep)


def kept_bytes_per_token(spec: ModelSpec, mode: str, tp: int, keys: float,
                         dtype_bytes: int, ep: int = 1) -> float:
    """Bytes per token a block keeps from its forward to its backward under `mode`."""
    if mode == "none":
        return block_bytes_per_token(spec, tp, keys, dtype_bytes, ep)
    block_input = spec.hidden_size * dtype_bytes
    if mode == "selective":
        return block_input + mlp_bytes_per_token(spec, tp, dtype_bytes, ep)
    assert mode == "full", mode
    return block_input


def recomputed_bytes_per_token(spec: ModelSpec, mode: str, tp: int, keys: float,
                               dtype_bytes: int, ep: int = 1) -> float:
    """Bytes per token of the part of a block `mode` reruns."""
    if mode == "none":
        return 0.0
    if mode == "selective":
        return attention_bytes_per_token(spec, tp, keys, dtype_bytes)
    assert mode == "full", mode
    return block_bytes_per_token(spec, tp, keys, dtype_bytes, ep)


def attention_forward_flops_share(spec: ModelSpec, length):
    """Share of one block's forward FLOPs (roofline.forward_flops_block, one sequence of
    `length` tokens) in its attention sub-layer: the q/k/v/o projections (2 FLOPs per weight
    and token) plus the attention core (the block's FLOPs beyond its weight GEMMs);
    vectorised over `length`. tp divides both parts alike, so it drops out."""
    length = np.asarray(length, dtype=float)
    block = forward_flops_block(spec, 1, 1.0, length, decode=False)
    core = block - length * 2.0 * spec.matmul_params_per_layer()
    attention_weights = spec.matmul_params_per_layer() - spec.active_mlp_params_per_layer()
    return (length * 2.0 * attention_weights + core) / block


def recomputed_forward_share(spec: ModelSpec, mode: str, length):
    """Share of a block's forward time `mode` reruns in backward (module docstring)."""
    if mode == "none":
        return np.zeros_like(np.asarray(length, dtype=float))
    if mode == "selective":
        return attention_forward_flops_share(spec, length)
    assert mode == "full", mode
    return np.ones_like(np.asarray(length, dtype=float))
