"""Length distributions (planner/domain/length_distribution.py) and decode priced as the
runtime runs it (costmodel/generate_cost.py): order statistics by hand and by simulation, a
fixed length against the fixed-length formula, a long tail between its mean and its maximum.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.call_cost import call_time
from costmodel.call_geometry import geometry
from costmodel.generate_cost import generate_phases_s, sampling_noise_s
from costmodel.stage_timer import StageTimer
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.length_distribution import (
    BucketLengths,
    ClippedGeometricLengths,
    FixedLength,
)
from planner.domain.modelspec import PRESETS
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import BatchSpec, ModelRole
from planner.domain.workflow_file import builtin_workflow

W5 = ClippedGeometricLengths(mean=232, max=1024)   # verl GRPO Qwen2.5-7B responses


def _buckets(*pairs) -> BucketLengths:
    return BucketLengths.model_validate({"buckets": [{"len": n, "weight": w} for n, w in pairs]})


def test_clipped_geometric_has_the_given_mean_and_its_atom_at_max():
    assert W5.mean_len == pytest.approx(232, rel=1e-9)
    p = W5.stop_probability
    assert W5.cdf(1023) == pytest.approx(1 - (1 - p) ** 1023)
    assert W5.cdf(1024) == 1.0
    # the responses that reach the limit: (1 - p)^1023, about 1.3% for w5
    assert W5.pmf_at_support[-1] == pytest.approx((1 - p) ** 1023)
    assert 0.005 < W5.pmf_at_support[-1] < 0.02
    assert ClippedGeometricLengths(mean=64, max=64).support.tolist()[-1] == 64
    assert ClippedGeometricLengths(mean=64, max=64).expected_longest(1) == pytest.approx(64)
    assert ClippedGeometricLengths(mean=1, max=64).expected_longest(5) == pytest.approx(1)


def test_expected_longest_of_buckets_by_hand():
    dist = _buckets((128, 1), (1024, 1))
    # longest of b rows is 128 only when all are short: 128 + 896 (1 - 0.5^b)
    for b in (1, 2, 3, 8):
        assert dist.expected_longest(b) == pytest.approx(128 + 896 * (1 - 0.5 ** b))
    assert dist.mean_len == pytest.approx(576)
    assert dist.max_len == 1024


def test_expected_longest_matches_simulation():
    rng = np.random.default_rng(0)
    for dist in (W5, _buckets((16, 5), (40, 3), (200, 1))):
        draws = dist.quantile(1.0 - rng.random((20_000, 8)))
        assert draws.mean() == pytest.approx(dist.mean_len, rel=0.02)
        assert draws.max(axis=1).mean() == pytest.approx(float(dist.expected_longest(8)),
                                                         rel=0.02)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 5000), min_size=1, max_size=6, unique=True),
       weights=st.lists(st.floats(0.01, 100), min_size=6, max_size=6))
def test_expected_longest_increases_with_rows_and_stays_within_mean_and_max(lengths, weights):
    dist = _buckets(*zip(lengths, weights))
    rows = np.array([1, 2, 4, 16, 256, 65536])
    longest = dist.expected_longest(rows)
    assert longest[0] == pytest.approx(dist.mean_len)
    assert np.all(np.diff(longest) >= -1e-9 * dist.max_len)
    assert np.all(longest <= dist.max_len + 1e-9)


@pytest.mark.parametrize("length", [1, 7, 512])
def test_point_mass_longest_is_its_length_for_any_rows(length):
    assert np.allclose(FixedLength(length=length).expected_longest([1, 3, 1000]), length)
    assert np.allclose(_buckets((length, 2.5)).expected_longest([1, 3, 1000]), length)


# --- pricing -------------------------------------------------------------------------------

H100X8 = cluster_preset("h100x8")
ROLE = ModelRole(spec=PRESETS["llama-7b"], head="lm")


def _timer(ex: Execution) -> StageTimer:
    return StageTimer(ROLE, ex, geometry(ex, ROLE.spec.num_layers, H100X8), PROFILES_DIR)


def _old_fixed_length_phases(st: StageTimer, b: int, batch: BatchSpec) -> dict[str, float]:
    """The fixed-length formula before distributions (commit f997196), less its last decode
    round: it ran gen_len rounds (contexts prompt + 1 ... prompt + gen_len) where the
    runtime runs gen_len - 1 (the prefill makes the first token)."""
    ex = st.ex
    prefill = (ex.pp + ex.micro_batches - 1) * (st.max_stage_s("prefill", b, batch.prompt_len)
                                                 + st.send_s(b, batch.prompt_len))
    contexts = batch.prompt_len + np.arange(1, batch.gen_len, dtype=float)
    waves = -(-ex.micro_batches // ex.pp)
    rounds = waves * ex.pp * (st.max_stage_s("decode", b, contexts) + st.send_s(b, 1))
    return {"prefill": float(prefill), "decode": float(np.sum(rounds))}


@pytest.mark.parametrize("dp,tp,pp,m", [(8, 1, 1, 1), (2, 2, 2, 2), (1, 2, 4, 6), (4, 2, 1, 3)])
def test_fixed_lengths_price_as_the_fixed_length_formula(dp, tp, pp, m):
    ex = Execution(devices=tuple(range(8)), dp=dp, tp=tp, pp=pp, micro_batches=m)
    batch = BatchSpec(n_seqs=96, prompt_len=300, gen_len=200)
    b = -(-batch.n_seqs // (dp * m))
    st = _timer(ex)
    assert generate_phases_s(st, b, batch, sampled=False) == pytest.approx(
        _old_fixed_length_phases(st, b, batch), rel=1e-12)
    # a single bucket is the same point mass
    same = BatchSpec(n_seqs=96, prompt_len=[{"len": 300, "weight": 1}],
                     gen_len=[{"len": 200, "weight": 1}])
    assert generate_phases_s(st, b, same, False) == pytest.approx(
        generate_phases_s(st, b, batch, False), rel=1e-12)


def _decode_s(gen_len, ex: Execution, n_seqs: int = 64, prompt_len=128) -> float:
    batch = BatchSpec(n_seqs=n_seqs, prompt_len=prompt_len, gen_len=gen_len)
    b = -(-n_seqs // (ex.dp * ex.micro_batches))
    return generate_phases_s(_timer(ex), b, batch, sampled=False)["decode"]


def test_long_tail_prices_decode_between_its_mean_and_its_maximum():
    ex = Execution(devices=tuple(range(8)), dp=8, tp=1, pp=1, micro_batches=2)
    tail = _decode_s({"mean": 232, "max": 1024}, ex)
    assert _decode_s(232, ex) < tail < _decode_s(1024, ex)
    # bucketed: one row in 16 long; 8 replicas x 4 rows per wave are all short with
    # probability (15/16)^32 = 0.13, so most waves run to 1024
    buckets = [{"len": 128, "weight": 15}, {"len": 1024, "weight": 1}]
    mixed = _decode_s(buckets, ex)
    assert _decode_s(184, ex) < mixed < _decode_s(1024, ex)


def test_w5_generation_runs_as_if_every_response_had_the_maximum():
    """verl w5 (../shared/gpu-anchors.md): 5,120 responses of mean 232 and max 1024 on 8
    GPUs. Each wave of 8 x 80 rows almost surely holds a 1024-token response, so decode costs
    what fixed 1024-token responses cost: at least 1023 / 231 rounds of a mean-length
    estimate (more in time where the later rounds read longer contexts; exactly that where
    the eager host issuing the kernels sets a round's time)."""
    ex = Execution(devices=tuple(range(8)), dp=8, tp=1, pp=1, micro_batches=8)
    tail = _decode_s({"mean": 232, "max": 1024}, ex, 5120, 93)
    assert tail == pytest.approx(_decode_s(1024, ex, 5120, 93), rel=1e-3)
    assert tail / _decode_s(232, ex, 5120, 93) >= 1023 / 231 * (1 - 1e-3)


def _simulated_decode_s(gen_len, ex: Execution, n_seqs: int, prompt_len: int,
                        samples: int = 4000) -> float:
    """The runtime's decode by simulation: each row draws its length; a wave of a replica
    runs (its longest row - 1) rounds; the call ends with its slowest replica."""
    batch = BatchSpec(n_seqs=n_seqs, prompt_len=prompt_len, gen_len=gen_len)
    b = -(-n_seqs // (ex.dp * ex.micro_batches))
    st = _timer(ex)
    steps = np.arange(1, batch.gen_len)
    round_s = ex.pp * (st.max_stage_s("decode", b, prompt_len + steps) + st.send_s(b, 1))
    cumulative = np.concatenate(([0.0], np.cumsum(round_s)))
    waves = -(-ex.micro_batches // ex.pp)
    per_wave = [min(ex.pp, ex.micro_batches - w * ex.pp) * b for w in range(waves)]
    rng = np.random.default_rng(1)
    replica_s = 0.0
    for rows in per_wave:
        lengths = batch.gen_lengths.quantile(1.0 - rng.random((samples, ex.dp, rows)))
        replica_s = replica_s + cumulative[lengths.max(axis=-1) - 1]
    return float(replica_s.max(axis=-1).mean())


TAIL = [{"len": 64, "weight": 30}, {"len": 200, "weight": 3}, {"len": 512, "weight": 1}]


@pytest.mark.parametrize("dp,pp,m", [(4, 1, 1), (2, 2, 2), (1, 4, 3)])
def test_decode_of_one_wave_per_replica_is_the_simulated_runtime(dp, pp, m):
    ex = Execution(devices=tuple(range(dp * pp)), dp=dp, tp=1, pp=pp, micro_batches=m)
    assert _decode_s(TAIL, ex, 24, 32) == pytest.approx(_simulated_decode_s(TAIL, ex, 24, 32),
                                                        rel=0.03)


def test_decode_of_several_waves_is_an_upper_bound_of_the_simulated_runtime():
    ex = Execution(devices=tuple(range(4)), dp=4, tp=1, pp=1, micro_batches=4)
    priced, simulated = _decode_s(TAIL, ex, 32, 32), _simulated_decode_s(TAIL, ex, 32, 32)
    assert simulated < priced < 1.3 * simulated


def test_splitting_a_replica_into_waves_never_saves_rounds():
    """The longest row of a union is at most the sum of the groups' longest rows, so
    sequential waves pay off only through a cheaper round (smaller b), not fewer rounds."""
    one = Execution(devices=(0,), dp=1, tp=1, pp=1, micro_batches=1)
    four = Execution(devices=(0,), dp=1, tp=1, pp=1, micro_batches=4)
    assert _decode_s(TAIL, four, 8, 32) > _decode_s(TAIL, one, 8, 32)


def test_generate_call_prices_prompt_and_response_distributions_below_their_maxima():
    fixed = builtin_workflow("grpo", model="llama-7b",
                             batch={"n_seqs": 64, "prompt_len": 173, "gen_len": 1024})
    tailed = builtin_workflow("grpo", model="llama-7b",
                              batch={"n_seqs": 64, "prompt_len": {"mean": 93, "max": 173},
                                     "gen_len": {"mean": 232, "max": 1024}})
    ex = Execution(devices=tuple(range(8)), dp=8, tp=1, pp=1, micro_batches=1)
    call = fixed.call_by_name["actor_gen"]
    slow = call_time(call, fixed.models["actor"], ex, fixed.batch, H100X8)
    fast = call_time(call, tailed.models["actor"], ex, tailed.batch, H100X8)
    assert fast.phases_s["prefill"] < slow.phases_s["prefill"]
    assert fast.phases_s["decode"] < slow.phases_s["decode"]
    # logprobs run over the padded maxima, as the executor pads the sequences
    assert fast.phases_s["logprobs"] == pytest.approx(slow.phases_s["logprobs"])


def test_sampling_prices_the_noise_of_every_step_and_greedy_none():
    """A sampled generate call pays the counter-based Gumbel noise (runtime/vocab_parallel.py)
    of every step over the rank's vocabulary slice; a greedy one does not."""
    ex = Execution(devices=tuple(range(8)), dp=8, tp=1, pp=1, micro_batches=1)
    batch = BatchSpec(n_seqs=64, prompt_len=128, gen_len=64)
    st, b = _timer(ex), 8
    greedy = generate_phases_s(st, b, batch, sampled=False)
    sampled = generate_phases_s(st, b, batch, sampled=True)
    noise_s = sampling_noise_s(st, b)
    assert noise_s > 0
    assert sampled["decode"] - greedy["decode"] == pytest.approx((batch.gen_len - 1) * noise_s)
    assert sampled["prefill"] - greedy["prefill"] == pytest.approx(noise_s)
