"""FSDP / ZeRO-3 executions (Execution.shard_parameters_over_dp) priced as the frameworks run
them (costmodel/fsdp_cost.py): per-layer all-gathers and reduce-scatters, memory divided
over dp plus the gathered working set, and the per-tensor weight sync out of them. Expected
values are recomputed here from the model spec and comm.py's collectives, not read back."""

from __future__ import annotations

import numpy as np
import pytest

from costmodel import comm, fsdp_cost
from costmodel import efficiency as eff
from costmodel.call_cost import call_memory, call_time_with_knobs
from costmodel.call_geometry import CostKnobs, geometry
from costmodel.plan_memory import WEIGHTS_COPY
from costmodel.realloc_cost import realloc_cost
from costmodel.simulator import simulate
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.workflow_file import builtin_workflow
from planner.sharding.param_shards import model_params, shard_elements

NO_COMPUTE = CostKnobs(compute_scale=0.0)
BF16 = 2


@pytest.fixture(scope="module")
def grpo():
    return builtin_workflow("grpo", model="llama-7b"), cluster_preset("h100x8")


def execution(devices, dp, tp=1, micro_batches=4, sharded=True, **policy):
    return Execution(devices=tuple(devices), dp=dp, tp=tp, pp=1, micro_batches=micro_batches,
                     shard_parameters_over_dp=sharded, **policy)


def block_and_root_elements(spec) -> tuple[int, int]:
    """One LLaMA block's and the embedding + final norm + untied head's elements, from the
    spec's fields."""
    h, q, kv, inter = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.intermediate_size
    block = 2 * h + 2 * q * h + 2 * kv * h + 3 * h * inter
    return block, 2 * spec.vocab_size * h + h


def dp_collectives_s(ex, spec, cluster):
    """(root gather, block gather, block reduce-scatter, root reduce-scatter) seconds over
    the execution's dp group: gathers in bf16, reduce-scatters in fp32 (verl's defaults)."""
    block, root = block_and_root_elements(spec)
    link = comm.group_link(ex.devices, cluster)
    reduce = fsdp_cost.GRADIENT_REDUCE_BYTES
    return (comm.allgather_time_s(root * BF16, ex.dp, link),
            comm.allgather_time_s(block * BF16, ex.dp, link),
            comm.reduce_scatter_time_s(block * reduce, ex.dp, link),
            comm.reduce_scatter_time_s(root * reduce, ex.dp, link))


def test_units_partition_the_model(grpo):
    workflow, _ = grpo
    spec = workflow.models["actor"].spec
    units = fsdp_cost.unit_elements(spec, "lm", 1)
    assert (units.block, units.root) == block_and_root_elements(spec)
    assert units.root + spec.num_layers * units.block == int(shard_elements(spec, "lm", 1, 1).sum())


def test_train_with_negligible_compute_costs_every_collective(grpo):
    """Compute made zero: the chains expose every collective of every micro-batch, forward
    G_root + L G_b, backward L (G_b + RS_b) + RS_root; the bytes gathered per micro-batch are
    the blocks twice and the root once, 2 x params minus the root, in bf16."""
    workflow, cluster = grpo
    role, call, batch = workflow.models["actor"], workflow.call_by_name["actor_train"], \
        workflow.batch
    ex = execution(range(8), 8)
    phases = call_time_with_knobs(call, role, ex, batch, cluster, knobs=NO_COMPUTE).phases_s
    g_root, g_block, rs_block, rs_root = dp_collectives_s(ex, role.spec, cluster)
    layers, micro = role.spec.num_layers, batch.ppo_minibatches * ex.micro_batches
    assert phases["fsdp_forward"] == pytest.approx(micro * (g_root + layers * g_block), rel=1e-9)
    assert phases["fsdp_backward"] == pytest.approx(
        micro * (layers * (g_block + rs_block) + rs_root), rel=1e-9)
    assert phases["dp_sync"] == phases["dp_gather"] == 0.0
    block, root = block_and_root_elements(role.spec)
    params = root + layers * block
    gathered_bytes = (root + 2 * layers * block) * BF16
    assert gathered_bytes == 2 * params * BF16 - root * BF16


def test_inference_gathers_the_root_once_and_every_block_per_micro_batch(grpo):
    workflow, cluster = grpo
    role, call = workflow.models["ref"], workflow.call_by_name["ref_inf"]
    ex = execution(range(8), 8, micro_batches=8)
    phases = call_time_with_knobs(call, role, ex, workflow.batch, cluster,
                                  knobs=NO_COMPUTE).phases_s
    g_root, g_block, _, _ = dp_collectives_s(ex, role.spec, cluster)
    assert phases["fsdp_forward"] == pytest.approx(
        g_root + ex.micro_batches * role.spec.num_layers * g_block, rel=1e-9)


def test_fsdp_train_is_zero1_compute_plus_at_least_the_root_collectives(grpo):
    """Same layout, same compute and optimizer; FSDP swaps ZeRO-1's gradient reduction and
    weight gather for its per-layer collectives, of which at least the root's gather (before
    any compute; the first block's runs beside the embedding) and the root's reduce-scatter
    (after all of it) of every micro-batch are exposed."""
    workflow, cluster = grpo
    role, call, batch = workflow.models["actor"], workflow.call_by_name["actor_train"], \
        workflow.batch
    fsdp = call_time_with_knobs(call, role, execution(range(8), 8), batch, cluster).phases_s
    zero1 = call_time_with_knobs(call, role, execution(range(8), 8, sharded=False), batch,
                                 cluster).phases_s
    assert fsdp["forward_backward"] == pytest.approx(zero1["forward_backward"], rel=1e-12)
    assert fsdp["optimizer"] == zero1["optimizer"]
    g_root, g_block, _, rs_root = dp_collectives_s(execution(range(8), 8), role.spec, cluster)
    micro = batch.ppo_minibatches * 4
    assert fsdp["fsdp_forward"] >= micro * g_root * (1 - 1e-9)
    everything = micro * (g_root + role.spec.num_layers * g_block)
    assert fsdp["fsdp_forward"] < everything                 # compute hides block gathers
    assert fsdp["fsdp_backward"] >= micro * rs_root * (1 - 1e-9)
    without_dp_sync = sum(zero1.values()) - zero1["dp_sync"] - zero1["dp_gather"]
    assert sum(fsdp.values()) >= without_dp_sync + micro * (g_root + rs_root) * (1 - 1e-9)


def test_memory_of_states_is_one_dp_th_of_zero0_plus_the_gathered_working_set(grpo):
    workflow, cluster = grpo
    role, call, batch = workflow.models["actor"], workflow.call_by_name["actor_train"], \
        workflow.batch
    fsdp = call_memory(call, role, execution(range(8), 8), batch, cluster)
    zero0 = call_memory(call, role, execution(range(8), 8, sharded=False,
                                              shard_optimizer_over_dp=False), batch, cluster)
    np.testing.assert_allclose(fsdp.resident_bytes, zero0.resident_bytes / 8, rtol=1e-12)
    params = int(shard_elements(role.spec, "lm", 1, 1).sum())
    np.testing.assert_allclose(fsdp.resident_bytes, params * (2 + 2 + 12) / 8, rtol=1e-12)
    block, root = block_and_root_elements(role.spec)
    np.testing.assert_allclose(fsdp.parts.gathered_parameters, (root + 2 * block) * BF16)
    np.testing.assert_allclose(fsdp.parts.unsharded_gradients,
                               (root + block) * BF16 + root * fsdp_cost.GRADIENT_REDUCE_BYTES)
    assert not zero0.parts.gathered_parameters.any()
    assert not zero0.parts.unsharded_gradients.any()
    inference = call_memory(workflow.call_by_name["ref_inf"], workflow.models["ref"],
                            execution(range(8), 8), batch, cluster)
    assert not inference.parts.unsharded_gradients.any()
    np.testing.assert_allclose(inference.weights_bytes, params * BF16 / 8, rtol=1e-12)


def expected_sync_s(spec, src, dst_tp, cluster, outside=()):
    """Sum over the model's tensors of gather + slice copy (+ broadcast to `outside`) plus
    the per-tensor host latency."""
    link = comm.group_link(src.devices, cluster)
    hbm = cluster.hardware_of(0).memory_bandwidth_bytes_per_s * eff.MEMORY_BANDWIDTH_EFFICIENCY
    sync_bytes = fsdp_cost.SYNC_PARAMETER_BYTES
    group = [src.devices[0], *outside]
    broadcast_link = comm.group_link(group, cluster)
    total = 0.0
    params = model_params(spec, "lm", 1)
    for p in params:
        total += comm.allgather_time_s(p.num_elements * sync_bytes, src.dp, link)
        sliced = p.num_elements if p.split == "replicated" else p.num_elements // dst_tp
        total += sliced * (sync_bytes + BF16) / hbm
        if outside:
            total += (len(group) - 1) * broadcast_link.alpha_s \
                + p.num_elements * sync_bytes / broadcast_link.bandwidth_bytes_per_s
    latency = fsdp_cost.SYNC_EAGER_OPS_PER_TENSOR * eff.EAGER_OP_HOST_S \
        + (fsdp_cost.RAY_ACTOR_CALL_S if outside else 0.0)
    return total + len(params) * latency, len(params)


def test_weight_sync_of_a_7b_model_out_of_fsdp_dp8_into_tp2_dp4(grpo):
    workflow, cluster = grpo
    spec = workflow.models["actor"].spec
    src, dst = execution(range(8), 8), execution(range(8), 4, tp=2, sharded=False)
    cost = realloc_cost(spec, "lm", src, dst, cluster)
    expected, tensors = expected_sync_s(spec, src, 2, cluster)
    assert tensors == 9 * spec.num_layers + 3
    assert cost.num_steps == tensors
    assert cost.time_s == pytest.approx(expected, rel=1e-9)
    largest = fsdp_cost.SYNC_PARAMETER_BYTES * spec.vocab_size * spec.hidden_size
    assert cost.message_buffer_bytes == {d: largest for d in range(8)}


def test_weight_sync_to_devices_outside_the_source_is_a_broadcast_and_slower():
    workflow, cluster = builtin_workflow("grpo", model="llama-7b"), cluster_preset("h100x16")
    spec = workflow.models["actor"].spec
    src = execution(range(8), 8)
    colocated = realloc_cost(spec, "lm", src, execution(range(8), 4, tp=2, sharded=False),
                             cluster)
    apart = realloc_cost(spec, "lm", src, execution(range(8, 16), 4, tp=2, sharded=False),
                         cluster)
    expected, _ = expected_sync_s(spec, src, 2, cluster, outside=tuple(range(8, 16)))
    assert apart.time_s == pytest.approx(expected, rel=1e-9)
    assert apart.time_s > colocated.time_s
    assert apart.inter_node_bytes > 0 and colocated.inter_node_bytes == 0
    full = fsdp_cost.SYNC_PARAMETER_BYTES * spec.vocab_size * spec.hidden_size
    assert all(apart.message_buffer_bytes[d] == full for d in range(8, 16))


def test_moves_into_a_sharded_engine_are_free_and_unsharded_moves_unchanged(grpo):
    workflow, cluster = grpo
    spec = workflow.models["actor"].spec
    gen = execution(range(8), 4, tp=2, sharded=False)
    assert realloc_cost(spec, "lm", gen, execution(range(8), 8), cluster).time_s == 0.0
    plain = realloc_cost(spec, "lm", execution(range(8), 8, sharded=False), gen, cluster)
    synced = realloc_cost(spec, "lm", execution(range(8), 8), gen, cluster)
    assert synced.time_s > plain.time_s > 0.0


def test_the_geometry_link_is_the_dp_group_link(grpo):
    """The tests above price the dp group with comm.group_link of the mesh; the cost model
    reads it from the geometry: the same link for one dp group of tp 1."""
    _, cluster = grpo
    ex = execution(range(8), 8)
    assert geometry(ex, 32, cluster).dp_link[0] == comm.group_link(ex.devices, cluster)


def test_a_call_on_the_placement_of_a_sharded_train_call_holds_its_own_weights(grpo):
    """verl's rollout with tp 1 on the FSDP actor's devices: same placement, but the sharded
    train state has no full copy, so the rollout's weights are a transient copy."""
    workflow, cluster = grpo
    executions = {"actor_gen": execution(range(8), 8, micro_batches=1, sharded=False),
                  "rew_inf": execution(range(8), 8, micro_batches=8),
                  "ref_inf": execution(range(8), 8, micro_batches=8),
                  "actor_train": execution(range(8), 8)}
    parts = simulate(workflow, cluster, executions).memory.call_parts["actor_gen"]
    copies = [amount for kind, model, amount in parts if kind == WEIGHTS_COPY]
    params = int(shard_elements(workflow.models["actor"].spec, "lm", 1, 1).sum())
    assert copies == [pytest.approx(params * BF16)]


def test_a_sharded_source_with_tp_gathers_its_shards_then_moves_by_the_schedule(grpo):
    """tp 2 x FSDP dp 4 -> tp 4 dp 2: each tp shard gathered over its dp group, then the
    gathered (replicated) layout moves by the ordinary reallocation schedule."""
    workflow, cluster = grpo
    spec = workflow.models["actor"].spec
    src = execution(range(8), 4, tp=2)
    dst = execution(range(8), 2, tp=4, sharded=False)
    link = geometry(src, spec.num_layers, cluster).dp_link[0]
    params = model_params(spec, "lm", 1)
    shard = [p.num_elements if p.split == "replicated" else p.num_elements // 2 for p in params]
    gathers = sum(comm.allgather_time_s(n * fsdp_cost.SYNC_PARAMETER_BYTES, 4, link)
                  for n in shard)
    moved = realloc_cost(spec, "lm", src.model_copy(update={"shard_parameters_over_dp": False}),
                         dst, cluster)
    host = len(params) * fsdp_cost.SYNC_EAGER_OPS_PER_TENSOR * eff.EAGER_OP_HOST_S
    cost = realloc_cost(spec, "lm", src, dst, cluster)
    assert cost.time_s == pytest.approx(gathers + host + moved.time_s, rel=1e-9)
    assert moved.time_s > 0
