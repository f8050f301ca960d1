"""The DP gradient sync overlapped with the last micro-batch's backward (costmodel/train_cost.py).

llama-7b actor_train on H100s, priced with the buckets the runtime cuts
(planner.sharding.grad_buckets): exposed sync below the unoverlapped one when backward is
long; only the buckets ready at backward's end (the last, and the embedding's) when the
network keeps up; the whole sync less the backward after the first bucket when it does not.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hs

from costmodel import comm, train_cost
from costmodel.call_geometry import geometry
from costmodel.memory import micro_batch_seqs
from costmodel.stage_timer import StageTimer
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow_file import builtin_workflow
from planner.sharding.grad_buckets import grad_bucket_bounds, grad_bucket_elements
from planner.sharding.param_shards import shard_elements


@given(chunks=hs.integers(1, 10_000), multiple=hs.sampled_from([1, 2, 4, 8]),
       element_bytes=hs.sampled_from([2, 4]), bucket_bytes=hs.integers(1, 4096))
def test_buckets_tile_the_buffer_from_its_end_in_equal_sizes(chunks, multiple, element_bytes,
                                                             bucket_bytes):
    numel = chunks * multiple
    bounds = grad_bucket_bounds(numel, element_bytes, multiple, bucket_bytes)
    size = grad_bucket_elements(element_bytes, multiple, bucket_bytes)
    assert bounds[0, 1] == numel and bounds[-1, 0] == 0
    assert (bounds[1:, 1] == bounds[:-1, 0]).all()  # contiguous, from the end down
    sizes = bounds[:, 1] - bounds[:, 0]
    assert (sizes[:-1] == size).all() and 0 < sizes[-1] <= size
    assert (sizes % multiple == 0).all()
    assert size * element_bytes <= max(bucket_bytes, multiple * element_bytes)


def test_in_order_buckets_end_at_the_latest_ready_plus_what_follows_it():
    ready = np.array([0.0, 1.0, 2.0, 3.0])
    # network keeps up: each bucket done before the next is ready; the last one is exposed
    assert train_cost.exposed_sync_s(ready, np.full(4, 0.5), 3.0) == pytest.approx(0.5)
    # slow network: the chain starts at the first ready time and never waits again
    assert train_cost.exposed_sync_s(ready, np.full(4, 2.0), 3.0) == pytest.approx(8.0 - 3.0)
    # done before the end of backward: nothing exposed
    assert train_cost.exposed_sync_s(ready, np.full(4, 0.5), 10.0) == 0.0


def _setup(devices: int = 4, dp: int = 4, vocab_size: int | None = None, **policy):
    """StageTimer, micro-batch seqs, batch and shard elements of llama-7b's actor_train,
    all-reducing (ZeRO-1 off) unless `policy` says otherwise."""
    workflow = builtin_workflow("ppo", model="llama-7b")
    cluster = cluster_preset(f"h100x{devices}")
    policy = {"shard_optimizer_over_dp": False, **policy}
    ex = Execution(devices=tuple(range(devices)), dp=dp, tp=1, pp=1, **policy)
    call, role = workflow.call_by_name["actor_train"], workflow.models["actor"]
    if vocab_size is not None:
        role = role.model_copy(update={"spec": role.spec.model_copy(
            update={"vocab_size": vocab_size})})
    st = StageTimer(role, ex, geometry(ex, role.spec.num_layers, cluster), PROFILES_DIR)
    b = micro_batch_seqs(call, workflow.batch, ex)
    elements = shard_elements(role.spec, role.head, ex.tp, ex.pp)
    return st, b, workflow.batch, elements


def _collectives_take(monkeypatch, seconds: float) -> None:
    """Every all-reduce over more than one rank (the DP ones: tp is 1) takes `seconds`."""
    monkeypatch.setattr(comm, "allreduce_time_s",
                        lambda message_bytes, devices, link: seconds * (devices > 1))


def _phases(st, b, batch, elements) -> dict[str, float]:
    return train_cost.train_phases_s(st, b, batch, elements)


def _backward_s(st, b, batch, stage: int = 0) -> float:
    s = batch.seq_len
    return float(st.stage_s(stage, "backward", b, s) + st.recompute_s(stage, b, s))


def _bounds(st, elements, stage: int = 0) -> np.ndarray:
    return grad_bucket_bounds(int(elements[stage].max()), 2)


def test_exposed_sync_is_below_the_unoverlapped_sync_when_backward_is_long():
    st, b, batch, elements = _setup()
    k, dp = batch.ppo_minibatches, st.ex.dp
    link = st.geo.dp_link[0]
    sizes = np.diff(_bounds(st, elements), axis=1).ravel() * 2.0
    bucketed = sum(float(comm.allreduce_time_s(float(n), dp, link)) for n in sizes)
    whole = float(comm.allreduce_time_s(float(elements[0].max()) * 2, dp, link))
    phases = _phases(st, b, batch, elements)
    assert _backward_s(st, b, batch) > bucketed  # the case: backward outlasts the sync
    assert 0 < phases["dp_sync"] < 0.5 * k * min(bucketed, whole)
    # what stays exposed: the buckets holding the embedding, whose gradient comes last
    embedding = st.role.spec.vocab_size * st.role.spec.hidden_size
    last = sizes[_bounds(st, elements)[:, 0] < embedding]
    assert phases["dp_sync"] >= k * sum(float(comm.allreduce_time_s(float(n), dp, link))
                                        for n in last) * (1 - 1e-9)
    assert phases["dp_gather"] == 0.0


def test_a_fast_network_exposes_only_the_buckets_ready_when_backward_ends(monkeypatch):
    st, b, batch, elements = _setup()
    c = 1e-6  # per bucket: far below the backward time between two buckets
    _collectives_take(monkeypatch, c)
    bounds = _bounds(st, elements)
    embedding = st.role.spec.vocab_size * st.role.spec.hidden_size
    at_end = int((bounds[:, 0] < embedding).sum())
    assert at_end < len(bounds) / 10
    expected = batch.ppo_minibatches * at_end * c
    assert _phases(st, b, batch, elements)["dp_sync"] == pytest.approx(expected, rel=1e-6)


def test_a_small_embedding_leaves_the_last_bucket_alone_exposed(monkeypatch):
    st, b, batch, elements = _setup(vocab_size=256)  # the embedding inside the last bucket
    c = 1e-6
    _collectives_take(monkeypatch, c)
    assert len(_bounds(st, elements)) > 100
    assert _phases(st, b, batch, elements)["dp_sync"] == pytest.approx(
        batch.ppo_minibatches * c, rel=1e-6)


def test_a_slow_network_exposes_the_sync_less_the_backward(monkeypatch):
    st, b, batch, elements = _setup()
    bounds = _bounds(st, elements)
    backward = _backward_s(st, b, batch)
    c = 2 * backward / len(bounds)  # the whole sync: twice the backward
    _collectives_take(monkeypatch, c)
    n, embedding = int(elements[0].max()), st.role.spec.vocab_size * st.role.spec.hidden_size
    first_ready = backward * (bounds[0, 1] - bounds[0, 0]) / (n - embedding)
    sync = len(bounds) * c
    expected = batch.ppo_minibatches * (sync - backward + first_ready)
    assert _phases(st, b, batch, elements)["dp_sync"] == pytest.approx(expected, rel=1e-9)
    assert first_ready < 0.01 * backward  # so: sync - backward, to 1% of the backward


def test_zero1_reduce_scatters_in_buckets_and_gathers_the_weights_after_the_step():
    st, b, batch, elements = _setup(shard_optimizer_over_dp=True)
    k, dp, link = batch.ppo_minibatches, st.ex.dp, st.geo.dp_link[0]
    n = int(elements[0].max())
    bounds = grad_bucket_bounds(-(-n // dp) * dp, 2, dp)
    gathers = sum(float(comm.allgather_time_s(float(hi - lo) * 2, dp, link))
                  for lo, hi in bounds)
    phases = _phases(st, b, batch, elements)
    assert phases["dp_gather"] == pytest.approx(k * gathers, rel=1e-9)
    scatters = sum(float(comm.reduce_scatter_time_s(float(hi - lo) * 2, dp, link))
                   for lo, hi in bounds)
    assert 0 < phases["dp_sync"] < 0.5 * k * scatters
    plain = _phases(*_setup())
    assert plain["dp_gather"] == 0.0
    assert plain["forward_backward"] == phases["forward_backward"]


def test_dp_1_has_no_sync():
    phases = _phases(*_setup(devices=1, dp=1))
    assert phases["dp_sync"] == phases["dp_gather"] == 0.0
