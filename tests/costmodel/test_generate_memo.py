"""The memoised order statistics of generate pricing (costmodel/generate_cost.py
decode_running, planner/domain/length_distribution.py longest_pmf / expected_longest) give
what a cold computation gives, whichever batches and layouts were priced before."""

from __future__ import annotations

import numpy as np
import pytest

from costmodel import generate_cost
from costmodel.call_geometry import geometry
from costmodel.generate_cost import decode_running, generate_phases_s
from costmodel.stage_timer import StageTimer
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.modelspec import PRESETS
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import BatchSpec, ModelRole

ROLE = ModelRole(spec=PRESETS["llama-7b"], head="lm")
H100X8 = cluster_preset("h100x8")
LAYOUTS = [(8, 1, 1, 4), (4, 2, 1, 2), (2, 1, 4, 8), (1, 1, 8, 3)]     # dp, tp, pp, m
BATCHES = [{"prompt_len": {"mean": 300, "max": 1024}, "gen_len": {"mean": 232, "max": 1024}},
           {"prompt_len": 512, "gen_len": {"mean": 600, "max": 1024}},
           {"prompt_len": [{"len": 128, "weight": 3}, {"len": 1024, "weight": 1}],
            "gen_len": 1024}]


def _stage_timer(dp: int, tp: int, pp: int, m: int) -> StageTimer:
    ex = Execution(devices=tuple(range(8)), dp=dp, tp=tp, pp=pp, micro_batches=m)
    return StageTimer(ROLE, ex, geometry(ex, ROLE.spec.num_layers, H100X8), PROFILES_DIR)


def _phases(batch: BatchSpec, dp: int, tp: int, pp: int, m: int) -> dict[str, float]:
    return generate_phases_s(_stage_timer(dp, tp, pp, m), -(-batch.n_seqs // (dp * m)),
                             batch, sampled=True)


def _fresh(batch: BatchSpec) -> BatchSpec:
    """The same batch as a new object: new length distributions, nothing memoised."""
    return BatchSpec(**batch.model_dump())


def test_memoised_generate_prices_equal_cold_ones_bit_for_bit():
    batches = [BatchSpec(n_seqs=1024, **fields) for fields in BATCHES]
    warm = [[_phases(b, *layout) for layout in LAYOUTS] for b in batches for _ in range(2)]
    for i, batch in enumerate(batches):
        for j, layout in enumerate(LAYOUTS):
            generate_cost._RUNNING_MEMO.clear()
            cold = _phases(_fresh(batch), *layout)
            assert warm[2 * i][j] == cold == warm[2 * i + 1][j]


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_memoised_order_statistics_are_read_only_and_exact(rows):
    lengths = BatchSpec(n_seqs=8, prompt_len={"mean": 100, "max": 512}, gen_len=8).prompt_lengths
    pmf = lengths.longest_pmf(rows)
    assert pmf is lengths.longest_pmf(np.int64(rows))
    assert not pmf.flags.writeable
    cdf = lengths.cdf_at_support
    assert np.array_equal(pmf, np.diff(cdf ** float(rows), prepend=0.0))
    assert lengths.expected_longest(rows) == lengths.expected_longest(np.array([rows]))[0]


def test_decode_running_is_keyed_by_every_field_it_reads():
    batch = BatchSpec(n_seqs=1024, prompt_len=64, gen_len={"mean": 100, "max": 512})
    seen = {}
    for layout in LAYOUTS:
        for b in (1, 7):
            waves, running = decode_running(_stage_timer(*layout), b, batch)
            assert not running.flags.writeable
            seen[layout, b] = waves, running
    generate_cost._RUNNING_MEMO.clear()
    for (layout, b), (waves, running) in seen.items():
        cold_waves, cold_running = decode_running(_stage_timer(*layout), b, batch)
        assert np.array_equal(cold_waves, waves) and np.array_equal(cold_running, running)
