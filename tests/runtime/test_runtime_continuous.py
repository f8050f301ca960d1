"""Continuous batching in the generation engine (runtime/generate.py): under greedy
decoding (and seeded sampling) every prompt gets the tokens static generation gives it, on
one process and (slow, gloo) under dp 2, tp 2 and pp 2 and for a mixture-of-experts model
under dp 2 x ep 2 with uneven rows per rank; under long-tailed lengths it runs fewer
slot-steps than static decoding; the cost model's decode rounds
(costmodel/generate_cost.py continuous_decode_rounds) and host steps
(costmodel/calibration.py decode_steps) match the rounds and forwards it counts."""

from __future__ import annotations

import pytest
import torch

from costmodel.calibration import decode_steps
from costmodel.generate_cost import continuous_decode_rounds
from planner.domain.layout import Execution
from planner.domain.length_distribution import BucketLengths, LengthBucket
from planner.domain.modelspec import PRESETS, ModelSpec
from planner.domain.placement import Placement
from planner.domain.workflow import BatchSpec, ModelFunctionCall
from planner.sharding.rank_groups import placement_coordinate
from runtime.batch import MicroBatch
from runtime.device import CPU_FP32
from runtime.generate import DecodeCounts, GenerationConfig, generate
from runtime.launch import run_distributed
from runtime.model import ParallelModel
from runtime.parallel_context import Group, ParallelContext, create_contexts

# Two layers, tp 2 and pp 2 possible (kv heads and layers split in two): a forward is
# cheap, so the tests run many of them.
TINY = ModelSpec(name="llama-2layer", num_layers=2, hidden_size=64, num_heads=4,
                 num_kv_heads=2, intermediate_size=128, vocab_size=256, max_positions=128)
MOE = PRESETS["moe-tiny"]
SEED = 5
ONE_RANK = Group(handle=None, ranks=(0,))
TIMEOUT_S = 300
# every 7th token id stops a row: lengths from 1 to max_new_tokens, most short
STOPS = tuple(range(3, TINY.vocab_size, 7))
CONFIGS = {
    "greedy": GenerationConfig(max_new_tokens=10, pad_token_id=0, stop_token_ids=STOPS),
    "sampled": GenerationConfig(max_new_tokens=10, pad_token_id=0, stop_token_ids=STOPS,
                                greedy=False, temperature=0.8, seed=3),
    "checked_every_3": GenerationConfig(max_new_tokens=10, pad_token_id=0,
                                        stop_token_ids=STOPS, stop_check_interval_steps=3),
}
LAYOUTS = [(2, 1, 1), (1, 2, 1), (1, 1, 2)]   # dp, tp, pp on two processes
MOE_ROWS = (3, 2)                              # rows per micro-batch of dp rank 0, 1
# moe-tiny's seeded greedy rows often repeat one token: every 3rd id stops them
MOE_CONFIG = GenerationConfig(max_new_tokens=10, pad_token_id=0,
                              stop_token_ids=tuple(range(2, MOE.vocab_size, 3)))


def _prompts(count: int, rows: int = 3, width: int = 6, seed: int = 1,
             vocab: int = TINY.vocab_size) -> list[MicroBatch]:
    """`count` micro-batches of `rows` left-padded prompts of 2..width tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(1, vocab, (rows, width), generator=g)
        lengths = torch.randint(2, width + 1, (rows,), generator=g)
        mask = (torch.arange(width)[None] >= width - lengths[:, None]).long()
        out.append(MicroBatch(ids * mask, mask))
    return out


def _one_rank_model() -> ParallelModel:
    layout = Placement(devices=(0,), dp=1, tp=1, pp=1)
    ctx = ParallelContext(layout=layout, global_rank=0, coord=placement_coordinate(layout, 0),
                          tp_group=ONE_RANK, dp_group=ONE_RANK, pp_group=ONE_RANK)
    return ParallelModel.from_seed(TINY, "lm", ctx, SEED, CPU_FP32)


def _assert_same_tokens(static, continuous) -> None:
    for s, c in zip(static, continuous, strict=True):
        assert torch.equal(s.lengths, c.lengths)
        assert c.tokens.shape == (s.tokens.shape[0], int(s.lengths.max()))
        assert torch.equal(s.tokens[:, :c.tokens.shape[1]], c.tokens)
        # static's extra columns (steps between stop checks) are padding only
        assert bool((s.tokens[:, c.tokens.shape[1]:] == 0).all())


def _distinct_lengths(generations) -> int:
    return len({int(n) for g in generations for n in g.lengths})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_continuous_gives_each_prompt_the_static_tokens(name):
    model, prompts = _one_rank_model(), _prompts(4)
    static = generate(model, prompts, CONFIGS[name])
    continuous = generate(model, prompts, CONFIGS[name], decode_batching="continuous")
    _assert_same_tokens(static, continuous)
    assert _distinct_lengths(static) > 3   # lengths do differ: slots are refilled


def test_continuous_runs_fewer_slot_steps_under_a_long_tail():
    model, prompts = _one_rank_model(), _prompts(8, rows=4, width=5, seed=2)
    config = GenerationConfig(max_new_tokens=24, pad_token_id=0, stop_token_ids=STOPS)
    static_counts, continuous_counts = DecodeCounts(), DecodeCounts()
    static = generate(model, prompts, config, counts=static_counts)
    continuous = generate(model, prompts, config, "continuous", continuous_counts)
    _assert_same_tokens(static, continuous)
    # static: each micro-batch runs its longest row's length - 1 decode steps on 4 rows
    assert static_counts.slot_steps == sum(4 * (int(g.lengths.max()) - 1) for g in static)
    assert continuous_counts.slot_steps < 0.8 * static_counts.slot_steps
    assert continuous_counts.prefill_rows == static_counts.prefill_rows == 32


def test_priced_continuous_rounds_and_steps_match_the_counted_ones():
    """The rows' lengths as a bucket distribution: the priced decode rounds and host steps
    (expectations over independent rows) within RTOL of those counted on one draw of 64
    rows (one process: a host step is a forward)."""
    model, prompts = _one_rank_model(), _prompts(16, rows=4, width=5, seed=4)
    config = GenerationConfig(max_new_tokens=16, pad_token_id=0, stop_token_ids=STOPS)
    counts = DecodeCounts()
    gens = generate(model, prompts, config, "continuous", counts)
    lengths = torch.cat([g.lengths for g in gens]).tolist()
    buckets = [{"len": n, "weight": lengths.count(n)} for n in sorted(set(lengths))]
    dist = BucketLengths(buckets=tuple(LengthBucket(**b) for b in buckets))
    priced = continuous_decode_rounds(dist, micro_batches=16, pp=1, dp=1, rows=4,
                                      interval=1)
    RTOL = 0.15
    assert priced == pytest.approx(counts.decode_rounds, rel=RTOL)
    call = ModelFunctionCall(name="gen", model="actor", kind="generate")
    execution = Execution(devices=(0,), dp=1, tp=1, pp=1, micro_batches=16,
                          decode_batching="continuous")
    batch = BatchSpec(n_seqs=64, prompt_len=5, gen_len=buckets)
    steps = decode_steps(call, execution, batch)
    assert steps == pytest.approx(counts.prefill_forwards + counts.decode_rounds, rel=RTOL)


def _layout(degrees, ep: int = 1) -> Placement:
    dp, tp, pp = degrees
    return Placement(tuple(range(dp * tp * pp)), dp, tp, pp, ep)


def _mine(prompts: list[MicroBatch], ctx) -> list[MicroBatch]:
    share = len(prompts) // ctx.dp
    return prompts[ctx.coord.dp_rank * share:(ctx.coord.dp_rank + 1) * share]


def _two_rank_cases(rank: int, world_size: int) -> dict:
    """Per dense layout of this rank: (static, continuous) generations, greedy (every
    config under pp 2, where the stop checks' plans go down the pipeline); and under
    moe-tiny dp 2 x ep 2 (each rank its own number of rows per micro-batch): (static,
    continuous) greedy generations."""
    contexts = create_contexts([_layout(d) for d in LAYOUTS] + [_layout((2, 1, 1), ep=2)])
    out = {}
    for degrees, ctx in zip(LAYOUTS, contexts):
        model = ParallelModel.from_seed(TINY, "lm", ctx, SEED, CPU_FP32)
        mine = _mine(_prompts(4), ctx)
        names = CONFIGS if degrees == (1, 1, 2) else ("greedy",)
        out[degrees] = {name: (generate(model, mine, CONFIGS[name]),
                               generate(model, mine, CONFIGS[name], "continuous"))
                        for name in names}
    ctx = contexts[-1]
    model = ParallelModel.from_seed(MOE, "lm", ctx, SEED, CPU_FP32)
    mine = _prompts(3, rows=MOE_ROWS[ctx.coord.dp_rank], seed=7 + ctx.coord.dp_rank,
                    vocab=MOE.vocab_size)
    out["moe"] = (generate(model, mine, MOE_CONFIG),
                  generate(model, mine, MOE_CONFIG, "continuous"),
                  tuple(model.ctx.ep_group.ranks))
    return out


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_distributed(_two_rank_cases, 2, timeout_s=TIMEOUT_S)


@pytest.mark.slow
def test_continuous_gives_the_static_tokens_under_dp_tp_and_pp(two_ranks):
    model, prompts = _one_rank_model(), _prompts(4)
    for name, config in CONFIGS.items():
        one_process = generate(model, prompts, config)
        for degrees in LAYOUTS:
            for rank, results in enumerate(two_ranks):
                if name not in results[degrees]:
                    continue
                static, continuous = results[degrees][name]
                _assert_same_tokens(static, continuous)
                first = rank * 2 if degrees[0] == 2 else 0
                _assert_same_tokens(one_process[first:first + len(static)], continuous)


@pytest.mark.slow
def test_continuous_gives_the_static_tokens_under_expert_parallelism(two_ranks):
    """moe-tiny dp 2 x ep 2: the two ranks run every forward together (all-to-all), each
    with its own rows (3 and 2 slots) finishing at its own rounds."""
    for rank, results in enumerate(two_ranks):
        static, continuous, ep_ranks = results["moe"]
        assert ep_ranks == (0, 1)
        assert [g.tokens.shape[0] for g in continuous] == [MOE_ROWS[rank]] * 3
        _assert_same_tokens(static, continuous)
        assert _distinct_lengths(static) > 2, rank


@pytest.mark.parametrize("decode_batching", ["static", "continuous"])
def test_a_row_stops_at_its_own_response_limit(decode_batching):
    """`extras["response_limits"]` ends each row after that many tokens, as a stop token
    would: the tokens are the first ones generation without limits makes, and a static
    micro-batch stops after its longest row (the rule the cost model prices)."""
    model, prompts = _one_rank_model(), _prompts(3, rows=4)
    config = GenerationConfig(max_new_tokens=12, pad_token_id=0, greedy=False, seed=3)
    free = generate(model, prompts, config, decode_batching)
    g = torch.Generator().manual_seed(7)
    limited = [MicroBatch(p.input_ids, p.attention_mask,
                          extras={"response_limits": torch.randint(1, 13, (4,), generator=g)})
               for p in prompts]
    counts = DecodeCounts()
    out = generate(model, limited, config, decode_batching, counts)
    for f, o, p in zip(free, out, limited, strict=True):
        limits = p.extras["response_limits"]
        assert torch.equal(o.lengths, limits)
        for row, n in enumerate(limits.tolist()):
            assert torch.equal(o.tokens[row, :n], f.tokens[row, :n])
            assert bool((o.tokens[row, n:] == 0).all())
    if decode_batching == "static":
        assert counts.slot_steps == sum(4 * (int(p.extras["response_limits"].max()) - 1)
                                        for p in limited)


def test_response_limits_outside_one_to_max_new_tokens_are_refused():
    model, (prompt,) = _one_rank_model(), _prompts(1, rows=2)
    config = GenerationConfig(max_new_tokens=4, pad_token_id=0)
    for limits in ([0, 2], [2, 5], [1, 2, 3]):
        bad = MicroBatch(prompt.input_ids, prompt.attention_mask,
                         extras={"response_limits": torch.tensor(limits)})
        with pytest.raises(ValueError, match="response_limits"):
            generate(model, [bad], config)
