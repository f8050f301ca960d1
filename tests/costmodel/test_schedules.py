"""Property tests of the shared transfer schedules (planner/sharding/transfer_schedule.py)."""

from collections import defaultdict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.domain.cluster import cluster_preset
from planner.domain.modelspec import ModelSpec, MoeSpec
from planner.domain.placement import Placement
from planner.sharding.param_shards import model_params, shard_slice
from planner.sharding.rank_groups import placement_device
from planner.sharding.transfer_schedule import data_schedule, param_schedule

# Tiny shape exercising biases and kv-head replication (2 kv heads, tp up to 8).
SPEC = ModelSpec(name="micro", num_layers=3, hidden_size=32, num_heads=8, num_kv_heads=2,
                 intermediate_size=48, vocab_size=64, max_positions=64, attention_bias=True)
# Mixture-of-experts shape with a shared expert: 4 experts split over ep up to 4.
MOE_SPEC = ModelSpec(name="micro-moe", num_layers=3, hidden_size=32, num_heads=8,
                     num_kv_heads=2, intermediate_size=48, vocab_size=64, max_positions=64,
                     moe=MoeSpec(family="qwen2_moe", num_experts=4, experts_per_token=2,
                                 expert_intermediate_size=16,
                                 shared_expert_intermediate_size=24, normalize_top_k=False))
CLUSTER = cluster_preset("h100x16")


@st.composite
def layouts(draw, experts: bool = False):
    size = draw(st.sampled_from([1, 2, 4, 8, 16]))
    start = draw(st.sampled_from([s for s in (0, 4, 8) if s + size <= 16 and s % size == 0]
                                 or [0]))
    tp = draw(st.sampled_from([t for t in (1, 2, 4, 8) if size % t == 0]))
    pp = draw(st.sampled_from([p for p in (1, 3) if size % (tp * p) == 0]))
    dp = size // (tp * pp)
    ep = draw(st.sampled_from([e for e in (1, 2, 4) if dp % e == 0])) if experts else 1
    return Placement(tuple(range(start, start + size)), dp, tp, pp, ep)


def _check_steps(schedule):
    for step in schedule.steps:
        senders, receivers = defaultdict(set), defaultdict(set)
        for piece in step:
            senders[piece.src].add(piece.dst)
            receivers[piece.dst].add(piece.src)
        assert all(len(v) == 1 for v in senders.values())
        assert all(len(v) == 1 for v in receivers.values())


@settings(max_examples=60, deadline=None)
@given(src=layouts(), dst=layouts(), head=st.sampled_from(["lm", "value"]))
def test_every_parameter_element_reaches_every_destination_shard_once(src, dst, head):
    _check_param_schedule(SPEC, head, src, dst)


@settings(max_examples=60, deadline=None)
@given(src=layouts(experts=True), dst=layouts(experts=True),
       head=st.sampled_from(["lm", "value"]))
def test_expert_shards_reach_every_destination_expert_rank_once(src, dst, head):
    """Routed experts' weights come from a device of the matching source expert rank and
    reach every destination device of each expert rank (reallocation between ep degrees)."""
    _check_param_schedule(MOE_SPEC, head, src, dst)


def _check_param_schedule(spec, head, src, dst):
    schedule = param_schedule(spec, head, src, dst, CLUSTER.device_node)
    if src == dst:
        assert schedule.is_empty
        return
    _check_steps(schedule)
    params = {p.name: p for p in model_params(spec, head, dst.pp)}
    src_stage = {p.name: p.stage for p in model_params(spec, head, src.pp)}
    received = {}
    for piece in schedule.local + schedule.sends():
        key = (piece.dst, piece.name)
        if key not in received:
            received[key] = np.zeros(params[piece.name].shape, dtype=int)
        received[key][tuple(slice(a, b) for a, b in piece.ranges)] += 1
        # the sender holds the piece in the source layout
        position = src.devices.index(piece.src)
        pp_rank, rest = divmod(position, src.dp * src.tp)
        dp_rank, tp_rank = divmod(rest, src.tp)
        held = shard_slice(spec, params[piece.name], tp_rank, src.tp, dp_rank % src.ep, src.ep)
        assert pp_rank == src_stage[piece.name]
        assert all(h0 <= a and b <= h1 for (a, b), (h0, h1) in zip(piece.ranges, held))
    for param in params.values():
        for d in range(dst.dp):
            for t in range(dst.tp):
                device = placement_device(dst, d, t, param.stage)
                want = np.zeros(param.shape, dtype=int)
                mine = shard_slice(spec, param, t, dst.tp, d % dst.ep, dst.ep)
                want[tuple(slice(a, b) for a, b in mine)] = 1
                assert np.array_equal(received.pop((device, param.name)), want)
    assert not received  # nothing delivered that was not wanted


@settings(max_examples=60, deadline=None)
@given(src=layouts(), dst=layouts(), n_seqs=st.integers(16, 40))
def test_every_destination_device_receives_its_sequences_once(src, dst, n_seqs):
    schedule = data_schedule(src, dst, n_seqs, CLUSTER.device_node)
    if src == dst:
        assert schedule.is_empty
        return
    _check_steps(schedule)
    got = defaultdict(lambda: np.zeros(n_seqs, dtype=int))
    for piece in schedule.local + schedule.sends():
        (lo, hi), = piece.ranges
        got[piece.dst][lo:hi] += 1
    for r in range(dst.dp):
        lo, hi = r * n_seqs // dst.dp, (r + 1) * n_seqs // dst.dp
        for t in range(dst.tp):
            for p in range(dst.pp):
                want = np.zeros(n_seqs, dtype=int)
                want[lo:hi] = 1
                assert np.array_equal(got[placement_device(dst, r, t, p)], want)


def test_identical_layouts_give_empty_schedules():
    layout = Placement(tuple(range(8)), 2, 2, 2)
    assert param_schedule(SPEC, "lm", layout, layout, CLUSTER.device_node).is_empty
    assert data_schedule(layout, layout, 32, CLUSTER.device_node).is_empty
