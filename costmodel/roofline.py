"""Analytic compute cost of one model part: FLOPs, bytes moved, and roofline time.

Parts are "embedding", "block" (one transformer block), "lm_head" and "value_head" (each
with the final norm); ops are "forward", "backward", "prefill" (forward that also writes
the KV cache), "decode" (one new token per sequence attending to `length` cached tokens)
and "optimizer" (one Adam step of the part's tp shard; batch and length are ignored).
`batch` is sequences, `length` tokens per sequence (the context for decode). `length` may
be a numpy array: every function is vectorised over it.

time = max(FLOPs / (peak x matmul efficiency(tokens)), bytes / (bandwidth x efficiency))
       + a fixed launch overhead per part.
Sources of each constant: costmodel/efficiency.py.
"""

from __future__ import annotations

import numpy as np

from costmodel import efficiency as eff
from planner.domain.hardware import HardwareSpec
from planner.domain.modelspec import ModelSpec

PARTS = ("embedding", "block", "lm_head", "value_head")
OPS = ("forward", "backward", "prefill", "decode", "optimizer")


def kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    """KV heads each tp rank holds (tp divides them: planner.domain.layout's rule)."""
    assert spec.num_kv_heads % tp == 0, (spec.name, spec.num_kv_heads, tp)
    return spec.num_kv_heads // tp


def part_params_per_rank(spec: ModelSpec, part: str, tp: int) -> float:
    """Parameters of one part on one tp rank (roofline; param_shards has the exact split)."""
    h = spec.hidden_size
    if part == "block":
        kv = kv_heads_per_rank(spec, tp) * spec.head_dim
        attn = 2 * h * h / tp + 2 * h * kv
        return attn + spec.mlp_params_per_layer() / tp + 2 * h
    if part == "embedding":
        return spec.vocab_size * h / tp
    if part == "lm_head":
        return spec.vocab_size * h / tp + h
    return 2 * h + 1


def forward_flops_block(spec: ModelSpec, tp: int, batch: float, length, decode: bool):
    """Forward FLOPs of one block on one tp rank: 2 per weight MAC + attention 4*h*context.

    Prefill/forward tokens attend on average to length/2 earlier tokens (causal mask);
    a decode token attends to `length`. Source: Kaplan et al. 2020 (2N per token) plus
    the attention term of planner.domain.modelspec.
    """
    tokens = batch if decode else batch * length
    context = length if decode else length / 2.0
    return tokens * (2.0 * spec.matmul_params_per_layer() + 4.0 * spec.hidden_size * context) / tp


def forward_flops_part(spec: ModelSpec, part: str, tp: int, batch: float, length, decode: bool):
    """Forward FLOPs of a part on one tp rank (embedding lookup is free)."""
    if part == "block":
        return forward_flops_block(spec, tp, batch, length, decode)
    tokens = batch if decode else batch * np.asarray(length, dtype=float)
    if part == "lm_head":
        return tokens * 2.0 * spec.vocab_size * spec.hidden_size / tp
    if part == "value_head":
        return tokens * 2.0 * spec.hidden_size
    return tokens * 0.0


def forward_bytes_part(spec: ModelSpec, part: str, tp: int, batch: float, length, decode: bool,
                       dtype_bytes: int):
    """HBM bytes one forward pass of a part moves on one tp rank.

    Weights are read once; activations are written and read once (Korthikanti et al. sizes,
    efficiency.py); decode also reads the KV cache of `length` tokens and the lm head writes
    fp32 logits and reads them back for the log-softmax.
    """
    h = spec.hidden_size
    tokens = batch if decode else batch * np.asarray(length, dtype=float)
    weights = part_params_per_rank(spec, part, tp) * dtype_bytes
    if part == "embedding":
        return weights * 0.0 + tokens * h * dtype_bytes * 2.0
    if part == "block":
        act = tokens * h * (eff.ACTIVATION_BYTES_PER_TOKEN_H_REPLICATED
                            + eff.ACTIVATION_BYTES_PER_TOKEN_H_SHARDED / tp) * dtype_bytes / 2.0
        kv_row = 2.0 * kv_heads_per_rank(spec, tp) * spec.head_dim * dtype_bytes
        kv = batch * np.asarray(length, dtype=float) * kv_row if decode else tokens * kv_row
        return weights + 2.0 * act + kv
    if part == "lm_head":
        logits = tokens * spec.vocab_size / tp * eff.LOGITS_BYTES_PER_ELEMENT
        return weights + 2.0 * logits + tokens * h * dtype_bytes
    return weights + tokens * h * dtype_bytes * 2.0


def matmul_efficiency(tokens):
    """Fraction of peak a GEMM with `tokens` rows reaches (efficiency.py)."""
    tokens = np.maximum(np.asarray(tokens, dtype=float), 1.0)
    return eff.MATMUL_EFFICIENCY_MAX * tokens / (tokens + eff.MATMUL_HALF_EFFICIENCY_TOKENS)


def roofline_time_s(flops, bytes_moved, tokens, hardware: HardwareSpec):
    """max(FLOPs / (peak x efficiency(tokens)), bytes / (bandwidth x efficiency))."""
    compute = flops / (hardware.peak_flops * matmul_efficiency(tokens))
    memory = bytes_moved / (hardware.memory_bandwidth_bytes_per_s * eff.MEMORY_BANDWIDTH_EFFICIENCY)
    return np.maximum(compute, memory)


def launch_overhead_s(part: str, hardware: HardwareSpec) -> float:
    base = eff.BLOCK_LAUNCH_OVERHEAD_S[hardware.kind]
    return base if part == "block" else base * eff.SMALL_PART_OVERHEAD_FRACTION


def part_time_s_roofline(spec: ModelSpec, hardware: HardwareSpec, op: str, part: str, tp: int,
                         batch: float, length):
    """Roofline time of one op of one part on one tp rank (module docstring)."""
    dtype = hardware.compute_dtype_bytes
    if op == "optimizer":
        traffic = part_params_per_rank(spec, part, tp) * eff.ADAM_TRAFFIC_BYTES_PER_PARAM
        seconds = traffic / (hardware.memory_bandwidth_bytes_per_s * eff.MEMORY_BANDWIDTH_EFFICIENCY)
        return seconds + launch_overhead_s(part, hardware) + np.asarray(length, dtype=float) * 0.0
    decode = op == "decode"
    flops = forward_flops_part(spec, part, tp, batch, length, decode)
    moved = forward_bytes_part(spec, part, tp, batch, length, decode, dtype)
    tokens = batch if decode else batch * np.asarray(length, dtype=float)
    # Backward: two GEMMs per forward GEMM (input and weight gradients), twice the traffic.
    factor = 2.0 if op == "backward" else 1.0
    return factor * roofline_time_s(flops, moved, tokens, hardware) + \
        launch_overhead_s(part, hardware)
