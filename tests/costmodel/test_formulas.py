"""Known figures reproduced within stated tolerances."""

import pytest

from costmodel.comm import Link, allgather_time_s, allreduce_time_s, p2p_time_s
from costmodel.memory import (
    kv_cache_bytes,
    optimizer_state_bytes_per_device,
    weight_bytes_per_device,
)
from costmodel.roofline import forward_flops_part
from planner.domain.modelspec import PRESETS
from planner.sharding.param_shards import shard_elements


@pytest.mark.parametrize("name,billions", [("llama-7b", 6.74), ("llama-13b", 13.0),
                                           ("llama-70b", 69.0)])
def test_llama2_parameter_counts_match_published_within_half_percent(name, billions):
    spec = PRESETS[name]
    assert spec.num_params() == pytest.approx(billions * 1e9, rel=5e-3)
    assert int(shard_elements(spec, "lm", 1, 1).sum()) == spec.num_params()
    assert int(shard_elements(spec, "lm", 1, 4).sum()) == spec.num_params()


def test_training_flops_are_six_params_per_token_within_five_percent():
    spec = PRESETS["llama-7b"]
    batch, length = 4, 256  # short sequences: the attention term is small
    forward = spec.num_layers * forward_flops_part(spec, "block", 1, batch, length, False) + \
        forward_flops_part(spec, "lm_head", 1, batch, length, False)
    # backward = 2 x forward (roofline.py), so training = 3 x forward
    assert 3 * forward == pytest.approx(6 * spec.num_params() * batch * length, rel=0.05)


def test_mixed_precision_adam_is_sixteen_bytes_per_parameter():
    spec = PRESETS["llama-7b"]
    weights = weight_bytes_per_device(spec, "lm", tp=1, pp=1, dtype_bytes=2)
    optimizer = optimizer_state_bytes_per_device(spec, "lm", tp=1, pp=1, shards=1,
                                                 dtype_bytes=2)
    # weights + gradients (2 + 2 bytes) + fp32 master and moments (12 bytes)
    assert (2 * weights + optimizer).sum() == pytest.approx(16 * spec.num_params())
    sharded = optimizer_state_bytes_per_device(spec, "lm", tp=1, pp=1, shards=4,
                                               dtype_bytes=2)
    assert (2 * weights + sharded).sum() == pytest.approx((4 + 12 / 4) * spec.num_params())


def test_ring_allreduce_of_one_gb_on_eight_devices_by_hand():
    link = Link("test", bandwidth_bytes_per_s=100e9, latency_s=10e-6)
    # 2 (n-1) alpha + 2 (n-1)/n B / bw = 14 x 10 us + 1.75 x 1e9 / 1e11
    assert allreduce_time_s(1e9, 8, link) == pytest.approx(140e-6 + 0.0175)
    assert allgather_time_s(1e9, 8, link) == pytest.approx(70e-6 + 0.00875)
    assert p2p_time_s(1e9, link) == pytest.approx(10e-6 + 0.01)
    assert allreduce_time_s(1e9, 1, link) == 0.0


def test_kv_cache_size_by_hand():
    spec = PRESETS["llama-7b"]
    # 4 seqs x 1000 tokens x 2 (K, V) x 32 layers x 4096 x 2 bytes
    assert kv_cache_bytes(spec, 1, 32, 4, 1000, 2) == 4 * 1000 * 2 * 32 * 4096 * 2
    # tp 2 halves it; llama-70b (8 kv heads of 128) at tp 8 keeps one head per rank
    assert kv_cache_bytes(spec, 2, 32, 4, 1000, 2) == 4 * 1000 * 2 * 32 * 2048 * 2
    big = PRESETS["llama-70b"]
    assert kv_cache_bytes(big, 8, 80, 1, 100, 2) == 100 * 2 * 80 * 128 * 2
