"""The cost model prices the q/k/v/o shapes the runtime runs when head_dim is not
hidden / heads (Qwen3): heads x head_dim wide, from the same parameter shards."""

import pytest

from costmodel.memory import kv_cache_bytes
from costmodel.roofline import (
    attention_flops,
    block_gemm_shapes,
    forward_flops_block,
    part_params_per_rank,
)
from planner.domain.modelspec import ModelSpec
from planner.sharding.param_shards import model_params, shard_slice, slice_elements

# Qwen3-8B (its config.json): head_dim 128 x 32 heads = hidden 4096, so shrink the hidden
# size to make the two differ as in Qwen3-0.6B (hidden 1024, 16 heads of 128).
QWEN3_LIKE = ModelSpec(name="qwen3-like", num_layers=2, hidden_size=1024, num_heads=16,
                       num_kv_heads=8, head_dim=128, intermediate_size=3072,
                       vocab_size=151936, max_positions=40960, qk_norm=True)
# Qwen3-8B from its config.json: 8.19 B parameters (the model card says 8.2 B).
QWEN3_8B = ModelSpec(name="qwen3-8b", num_layers=36, hidden_size=4096, num_heads=32,
                     num_kv_heads=8, head_dim=128, intermediate_size=12288,
                     vocab_size=151936, max_positions=40960, rope_theta=1e6, norm_eps=1e-6,
                     qk_norm=True)


def _block_shard(spec: ModelSpec, tp: int, rank: int, suffix: str) -> int:
    """Elements of layer 0's parameters ending in `suffix` on tp rank `rank`."""
    return sum(slice_elements(shard_slice(spec, p, rank, tp))
               for p in model_params(spec, "lm", 1)
               if p.name.startswith("model.layers.0.") and p.name.endswith(suffix))


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_block_gemms_are_the_runtime_weight_shards(tp):
    priced = sum(n * k for n, k in block_gemm_shapes(QWEN3_LIKE, tp))
    for rank in range(tp):
        assert priced == _block_shard(QWEN3_LIKE, tp, rank, "proj.weight")
    norms = _block_shard(QWEN3_LIKE, tp, 0, "norm.weight")    # two h, q_norm and k_norm
    assert norms == 2 * 1024 + 2 * 128
    assert part_params_per_rank(QWEN3_LIKE, "block", tp) == priced + 2 * 1024


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_attention_is_heads_times_head_dim_wide(tp):
    queries_keys = 2 * 512 * 512
    assert attention_flops(QWEN3_LIKE, tp, 2, 512, decode=False) == \
        pytest.approx(4.0 * queries_keys * (16 // tp) * 128)
    weights = 2.0 * 2 * 512 * _block_shard(QWEN3_LIKE, tp, 0, "proj.weight")
    assert forward_flops_block(QWEN3_LIKE, tp, 2, 512, decode=False) == pytest.approx(
        weights + attention_flops(QWEN3_LIKE, tp, 2, 512, decode=False))


def test_kv_cache_is_kv_heads_times_head_dim():
    # 2 (K, V) x layers x kv heads / tp x head_dim x dtype bytes per token
    assert kv_cache_bytes(QWEN3_LIKE, 2, 2, 1, 1000, 2) == 2 * 2 * 4 * 128 * 2 * 1000


def test_qwen3_8b_parameter_count_matches_published():
    assert QWEN3_8B.num_params() == pytest.approx(8.19e9, rel=5e-3)
    assert QWEN3_8B.num_params() == sum(p.num_elements for p in model_params(QWEN3_8B, "lm", 1))
