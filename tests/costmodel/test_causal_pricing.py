"""The price of right-aligned causal attention (costmodel/roofline.py, costmodel/memory.py):
on cuda the forward and backward of cache-less passes (train, inference) compute the causal
score blocks only (FlashAttention-2's block skipping) and hold no mask; generation's passes
and every pass on cpu keep the masked price over all keys."""

from __future__ import annotations

import numpy as np
import pytest

from costmodel import efficiency as eff
from costmodel import recompute
from costmodel.memory import (
    block_working_bytes,
    mask_keys,
    train_stage_activation_bytes,
)
from costmodel.roofline import (
    FLASH_ATTENTION_CAUSAL_BLOCK_QUERIES,
    attention_flops,
    attention_time_s,
    causal_attention,
    causal_keys_per_query,
    op_is_causal,
)
from planner.domain.hardware import hardware_by_name
from planner.domain.layout import RECOMPUTE_MODES
from planner.domain.modelspec import PRESETS

H100 = hardware_by_name("h100-sxm-80gb")
CPU = hardware_by_name("cpu")
LLAMA_7B = PRESETS["llama-7b"]
B = FLASH_ATTENTION_CAUSAL_BLOCK_QUERIES


def test_causal_keys_by_hand():
    # one query block or less: nothing to skip
    assert causal_keys_per_query(1) == pytest.approx(1.0)
    assert causal_keys_per_query(B) == pytest.approx(B)
    # two blocks: block 0 runs B keys, block 1 runs 2B: (B^2 + 2 B^2) / 2B = 1.5 B
    assert causal_keys_per_query(2 * B) == pytest.approx(1.5 * B)
    # one row past a block: B^2 scores of block 0 + the last row's B + 1 keys
    assert causal_keys_per_query(B + 1) == pytest.approx((B * B + (B + 1)) / (B + 1))
    lengths = np.array([64, 4 * B, 64 * B])
    # B divides L: L (T + 1) / (2 T)
    expected = np.array([64.0, 4 * B * 5 / 8, 64 * B * 65 / 128])
    np.testing.assert_allclose(causal_keys_per_query(lengths), expected, rtol=1e-12)
    assert causal_keys_per_query(0) == 0.0


def test_the_device_kind_decides_and_only_cache_less_ops_are_causal():
    assert causal_attention(H100.kind) and not causal_attention(CPU.kind)
    assert op_is_causal("forward", "cuda") and op_is_causal("backward", "cuda")
    for op in ("prefill", "decode"):
        assert not op_is_causal(op, "cuda"), op
    for op in ("forward", "backward", "prefill", "decode"):
        assert not op_is_causal(op, "cpu"), op


def test_priced_attention_flops_about_halve_on_cuda_for_long_sequences():
    length = 32768
    full = attention_flops(LLAMA_7B, 1, 2, length, decode=False)
    causal = attention_flops(LLAMA_7B, 1, 2, length, decode=False, causal=True)
    assert causal / full == pytest.approx(0.5, abs=0.01)
    # the forward of a train / inference pass against the masked prefill of the same
    # tokens (same kernel efficiency): compute-bound, so the time about halves too
    forward = attention_time_s(LLAMA_7B, 1, "forward", 2, length, H100)
    masked = attention_time_s(LLAMA_7B, 1, "prefill", 2, length, H100)
    assert forward / masked == pytest.approx(0.5, abs=0.01)
    # short sequences (one FlashAttention block) save nothing but the mask's bytes
    assert attention_time_s(LLAMA_7B, 1, "forward", 64, B, H100) <= \
        attention_time_s(LLAMA_7B, 1, "prefill", 64, B, H100)


def test_the_forward_flops_term_is_the_attention_priced():
    length = np.array([512.0, 8192.0])
    compute = attention_time_s(LLAMA_7B, 2, "backward", 4, length, H100)
    achieved = H100.max_achievable_matmul_flops * eff.ATTENTION_EFFICIENCY_OF_MAMF["backward"]
    flops = eff.ATTENTION_BACKWARD_FLOPS_FACTOR * 4 * length * 4.0 * (LLAMA_7B.q_dim / 2) \
        * causal_keys_per_query(length)
    np.testing.assert_array_less(flops / achieved * (1 - 1e-12), compute + 1e-30)
    assert compute[1] == pytest.approx(flops[1] / achieved)   # compute-bound at 8k


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_cpu_prices_are_the_masked_ones(op):
    """On cpu a cache-less op prices attention exactly as before: the masked kernel over
    all keys, the prefill's attention (op only matters for decode, backward and causal)."""
    lengths = np.array([16.0, 128.0, 1000.0])
    spec = PRESETS["llama-tiny"]
    masked = attention_time_s(spec, 1, "prefill", 3, lengths, CPU)
    if op == "forward":
        assert np.array_equal(attention_time_s(spec, 1, op, 3, lengths, CPU), masked)
    full_flops = 3 * lengths * 4.0 * spec.q_dim * lengths
    assert np.array_equal(attention_flops(spec, 1, 3, lengths, decode=False), full_flops)


def test_no_mask_bytes_in_cuda_cache_less_working_sets():
    s, tokens, d = 16384, 16384, 2
    assert mask_keys("cuda", "forward", s) == 0.0
    assert mask_keys("cuda", "backward", s) == 0.0
    assert mask_keys("cuda", "prefill", s) == s          # generation keeps its mask
    assert mask_keys("cpu", "forward", s) == s
    # llama-7b at 16k keys: with the mask the attention core outweighs the MLP, without it
    # the MLP is the larger sub-layer
    h = LLAMA_7B.hidden_size
    residual = eff.NO_GRAD_RESIDUAL_TENSORS * h * d
    core = (2 * LLAMA_7B.q_dim + 2 * LLAMA_7B.num_kv_heads * LLAMA_7B.head_dim) * d
    mlp = eff.NO_GRAD_SWIGLU_TENSORS * LLAMA_7B.intermediate_size * d
    assert core + eff.SDPA_MASK_BYTES_PER_KEY * s > mlp > core
    assert block_working_bytes(LLAMA_7B, 1, tokens, s, d) == pytest.approx(
        tokens * (residual + core + eff.SDPA_MASK_BYTES_PER_KEY * s))
    assert block_working_bytes(LLAMA_7B, 1, tokens, 0, d) == pytest.approx(
        tokens * (residual + mlp))


def test_train_activations_drop_the_kept_mask_on_cuda_only():
    """Without recomputation every block keeps SDPA's mask on cpu (4 bytes per key and
    token), none on cuda; the rest is equal."""
    spec, s, seqs, pp = LLAMA_7B, 2048, 2, 2
    mode = np.array([RECOMPUTE_MODES.index("none")])
    args = (spec, "lm", 1, pp, np.array([4]), mode, np.array([seqs]), s, 2)
    cpu = train_stage_activation_bytes(*args, device_kind="cpu")
    cuda = train_stage_activation_bytes(*args, device_kind="cuda")
    layers = spec.num_layers // pp
    in_flight = np.array([2, 1])   # 1F1B: pp - stage micro-batches on each stage
    mask = seqs * s * in_flight * layers * eff.SDPA_MASK_BYTES_PER_KEY * s
    np.testing.assert_allclose(cpu - cuda, mask[None], rtol=1e-12)
    kept = recompute.kept_bytes_per_token(spec, "none", 1, 0, 2)
    assert kept == recompute.kept_bytes_per_token(spec, "none", 1, s, 2) \
        - eff.SDPA_MASK_BYTES_PER_KEY * s
