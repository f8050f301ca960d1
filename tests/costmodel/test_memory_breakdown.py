"""One memory breakdown: a call's parts, the simulator's per-device and per-call peaks made
of them, the figure drawn from them, and the train-call run policy priced from the execution.
"""

from __future__ import annotations

import numpy as np
import pytest

from costmodel import comm, recompute
from costmodel import efficiency as eff
from costmodel.call_cost import call_memory, call_time
from costmodel.call_geometry import geometry
from costmodel.compute import part_timer
from costmodel.memory import PART_KINDS
from costmodel.plan_cost import PlanCosts
from costmodel.plan_memory import MESSAGE_BUFFERS, WEIGHTS_COPY
from costmodel.simulator import simulate
from planner.domain.cluster import cluster_preset
from planner.domain.hardware import GIB
from planner.domain.layout import RECOMPUTE_MODES, Execution
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow_file import builtin_workflow
from planner.figures.memory import bar_segments
from planner.search.builder import PRICE_COLUMNS, CallPricer, full_tables

BREAKDOWN_KINDS = set(PART_KINDS) | {WEIGHTS_COPY, MESSAGE_BUFFERS}
PLANS_PER_WORKFLOW = 12


def _random_plans(algorithm: str, cluster_name: str, seed: int):
    """Valid plans (any layout the search offers), train calls with a random run policy."""
    workflow, cluster = builtin_workflow(algorithm), cluster_preset(cluster_name)
    tables = full_tables(workflow, cluster)
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(PLANS_PER_WORKFLOW):
        choice = np.array([rng.integers(len(t)) for t in tables.calls])
        executions = tables.executions_of(choice)
        for name, ex in executions.items():
            if workflow.call_by_name[name].kind == "train":
                executions[name] = ex.model_copy(update={
                    "shard_optimizer_over_dp": bool(rng.integers(2)),
                    "recompute": str(rng.choice(RECOMPUTE_MODES))})
        plans.append(executions)
    return workflow, cluster, plans


@pytest.fixture(scope="module", params=[("ppo", "h100x8", 0), ("grpo", "h100x16", 1),
                                        ("dpo", "h100x8", 2), ("remax", "h100x8", 3)],
                ids=lambda p: p[0])
def random_estimates(request):
    """(workflow, cluster, costs, [(executions, estimate)]) of random plans of a workflow."""
    workflow, cluster, plans = _random_plans(*request.param)
    costs = PlanCosts(workflow, cluster)
    return workflow, cluster, costs, [(ex, simulate(workflow, cluster, ex, costs=costs))
                                      for ex in plans]


def _total(items) -> float:
    return sum(amount for _, _, amount in items)


def test_device_parts_add_up_to_each_device_peak(random_estimates):
    workflow, cluster, _, estimates = random_estimates
    for _, est in estimates:
        for d in range(cluster.num_devices):
            items = est.memory.device_parts[d]
            assert _total(items) == pytest.approx(est.peak_memory_bytes[d], rel=1e-9), d
            assert {kind for kind, _, _ in items} <= BREAKDOWN_KINDS
            assert {model for _, model, _ in items} <= set(workflow.models)
            assert all(amount > 0 for _, _, amount in items)
            resident = _total(est.memory.resident_items(d))
            assert resident == pytest.approx(est.memory.persistent_bytes[d], rel=1e-9)


def test_call_parts_add_up_to_each_call_peak_at_its_highest_device(random_estimates):
    workflow, _, _, estimates = random_estimates
    for executions, est in estimates:
        for name in workflow.call_order:
            device = est.memory.call_peak_device[name]
            assert device in executions[name].devices
            peak = est.call_peak_memory_bytes[name]
            assert _total(est.memory.call_parts[name]) == pytest.approx(peak, rel=1e-9)
            assert peak <= est.peak_memory_bytes[device] * (1 + 1e-12)


def test_no_device_peak_is_below_what_a_call_needs_alone_there(random_estimates):
    """CallMemory.alone_bytes is a lower bound of the simulated peak (the search prunes on
    it): each call's resident and working parts are on each of its devices at its peak."""
    workflow, _, costs, estimates = random_estimates
    for executions, est in estimates:
        for name in workflow.call_order:
            ex = executions[name]
            alone = costs.call_memory(name, ex).alone_bytes()
            peaks = np.array([est.peak_memory_bytes[d] for d in ex.devices])
            assert np.all(peaks >= alone * (1 - 1e-12)), name


def test_memory_figure_bars_are_the_estimate(random_estimates):
    _, cluster, _, estimates = random_estimates
    for _, est in estimates:
        for d, segments in enumerate(bar_segments(est, cluster.num_devices)):
            heights_bytes = sum(s.height_gib for s in segments) * GIB
            assert heights_bytes == pytest.approx(est.peak_memory_bytes[d], rel=1e-9)
            assert [(s.kind, s.model) for s in segments] == \
                [(kind, model) for kind, model, _ in est.memory.device_parts[d]]


def test_transient_copies_and_receive_buffers_are_named_parts():
    """The critic's inference runs on a placement unlike its training: the call carries a
    weights copy, and each reallocation into it a receive buffer as priced."""
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x8")
    everywhere = tuple(range(8))
    train = Execution(devices=everywhere, dp=2, tp=4, pp=1, micro_batches=4)
    inference = Execution(devices=everywhere, dp=8, tp=1, pp=1, micro_batches=4)
    executions = {name: train for name in workflow.call_order}
    executions["critic_inf"] = inference
    costs = PlanCosts(workflow, cluster)
    est = simulate(workflow, cluster, executions, costs=costs)
    nodes = {node.name: node for node in est.memory.nodes}
    weights = costs.call_memory("critic_inf", inference).weights_bytes
    copy = [amount for kind, model, amount in nodes["critic_inf"].parts
            if kind == WEIGHTS_COPY and model == "critic"]
    assert len(copy) == 1 and np.allclose(copy[0], weights)
    into = nodes["realloc:critic:critic_train->critic_inf"]
    buffers = costs.realloc("critic", train, inference).message_buffer_bytes
    (buffer,) = [amount for kind, _, amount in into.parts if kind == MESSAGE_BUFFERS]
    assert dict(zip(into.devices.tolist(), buffer)) == pytest.approx(
        {d: buffers.get(d, 0.0) for d in into.devices.tolist()})
    assert max(buffers.values()) > 0


# --- A train call's parts by hand -----------------------------------------------------------

SPEC_NAME = "llama-7b"


def _actor_train(devices: int, dp: int, **policy):
    workflow = builtin_workflow("ppo", model=SPEC_NAME)
    cluster = cluster_preset(f"h100x{devices}")
    ex = Execution(devices=tuple(range(devices)), dp=dp, tp=1, pp=1, **policy)
    call = workflow.call_by_name["actor_train"]
    return workflow, cluster, call, workflow.models["actor"], ex


def _memory(devices: int, dp: int, **policy):
    workflow, cluster, call, role, ex = _actor_train(devices, dp, **policy)
    return call_memory(call, role, ex, workflow.batch, cluster), role.spec, workflow.batch


def test_train_state_is_sixteen_bytes_per_parameter_with_bf16_and_dp_1():
    memory, spec, _ = _memory(1, 1)
    params = spec.num_params("lm")
    assert memory.parts.weights[0] == pytest.approx(2 * params)
    assert memory.parts.gradients[0] == pytest.approx(2 * params)
    assert memory.parts.optimizer[0] == pytest.approx(12 * params)
    assert memory.resident_bytes[0] == pytest.approx(16 * params)
    assert memory.alone_bytes()[0] == pytest.approx(16 * params + memory.working_bytes[0])


def test_zero1_divides_the_optimizer_states_over_dp_and_only_them():
    sharded, spec, _ = _memory(4, 4)
    replicated, _, _ = _memory(4, 4, shard_optimizer_over_dp=False)
    params = spec.num_params("lm")
    assert np.allclose(sharded.parts.optimizer, 12 * params / 4)
    assert np.allclose(replicated.parts.optimizer, 12 * params)
    for kind in ("weights", "gradients", "activations", "logits", "workspace"):
        assert np.allclose(getattr(sharded.parts, kind), getattr(replicated.parts, kind)), kind


def test_activations_without_recompute_keep_every_block_by_hand():
    recomputed, spec, batch = _memory(1, 1)
    kept_all, _, _ = _memory(1, 1, recompute="none")
    h, layers, d, s = spec.hidden_size, spec.num_layers, 2, batch.seq_len
    tokens = batch.n_seqs // batch.ppo_minibatches * s  # dp 1, one micro-batch
    # h100: a causal pass without a mask, so no mask keys (costmodel.memory.mask_keys)
    block = tokens * recompute.block_bytes_per_token(spec, 1, 0, d)
    head = tokens * (4 * h + 4 + 2 * d * h)   # final norm (fp32 input, rsqrt, normed), head input
    logits = tokens * spec.vocab_size * (eff.TRAIN_LOGITS_FP32_COPIES * 4 + d)
    # with recomputation: each block's input (d bytes per element), plus one block being
    # recomputed beyond the logits' backward; without: every block's activations
    rerun = recompute.RECOMPUTED_WORKING_COPIES * block
    assert recomputed.parts.activations[0] == pytest.approx(
        layers * tokens * h * d + head + max(0.0, rerun - logits))
    assert kept_all.parts.activations[0] == pytest.approx(layers * block + head)
    assert kept_all.parts.activations[0] > recomputed.parts.activations[0]
    assert recomputed.parts.logits[0] == kept_all.parts.logits[0] == pytest.approx(logits)


def _train_phases(devices: int, dp: int, micro_batches: int = 1, **policy) -> dict:
    workflow, cluster, call, role, ex = _actor_train(devices, dp, **policy)
    ex = ex.model_copy(update={"micro_batches": micro_batches})
    return call_time(call, role, ex, workflow.batch, cluster).phases_s


def test_without_recompute_the_step_saves_exactly_the_recomputed_forward():
    workflow, cluster, call, role, ex = _actor_train(1, 1)
    m = 4
    with_recompute = _train_phases(1, 1, m)
    without = _train_phases(1, 1, m, recompute="none")
    batch, spec = workflow.batch, role.spec
    b = batch.n_seqs // batch.ppo_minibatches // m
    timer = part_timer(spec, cluster.hardware_of(0), PROFILES_DIR)
    block_forward_s = timer.time_s("forward", "block", 1, b, batch.seq_len)
    # (pp + m - 1) pipeline slots per minibatch, pp 1; tp 1 so no recomputed all-reduces
    saved_s = batch.ppo_minibatches * m * spec.num_layers * block_forward_s
    assert with_recompute["forward_backward"] - without["forward_backward"] == \
        pytest.approx(saved_s, rel=1e-9)
    assert without["dp_sync"] == with_recompute["dp_sync"]


def test_without_zero1_gradients_are_all_reduced_and_every_replica_steps_in_full():
    dp = 4
    workflow, cluster, call, role, ex = _actor_train(dp, dp)
    zero1 = _train_phases(dp, dp)
    plain = _train_phases(dp, dp, shard_optimizer_over_dp=False)
    k = workflow.batch.ppo_minibatches
    local_bytes = role.spec.num_params("lm") * cluster.hardware_of(0).compute_dtype_bytes
    link = geometry(ex, role.spec.num_layers, cluster).dp_link[0]
    # the reduction overlaps backward: only a small exposed part
    # (tests/costmodel/test_dp_overlap.py)
    assert 0 < plain["dp_sync"] < k * comm.allreduce_time_s(local_bytes, dp, link)
    assert 0 < zero1["dp_sync"] < k * comm.reduce_scatter_time_s(local_bytes, dp, link)
    # the ZeRO-1 weight all-gather after the step is not overlapped
    assert plain["dp_gather"] == 0.0
    assert zero1["dp_gather"] >= k * comm.allgather_time_s(local_bytes, dp, link)
    assert plain["optimizer"] == pytest.approx(dp * zero1["optimizer"])
    assert plain["forward_backward"] == zero1["forward_backward"]


def test_search_tables_price_each_run_policy_apart():
    """The price cache keys by the policy: two executions differing only in it get their
    own figures (a shared key would give the second the first's price)."""
    workflow, cluster, call, role, ex = _actor_train(4, 4)
    pricer = CallPricer(workflow, cluster)
    plain_ex = ex.model_copy(update={"shard_optimizer_over_dp": False, "recompute": "none"})
    default = dict(zip(PRICE_COLUMNS, pricer.price(call, ex)))
    plain = dict(zip(PRICE_COLUMNS, pricer.price(call, plain_ex)))
    memory = call_memory(call, role, plain_ex, workflow.batch, cluster)
    assert plain["time_s"] == call_time(call, role, plain_ex, workflow.batch, cluster).time_s
    assert plain["state_bytes"] == memory.resident_bytes.max() > default["state_bytes"]
    assert plain["activation_bytes"] == memory.working_bytes.max() > \
        default["activation_bytes"]
    assert plain["alone_peak_bytes"] == memory.alone_bytes().max() > \
        default["alone_peak_bytes"]


def test_a_nan_time_never_makes_a_plan_feasible():
    """A NaN from a profile or calibration that slipped past the input checks gives an
    infeasible estimate with the reason, not `iteration: nan s ... feasible`."""
    from costmodel.call_cost import CallTime
    from costmodel.plan_cost import PlanCosts
    from costmodel.simulator import simulate
    from planner.domain.cluster import cluster_preset
    from planner.domain.layout import Execution
    from planner.domain.workflow_file import builtin_workflow

    workflow, cluster = builtin_workflow("dpo", model="llama-tiny"), cluster_preset("cpu2")
    executions = {name: Execution(devices=(0, 1), dp=2, tp=1, pp=1)
                  for name in workflow.call_order}
    costs = PlanCosts(workflow, cluster)
    costs._times[("ref_inf", executions["ref_inf"])] = CallTime(float("nan"))
    est = simulate(workflow, cluster, executions, costs=costs)
    assert not est.feasible and "ref_inf" in est.reason and "nan" in est.reason
