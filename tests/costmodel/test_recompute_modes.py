"""Activation recomputation modes in the cost model (costmodel/recompute.py): what each keeps
(memory.train_stage_activation_bytes) and reruns (StageTimer.recompute_s), by hand."""

from __future__ import annotations

import numpy as np
import pytest

from costmodel import comm, recompute
from costmodel import efficiency as eff
from costmodel.call_cost import call_memory
from costmodel.call_geometry import geometry
from costmodel.compute import part_timer
from costmodel.roofline import forward_flops_block
from costmodel.stage_timer import StageTimer
from planner.domain.cluster import cluster_preset
from planner.domain.layout import RECOMPUTE_MODES, Execution
from planner.domain.modelspec import PRESETS
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow_file import builtin_workflow
from planner.search.builder import PRICE_COLUMNS, CallPricer


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_the_sub_layers_add_up_to_the_block_and_each_mode_keeps_less(tp):
    """llama-7b in bf16 (h 4096, 32 heads of 128, intermediate 11008) at 4096 keys, by hand
    from the ops of runtime/layers.py (costmodel/recompute.py)."""
    spec, keys, d = PRESETS["llama-7b"], 4096, 2
    h, i = 4096, 11008
    norm = 4 * h + 4 + d * h
    attention = norm + d * h + 4 * d * h / tp + 4 * 32 / tp + 4 * keys
    mlp = norm + d * h + 4 * d * i / tp
    assert recompute.attention_bytes_per_token(spec, tp, keys, d) == pytest.approx(attention)
    assert recompute.mlp_bytes_per_token(spec, tp, d) == pytest.approx(mlp)
    kept = [recompute.kept_bytes_per_token(spec, mode, tp, keys, d) for mode in RECOMPUTE_MODES]
    assert kept == pytest.approx([attention + mlp, d * h + mlp, d * h])
    rerun = [recompute.recomputed_bytes_per_token(spec, mode, tp, keys, d)
             for mode in RECOMPUTE_MODES]
    assert rerun == pytest.approx([0, attention, attention + mlp])


def test_the_attention_share_of_llama3_8b_forward_flops_by_hand():
    spec = PRESETS["llama3-8b"]
    h, kv, i, s = 4096, 1024, 14336, 4096
    projections, mlp = 2 * (2 * h * h + 2 * h * kv), 2 * 3 * h * i   # per token
    core = forward_flops_block(spec, 1, 1.0, s, decode=False) / s - projections - mlp
    assert core > 0           # the roofline prices the attention core beside the GEMMs
    share = recompute.attention_forward_flops_share(spec, s)
    assert share == pytest.approx((projections + core) / (projections + core + mlp))
    assert projections / (projections + mlp) < share < 0.5   # 0.19 from the GEMMs alone
    lengths = np.array([512.0, 4096.0, 32768.0])   # the attention core grows with context
    assert np.all(np.diff(recompute.attention_forward_flops_share(spec, lengths)) > 0)


def _actor_train(tp: int, mode: str):
    workflow = builtin_workflow("ppo", model="llama-7b")
    cluster = cluster_preset(f"h100x{tp}")
    ex = Execution(devices=tuple(range(tp)), dp=1, tp=tp, pp=1, recompute=mode)
    return workflow, cluster, workflow.call_by_name["actor_train"], workflow.models["actor"], ex


@pytest.mark.parametrize("tp", [1, 2])
def test_activation_bytes_of_each_mode_by_hand(tp):
    """bf16, pp 1, one micro-batch: every block keeps what its mode keeps, the last stage the
    final norm and the head's input, and one block's rerun part is alive again beyond the
    logits' backward (bytes per token x tokens)."""
    for mode in RECOMPUTE_MODES:
        workflow, cluster, call, role, ex = _actor_train(tp, mode)
        batch, spec = workflow.batch, role.spec
        s, d, h = batch.seq_len, 2, spec.hidden_size
        tokens = batch.n_seqs // batch.ppo_minibatches * s
        kept = recompute.kept_bytes_per_token(spec, mode, tp, 0, d)  # h100: causal, no mask keys
        rerun = tokens * recompute.RECOMPUTED_WORKING_COPIES * \
            recompute.recomputed_bytes_per_token(spec, mode, tp, 0, d)
        logits = tokens * spec.vocab_size / tp * (eff.TRAIN_LOGITS_FP32_COPIES * 4 + d)
        head = 4 * h + 4 + d * h + d * h
        expected = tokens * (spec.num_layers * kept + head) + max(0.0, rerun - logits)
        memory = call_memory(call, role, ex, batch, cluster)
        assert memory.parts.activations[0] == pytest.approx(expected), mode
        assert memory.parts.logits[0] == pytest.approx(logits), mode


def _timer(tp: int, mode: str):
    workflow, cluster, call, role, ex = _actor_train(tp, mode)
    geo = geometry(ex, role.spec.num_layers, cluster)
    return StageTimer(role, ex, geo, PROFILES_DIR), role.spec, cluster, geo


@pytest.mark.parametrize("tp", [1, 2])
def test_rerun_time_of_each_mode_by_hand(tp):
    b, s = 4, 2048
    spec = PRESETS["llama-7b"]
    cluster = cluster_preset(f"h100x{tp}")
    block_s = part_timer(spec, cluster.hardware_of(0), PROFILES_DIR).time_s(
        "forward", "block", tp, b, s)
    layers = spec.num_layers
    none_timer, _, _, geo = _timer(tp, "none")
    assert np.all(none_timer.recompute_s(0, b, s) == 0.0)
    selective = _timer(tp, "selective")[0].recompute_s(0, b, s)
    # the attention sub-layer's share of the forward, and no TP all-reduce
    share = recompute.attention_forward_flops_share(spec, s)
    assert selective == pytest.approx(layers * share * block_s, rel=1e-12)
    full = _timer(tp, "full")[0].recompute_s(0, b, s)
    reduces = 0.0
    if tp > 1:
        message = b * s * spec.hidden_size * cluster.hardware_of(0).compute_dtype_bytes
        reduces = layers * comm.allreduce_time_s(message, tp, geo.tp_link[0])
    assert full == pytest.approx(layers * block_s + reduces, rel=1e-12)
    assert 0 < selective < full


def test_search_prices_each_mode_apart():
    """Time rises and memory falls from none to selective to full, each with its own price
    (a cache key without the mode would give all three the first one's figures)."""
    prices = []
    for mode in RECOMPUTE_MODES:
        workflow, cluster, call, role, ex = _actor_train(2, mode)
        prices.append(dict(zip(PRICE_COLUMNS, CallPricer(workflow, cluster).price(call, ex))))
    shared = CallPricer(workflow, cluster)
    assert [dict(zip(PRICE_COLUMNS, shared.price(call, ex.model_copy(update={"recompute": m}))))
            for m in RECOMPUTE_MODES] == prices
    times = [p["time_s"] for p in prices]
    working = [p["activation_bytes"] for p in prices]
    assert times[0] < times[1] < times[2], times
    assert working[0] > working[1] > working[2], working
