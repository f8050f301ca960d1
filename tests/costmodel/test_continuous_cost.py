"""Continuous batching priced (costmodel/generate_cost.py): its decode rounds against a
simulation of the runtime's slot refills, one wave equal to static, below static under a
long tail and equal for fixed lengths (lockstep); its phases named; static untouched by it."""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from costmodel.call_geometry import geometry
from costmodel.generate_cost import (
    continuous_decode_rounds,
    decode_rounds,
    generate_phases_s,
)
from costmodel.stage_timer import StageTimer
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.length_distribution import BucketLengths, ClippedGeometricLengths
from planner.domain.modelspec import PRESETS
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import BatchSpec, ModelRole

H100X8 = cluster_preset("h100x8")
ROLE = ModelRole(spec=PRESETS["llama-7b"], head="lm")
TAIL = ClippedGeometricLengths(mean=64, max=512)


def _simulated_rounds(lengths, rows: int, slots: int, interval: int, samples: int = 300
                      ) -> float:
    """The runtime's rounds (runtime/generate.py, one group, one replica) by simulation:
    a row of length L filled at check round c holds its slot until the first check at or
    after c + L; the next prompt goes to the freed slot; rounds with a decode = the last
    round - 1 (round 0 only prefills)."""
    rng = np.random.default_rng(3)
    total = 0.0
    for _ in range(samples):
        drawn = lengths.quantile(1.0 - rng.random(rows))
        free = [0] * slots                      # round each slot is free again
        heapq.heapify(free)
        end = 0
        for length in drawn:
            start = heapq.heappop(free)
            released = -(-(start + int(length)) // interval) * interval
            end = max(end, start + int(length))
            heapq.heappush(free, released)
        total += end - 1
    return total / samples


@pytest.mark.parametrize("lengths,interval", [
    (TAIL, 1), (TAIL, 16), (ClippedGeometricLengths(mean=20, max=40), 1),
    (BucketLengths.model_validate({"buckets": [{"len": 8, "weight": 3},
                                               {"len": 64, "weight": 1}]}), 1)])
def test_priced_rounds_match_a_simulation_of_the_slot_refills(lengths, interval):
    """Within 8%: the drain is priced as a wave started together (module docstring)."""
    priced = continuous_decode_rounds(lengths, micro_batches=16, pp=1, dp=1, rows=8,
                                      interval=interval)
    assert priced == pytest.approx(_simulated_rounds(lengths, 16 * 8, 8, interval), rel=0.08)


def test_one_wave_has_the_static_rounds():
    for pp, m in [(1, 1), (4, 3), (2, 2)]:
        ex = Execution(devices=tuple(range(8)), dp=8 // pp, tp=1, pp=pp, micro_batches=m)
        batch = BatchSpec(n_seqs=48, prompt_len=100, gen_len={"mean": 64, "max": 512})
        st = StageTimer(ROLE, ex, geometry(ex, ROLE.spec.num_layers, H100X8), PROFILES_DIR)
        static = decode_rounds(st, 6, batch)
        assert continuous_decode_rounds(batch.gen_lengths, m, pp, ex.dp, 6, 16,
                                        batch.gen_len) == pytest.approx(static, rel=1e-12)


def _phases(gen_len, batching: str, m: int = 8) -> dict[str, float]:
    return _phases_with(512, gen_len, batching, m)


def _phases_with(prompt_len, gen_len, batching: str, m: int = 8) -> dict[str, float]:
    ex = Execution(devices=tuple(range(8)), dp=8, tp=1, pp=1, micro_batches=m,
                   decode_batching=batching)
    batch = BatchSpec(n_seqs=4096, prompt_len=prompt_len, gen_len=gen_len)
    st = StageTimer(ROLE, ex, geometry(ex, ROLE.spec.num_layers, H100X8), PROFILES_DIR)
    return generate_phases_s(st, -(-batch.n_seqs // (ex.dp * m)), batch, sampled=True)


def test_continuous_is_cheaper_under_a_long_tail_and_static_for_fixed_lengths():
    tail = {"mean": 2048, "max": 16384}
    static, continuous = _phases(tail, "static"), _phases(tail, "continuous")
    assert set(continuous) == {"prefill", "refill_prefill", "decode", "decode_drain"}
    assert sum(continuous.values()) < 0.5 * sum(static.values())
    # fixed lengths (and prompts): slots refill in lockstep, static's schedule and price
    assert _phases(2048, "continuous") == _phases(2048, "static")
    lengths = BatchSpec(n_seqs=1, prompt_len=1, gen_len=2048).gen_lengths
    for pp, m, interval, waves in [(1, 8, 16, 8), (2, 3, 1, 2), (4, 2, 16, 1)]:
        # static's: ceil(m / pp) waves of L - 1 steps
        assert continuous_decode_rounds(lengths, m, pp, 8, 64, interval, 2048) == waves * 2047


def test_fixed_lengths_with_varied_prompts_read_the_widest_prompt_of_the_call():
    """Lockstep continuous is static's schedule, its attention over the call's widest
    prompt (module docstring): above static by the wider context only, prefill equal."""
    prompts = {"mean": 128, "max": 512}
    static, continuous = (_phases_with(prompts, 2048, batching) for batching in
                          ("static", "continuous"))
    assert set(continuous) == set(static) == {"prefill", "decode"}
    assert continuous["prefill"] == static["prefill"]
    assert static["decode"] < continuous["decode"] < 1.5 * static["decode"]
