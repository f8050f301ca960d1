"""Cost model of mixture-of-experts models (costmodel/moe_cost.py, issue 15): FLOPs by active
parameters, weights by all experts / ep, all-to-all bytes and links, decode weight reads of
the experts a batch touches, and finite estimates for every layout of Qwen3-30B-A3B GRPO on
16 H100."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from costmodel import comm, moe_cost, nccl_model
from costmodel.call_cost import call_memory, call_time
from costmodel.call_geometry import geometry
from costmodel.memory import call_memory_parts
from costmodel.roofline import attention_flops, forward_flops_block, gemm_time_s
from planner.domain.cluster import cluster_preset
from planner.domain.hardware import hardware_by_name
from planner.domain.layout import Execution, layout_problem
from planner.domain.modelspec import PRESETS, ModelSpec, MoeSpec
from planner.domain.workflow import BatchSpec
from planner.domain.workflow_file import builtin_workflow
from planner.sharding.param_shards import model_params

# Qwen/Qwen3-30B-A3B config.json: 48 layers, hidden 2048, 32 heads, 4 kv heads, head_dim
# 128, 128 experts of moe_intermediate_size 768, top-8, norm_topk_prob, vocab 151,936.
QWEN3_30B = ModelSpec(
    name="qwen3-30b-a3b-test", num_layers=48, hidden_size=2048, num_heads=32, num_kv_heads=4,
    head_dim=128, intermediate_size=6144, vocab_size=151936, max_positions=40960,
    rope_theta=1e6, norm_eps=1e-6, qk_norm=True,
    moe=MoeSpec(family="qwen3_moe", num_experts=128, experts_per_token=8,
                expert_intermediate_size=768, normalize_top_k=True))
# A dense model of its active size: the k experts' widths as one MLP.
QWEN3_30B_ACTIVE = QWEN3_30B.model_copy(update={"moe": None, "intermediate_size": 8 * 768,
                                                "name": "dense-active"})
H100 = hardware_by_name("h100-sxm-80gb")


def grpo(spec: ModelSpec, batch: BatchSpec | None = None):
    workflow = builtin_workflow("grpo", model="llama-7b")
    models = {name: role.model_copy(update={"spec": spec})
              for name, role in workflow.models.items()}
    update = {"models": models}
    if batch is not None:
        update["batch"] = batch
    return workflow.model_copy(update=update)


def test_flops_are_those_of_the_active_parameters():
    tokens, length = 2.0 * 512, 512.0
    moe = forward_flops_block(QWEN3_30B, 1, 2.0, length, decode=False)
    dense = forward_flops_block(QWEN3_30B_ACTIVE, 1, 2.0, length, decode=False)
    attention = attention_flops(QWEN3_30B, 1, 2.0, length, decode=False)
    assert moe == pytest.approx(tokens * 2.0 * QWEN3_30B.matmul_params_per_layer() + attention,
                                rel=1e-12)
    # the dense model of the active size differs by the router alone (2 h E per token)
    assert moe - dense == pytest.approx(tokens * 2.0 * 2048 * 128, rel=1e-9)


def test_weights_at_ep1_are_every_expert_and_halve_with_ep2():
    wf = grpo(QWEN3_30B)
    call, role = wf.call_by_name["actor_train"], wf.models["actor"]
    one = Execution(devices=tuple(range(2)), dp=2, tp=1, pp=1, ep=1)
    two = one.model_copy(update={"ep": 2})
    w1 = call_memory_parts(call, QWEN3_30B, role.head, one, wf.batch, 2, "cuda").weights
    w2 = call_memory_parts(call, QWEN3_30B, role.head, two, wf.batch, 2, "cuda").weights
    total = QWEN3_30B.num_params(role.head)
    assert w1[0] == 2.0 * total  # all experts on each rank
    experts = sum(p.num_elements for p in model_params(QWEN3_30B, role.head, 1) if p.is_expert)
    assert experts == QWEN3_30B.num_layers * 128 * 3 * 2048 * 768
    assert w1[0] - w2[0] == pytest.approx(2.0 * experts / 2)
    # ZeRO-1: the experts' Adam states over dp / ep = 1 rank at ep 2, over 2 ranks at ep 1
    o1 = call_memory_parts(call, QWEN3_30B, role.head, one, wf.batch, 2, "cuda").optimizer
    o2 = call_memory_parts(call, QWEN3_30B, role.head, two, wf.batch, 2, "cuda").optimizer
    dense = total - experts
    assert o1[0] == pytest.approx(12.0 * total / 2)
    assert o2[0] == pytest.approx(12.0 * (dense / 2 + experts / 2))


def test_all_to_all_buffer_is_tokens_k_hidden_element_size():
    for tokens in (1, 7, 4096):
        assert moe_cost.all_to_all_buffer_bytes(QWEN3_30B, tokens, 2) == tokens * 8 * 2048 * 2


def test_all_to_all_time_on_one_node_is_nvlink_and_across_nodes_the_rails():
    one_node, two_nodes = cluster_preset("h100x8"), cluster_preset("h100x16")
    buffer = 64 * 1024**2
    intra = comm.group_link(range(8), one_node)
    across = comm.group_link(range(16), two_nodes)
    f = across.fabric
    assert (f.nodes, f.ranks_per_node) == (2, 8)
    group = two_nodes.node_group_of_node[0]
    # each GPU its rail's NIC: the node drives its 8 NICs at once
    assert group.nics_per_node == 8
    assert f.net_gb_per_s == pytest.approx(8 * group.nic_bandwidth_gb_per_s)
    t_intra = comm.all_to_all_time_s(buffer, 8, intra)
    t_across = comm.all_to_all_time_s(buffer, 16, across)
    nv = intra.fabric.nvlink_gb_per_s * 1e9
    assert t_intra == pytest.approx(buffer * 7 / 8 / nv + (8.4 + 3.4) * 1e-6)
    rail = f.net_gb_per_s / 8 * 1e9
    assert t_across == pytest.approx(buffer * 8 / 16 / rail + (8.4 + 14.0) * 1e-6)
    assert t_across > t_intra
    # a tp 2 layout's ep groups take every other GPU: 4 per node, on 4 rails
    ex = Execution(devices=tuple(range(16)), dp=8, tp=2, pp=1, ep=8)
    geo = geometry(ex, QWEN3_30B.num_layers, two_nodes)
    assert (geo.ep_link[0].fabric.nodes, geo.ep_link[0].fabric.ranks_per_node) == (2, 4)
    assert geo.ep_link[0].fabric.net_gb_per_s == pytest.approx(f.net_gb_per_s / 2)


def test_gloo_all_to_all_is_the_pairwise_exchange():
    link = comm.Link("cpu", 1e9, 1e-4)
    assert comm.all_to_all_time_s(1e6, 4, link) == pytest.approx(3 * 1e-4 + 0.75 * 1e6 / 1e9)
    assert comm.all_to_all_time_s(1e6, 1, link) == 0.0


def test_touched_experts_grow_with_the_batch_towards_all_local_ones():
    for ep in (1, 2, 8):
        local = 128 / ep
        touched = moe_cost.touched_local_experts(QWEN3_30B, ep, np.array([1, 4, 16, 64, 4096]))
        assert np.all(np.diff(touched) > 0) and touched[-1] == pytest.approx(local)
        # one token alone: its k choices spread over ep ranks
        assert touched[0] == pytest.approx(local * (1 - (1 - 8 / 128) ** ep))
    # by simulation of uniform top-k routing without replacement
    rng = np.random.default_rng(0)
    b, trials = 12, 2000
    hits = [len(set(np.concatenate([rng.choice(128, 8, replace=False) for _ in range(b)])))
            for _ in range(trials)]
    assert np.mean(hits) == pytest.approx(float(moe_cost.touched_local_experts(QWEN3_30B, 1, b)),
                                          rel=0.02)


def test_decode_weight_reads_grow_with_batch_towards_all_experts():
    seconds = [float(moe_cost.routed_experts_device_s(QWEN3_30B, H100, "decode", 1, 1, b,
                                                      512.0)) for b in (1, 8, 64, 512)]
    assert seconds == sorted(seconds) and seconds[0] < seconds[-1] / 5
    # at a batch touching every expert, the reads of all 128 experts' weights bound it below
    every = 128 * 3 * 2048 * 768 * 2
    assert seconds[-1] >= every / H100.memory_bandwidth_bytes_per_s
    # one token reads its 8 experts only
    one = 8 * sum(float(gemm_time_s(1.0, n, k, H100))
                  for n, k in moe_cost.routed_expert_gemm_shapes(QWEN3_30B, 1))
    assert seconds[0] == pytest.approx(one, rel=0.05)
    # on CUDA the loop over the 128 local experts sets a floor (the runtime runs each)
    host = moe_cost.routed_experts_host_s(QWEN3_30B, "decode", 1)
    assert host == pytest.approx(128 * 5 * 20e-6 + 3 * 10e-6)
    assert float(moe_cost.routed_experts_time_s(QWEN3_30B, H100, "decode", 1, 1, 1, 512.0)) \
        == pytest.approx(max(seconds[0], host))
    assert moe_cost.routed_experts_host_s(QWEN3_30B, "decode", 8) == pytest.approx(
        16 * 5 * 20e-6 + 3 * 10e-6)


def test_ep2_on_one_node_halves_expert_memory_and_adds_all_to_all():
    wf = grpo(QWEN3_30B, BatchSpec(n_seqs=64, prompt_len=256, gen_len=256, ppo_minibatches=2))
    cluster = cluster_preset("h100x8")
    role = wf.models["actor"]
    devices = tuple(range(8))
    base = Execution(devices=devices, dp=8, tp=1, pp=1, ep=1)
    for name in ("actor_train", "actor_gen", "ref_inf"):
        call = wf.call_by_name[name]
        t1 = call_time(call, role, base, wf.batch, cluster)
        t2 = call_time(call, role, base.model_copy(update={"ep": 2}), wf.batch, cluster)
        assert t1.phases_s["all_to_all"] == 0.0 and t2.phases_s["all_to_all"] > 0.0
        assert math.isfinite(t2.time_s)
    dense_call = builtin_workflow("grpo", model="llama-7b")
    assert "all_to_all" not in call_time(dense_call.call_by_name["actor_train"],
                                         dense_call.models["actor"], base, dense_call.batch,
                                         cluster).phases_s


def test_all_to_all_phase_counts_forward_backward_and_recompute():
    """A train call's all_to_all phase = minibatches x micro-batches x layers x (2 forward +
    2 backward + 2 recomputed with "full") x one all-to-all (pp 1)."""
    batch = BatchSpec(n_seqs=16, prompt_len=128, gen_len=128, ppo_minibatches=2)
    wf, cluster = grpo(QWEN3_30B, batch), cluster_preset("h100x8")
    call, role = wf.call_by_name["actor_train"], wf.models["actor"]
    ex = Execution(devices=tuple(range(8)), dp=8, tp=1, pp=1, ep=8, micro_batches=1)
    link = geometry(ex, 48, cluster).ep_link[0]
    tokens = 1 * 256
    one = float(moe_cost.all_to_all_s(QWEN3_30B, 8, link, tokens, 2))
    counts = moe_cost.count_exchange_s(QWEN3_30B, 8, link)
    for mode, calls, exchanges in (("none", 4, 1), ("selective", 4, 1), ("full", 6, 2)):
        t = call_time(call, role, ex.model_copy(update={"recompute": mode}), batch, cluster)
        assert t.phases_s["all_to_all"] == pytest.approx(
            2 * 48 * (calls * one + exchanges * counts))
    assert one == pytest.approx(1.25 * comm.all_to_all_time_s(tokens * 8 * 2048 * 2, 8, link))


def test_qwen3_30b_grpo_on_16_h100_prices_every_accepted_layout():
    batch = BatchSpec(n_seqs=256, prompt_len=512, gen_len=1024, ppo_minibatches=4)
    wf, cluster = grpo(QWEN3_30B, batch), cluster_preset("h100x16")
    devices = tuple(range(16))
    priced = 0
    for name in wf.call_order:
        call = wf.call_by_name[name]
        role = wf.models[call.model]
        for dp, tp, ep in itertools.product((1, 2, 4, 8, 16), (1, 2, 4, 8), (1, 2, 4, 8, 16)):
            if 16 % (dp * tp):
                continue
            pp = 16 // (dp * tp)
            ex = Execution(devices=devices, dp=dp, tp=tp, pp=pp, ep=min(ep, dp),
                           micro_batches=pp)
            if ep > dp or layout_problem(ex, role.spec, cluster, call, batch):
                continue
            t = call_time(call, role, ex, batch, cluster)
            memory = call_memory(call, role, ex, batch, cluster)
            assert math.isfinite(t.time_s) and t.time_s > 0, (name, ex.layout_text())
            assert all(math.isfinite(v) for v in t.phases_s.values())
            assert np.all(np.isfinite(memory.parts.total)) and memory.parts.total.min() > 0
            priced += 1
    assert priced > 30


def test_dense_presets_have_no_expert_terms():
    spec = PRESETS["llama-7b"]
    assert not moe_cost.expert_shard_elements(spec, "lm", 2, 2, 1).any()
    assert moe_cost.all_to_all_working_bytes_per_token(spec, 1, 2) == 0.0
    assert nccl_model.alltoall_time_s(1e6, 1, comm.group_link(range(8),
                                                               cluster_preset("h100x8")).fabric) \
        == 0.0
