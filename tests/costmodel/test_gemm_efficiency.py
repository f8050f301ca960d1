"""The GEMM efficiency curve and the per-kernel roofline of a part (costmodel/roofline.py)."""

import numpy as np
import pytest

from costmodel import efficiency as eff
from costmodel.roofline import (
    device_time_s,
    gemm_efficiency,
    gemm_time_s,
    host_time_s,
    part_params_per_rank,
    part_time_s_roofline,
)
from planner.domain.hardware import hardware_by_name
from planner.domain.modelspec import PRESETS

H100 = hardware_by_name("h100-sxm-80gb")
A100 = hardware_by_name("a100-sxm-80gb")
CPU = hardware_by_name("cpu")


@pytest.mark.parametrize("hw", [H100, A100])
def test_efficiency_rises_with_whole_tiles_of_tokens_and_stays_under_mamf(hw):
    tokens = np.arange(1, 65) * eff.GEMM_TILE_ROWS
    curve = gemm_efficiency(tokens, 4096, 4096, hw)
    assert np.all(np.diff(curve) >= 0)
    assert curve.max() <= hw.max_achievable_matmul_flops / hw.peak_flops + 1e-12
    # a partial tile costs a whole one: 129 rows run at about half the efficiency of 128
    assert gemm_efficiency(129, 4096, 4096, hw) < 0.6 * gemm_efficiency(128, 4096, 4096, hw)


@pytest.mark.parametrize("hw", [H100, A100, CPU])
def test_gemm_time_never_falls_when_tokens_grow(hw):
    tokens = np.arange(1, 5000, 7, dtype=float)
    times = gemm_time_s(tokens, 4096, 4096, hw)
    assert np.all(np.diff(times) >= -1e-12 * times[1:])  # steps at whole tiles, never down


def test_a_large_gemm_on_h100_reaches_its_measured_maximum():
    m, n, k = 8192, 8192, 8192
    achieved = 2.0 * m * n * k / gemm_time_s(m, n, k, H100)
    assert achieved == pytest.approx(H100.max_achievable_matmul_flops, rel=0.01)
    assert achieved < H100.peak_flops


def test_cpu_keeps_the_rows_curve():
    assert gemm_efficiency(32, 4096, 4096, CPU) == pytest.approx(
        eff.CPU_MATMUL_EFFICIENCY_MAX / 2)


@pytest.mark.parametrize("hw", [H100, A100])
def test_decode_at_batch_one_is_memory_bound_on_the_weights(hw):
    spec = PRESETS["llama-7b"]
    device = device_time_s(spec, hw, "decode", "block", 1, 1, 16)
    weights = part_params_per_rank(spec, "block", 1) * hw.compute_dtype_bytes
    weights_s = weights / (hw.memory_bandwidth_bytes_per_s * eff.MEMORY_BANDWIDTH_EFFICIENCY)
    assert weights_s <= device < 1.1 * weights_s


def test_eager_decode_at_batch_one_waits_on_the_host():
    spec = PRESETS["llama-7b"]
    t = part_time_s_roofline(spec, A100, "decode", "block", 1, 1, 16)
    assert t == pytest.approx(host_time_s(spec, "block", "decode"))
    assert t > device_time_s(spec, A100, "decode", "block", 1, 1, 16)


def test_backward_prices_two_gemms_per_forward_gemm_and_more_than_twice_in_total():
    spec = PRESETS["llama3-8b"]
    fwd = device_time_s(spec, H100, "forward", "block", 1, 1, 8192)
    bwd = device_time_s(spec, H100, "backward", "block", 1, 1, 8192)
    # GEMMs and element-wise ops double; attention's backward is 2.5x its forward FLOPs
    assert 2.0 * fwd < bwd < 2.5 * fwd


def test_prefill_runs_the_lm_head_on_the_last_token_only():
    spec = PRESETS["llama-7b"]
    prefill = device_time_s(spec, A100, "prefill", "lm_head", 1, 4, 2048)
    forward = device_time_s(spec, A100, "forward", "lm_head", 1, 4, 2048)
    assert prefill == pytest.approx(device_time_s(spec, A100, "forward", "lm_head", 1, 4, 1))
    assert prefill < forward / 20
