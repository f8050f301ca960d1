"""What each activation recomputation mode of a train call (Execution.recompute) keeps for
backward and what it reruns there, per decoder block.

Activation bytes of one block per token and hidden unit, in 16-bit, split by sub-layer
(Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models", 2022,
section 4.1, with tensor parallelism t as in their eq. 2 and flash attention, so without
the 5as/h term of the attention scores):
- attention sub-layer with its norm: 5 replicated (norm input 2, q/k/v input 2, dropout mask
  1) + 8/t sharded (Q and K 4, V 2, output-projection input 2);
- MLP sub-layer with its norm: 5 replicated (norm input 2, first linear's input 2, dropout
  mask 1) + 16/t sharded (activation-function input 8 and output 8);
- together h (10 + 24/t), efficiency.ACTIVATION_BYTES_PER_TOKEN_H_*.
A block's input, which a checkpoint keeps to rerun from, is 2 (one 16-bit value per unit).

Per mode (runtime/layers.py runs exactly these), kept until backward per token and block,
and rerun in backward:
- "none": everything, h (10 + 24/t); reruns nothing.
- "selective": the block input + the MLP sub-layer, h (2 + 5 + 16/t); reruns the attention
  sub-layer (input norm, q/k/v projections, rotary, attention, output projection).
- "full": the block input, 2h; reruns the block.
Backward of a rerun part holds its activations again and their gradients: twice its bytes,
for one block at a time (memory.activation_bytes_train_stage).

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
from costmodel.roofline import forward_flops_block
from planner.domain.modelspec import ModelSpec

# Korthikanti et al. 2022 section 4.1, split by sub-layer (module docstring); 16-bit bytes
# per token and hidden unit, replicated over TP and sharded over TP.
ATTENTION_BYTES_PER_TOKEN_H_REPLICATED = 5.0
ATTENTION_BYTES_PER_TOKEN_H_SHARDED = 8.0
MLP_BYTES_PER_TOKEN_H_REPLICATED = 5.0
MLP_BYTES_PER_TOKEN_H_SHARDED = 16.0
BLOCK_INPUT_BYTES_PER_TOKEN_H = 2.0

# A rerun part's activations are held again in backward beside their gradients.
RECOMPUTED_WORKING_COPIES = 2.0

# TP all-reduces each mode reruns per block (module docstring: the early stop skips a rerun
# part's last all-reduce).
RECOMPUTED_TP_ALLREDUCES = {"none": 0, "selective": 0,
                            "full": eff.RECOMPUTED_TP_ALLREDUCES_PER_BLOCK}


def attention_bytes_per_token_h(tp: int) -> float:
    """16-bit bytes per token and hidden unit of the attention sub-layer with its norm."""
    return ATTENTION_BYTES_PER_TOKEN_H_REPLICATED + ATTENTION_BYTES_PER_TOKEN_H_SHARDED / tp


def mlp_bytes_per_token_h(tp: int) -> float:
    """16-bit bytes per token and hidden unit of the MLP sub-layer with its norm."""
    return MLP_BYTES_PER_TOKEN_H_REPLICATED + MLP_BYTES_PER_TOKEN_H_SHARDED / tp


def kept_bytes_per_token_h(mode: str, tp: int) -> float:
    """16-bit bytes per token and hidden unit a block keeps from its forward to its
    backward under `mode` (module docstring)."""
    if mode == "none":
        return attention_bytes_per_token_h(tp) + mlp_bytes_per_token_h(tp)
    if mode == "selective":
        return BLOCK_INPUT_BYTES_PER_TOKEN_H + mlp_bytes_per_token_h(tp)
    assert mode == "full", mode
    return BLOCK_INPUT_BYTES_PER_TOKEN_H


def recomputed_bytes_per_token_h(mode: str, tp: int) -> float:
    """16-bit bytes per token and hidden unit of the part of a block `mode` reruns."""
    if mode == "none":
        return 0.0
    if mode == "selective":
        return attention_bytes_per_token_h(tp)
    assert mode == "full", mode
    return attention_bytes_per_token_h(tp) + mlp_bytes_per_token_h(tp)


def attention_forward_flops_share(spec: ModelSpec, length):
    """Share of one block's forward FLOPs (roofline.forward_flops_block, one sequence of
    `length` tokens) in its attention sub-layer: the q/k/v/o projections (2 FLOPs per weight
    and token) plus the attention core (the block's FLOPs beyond its weight GEMMs);
    vectorised over `length`. tp divides both parts alike, so it drops out."""
    length = np.asarray(length, dtype=float)
    block = forward_flops_block(spec, 1, 1.0, length, decode=False)
    core = block - length * 2.0 * spec.matmul_params_per_layer()
    attention_weights = spec.matmul_params_per_layer() - spec.mlp_params_per_layer()
    return (length * 2.0 * attention_weights + core) / block


def recomputed_forward_share(spec: ModelSpec, mode: str, length):
    """Share of a block's forward time `mode` reruns in backward (module docstring)."""
    if mode == "none":
        return np.zeros_like(np.asarray(length, dtype=float))
    if mode == "selective":
        return attention_forward_flops_share(spec, length)
    assert mode == "full", mode
    return np.ones_like(np.asarray(length, dtype=float))
