"""Mixture-of-experts plans end to end on CPU gloo (slow: spawns processes).

A tiny GRPO and a tiny PPO of moe-tiny (every role a Qwen3-MoE-style model, 8 experts, top
2; reward and critic with value heads) run under cpu4 plans whose calls use different
expert-parallel degrees, so the actor (and the critic) is reallocated between layouts of
different ep (ep 2 train on {0,1} -> ep 1 generation on {2,3}; ep 2 x tp 2 train -> ep 4
generation on the same devices; ep 2 x dp 4 train -> ep 4 generation), with ZeRO-1 (the
default) and without. Each must give the one-process run's per-iteration metrics and, after
two iterations, its weights within the dense invariance test's tolerances
(tests/executor/test_executor_runs.py: METRIC_RTOL / METRIC_ATOL, WEIGHT_REL of how far
training moved a weight, WEIGHT_FLOOR); the one-process reference moves its experts, and its
metrics change between iterations, by far more than those tolerances. The bytes of each
reallocation are the ones the cost model prices (the same check as the dense plans'), and
the bytes the inference and train calls' all-to-alls send (the trace's all_to_all_bytes)
are the ones costmodel/moe_cost.py prices.
"""

from __future__ import annotations

import executor_workers as W
import pytest
from test_executor_runs import (
    METRIC_ATOL,
    METRIC_RTOL,
    WEIGHT_FLOOR,
    WEIGHT_REL,
    _full_weights,
    _initial_weight,
    _metric_tolerance,
    _metrics,
    _priced_move_bytes,
)

from costmodel.moe_cost import (
    ALL_TO_ALLS_PER_BLOCK,
    RECOMPUTED_ALL_TO_ALLS_PER_BLOCK,
    all_to_all_buffer_bytes,
)
from planner.domain.layout import Execution
from planner.domain.plan import Plan
from runtime.device import rank_device_config
from runtime.executor.config import RunConfig
from runtime.executor.trace import build_trace
from runtime.launch import run_distributed
from runtime.optimizer import is_expert_param

pytestmark = pytest.mark.slow

MODEL = "moe-tiny"
ITERATIONS = 2
CONFIG = RunConfig(iterations=ITERATIONS, lr=1e-4, return_weights=True)
GRPO_BATCH = {"n_seqs": 8, "prompt_len": 8, "gen_len": 4, "ppo_minibatches": 2,
              "group_size": 2}
PPO_BATCH = {"n_seqs": 8, "prompt_len": 8, "gen_len": 4, "ppo_minibatches": 2}
BATCHES = {"grpo": GRPO_BATCH, "ppo": PPO_BATCH}


def ex(devices, dp=1, tp=1, pp=1, ep=1, micro_batches=1, zero1=True) -> Execution:
    return Execution(devices=tuple(devices), dp=dp, tp=tp, pp=pp, ep=ep,
                     micro_batches=micro_batches, shard_optimizer_over_dp=zero1)


def single_process(algorithm: str) -> Plan:
    return W.make_plan("cpu1", {c: ex([0]) for c in _calls(algorithm)}, algorithm,
                       BATCHES[algorithm], MODEL)


def _calls(algorithm: str) -> tuple[str, ...]:
    return {"grpo": ("actor_gen", "rew_inf", "ref_inf", "actor_train"),
            "ppo": W.CALLS}[algorithm]


def four_process_plans() -> dict[str, tuple[str, Plan]]:
    """{name: (algorithm, plan)} on cpu4, every one reallocating the actor between ep."""
    return {
        # disjoint: train ep 2 on {0,1}, generate ep 1 on {2,3}; reward ep 4 on all
        "grpo_disjoint": ("grpo", W.make_plan("cpu4", {
            "actor_gen": ex([2, 3], dp=2), "rew_inf": ex(range(4), dp=4, ep=4),
            "ref_inf": ex([0, 1], dp=2, ep=2), "actor_train": ex([0, 1], dp=2, ep=2)},
            "grpo", GRPO_BATCH, MODEL)),
        # colocated: train ep 2 x tp 2 (no ZeRO-1), generate ep 4; reward pp 2
        "grpo_colocated": ("grpo", W.make_plan("cpu4", {
            "actor_gen": ex(range(4), dp=4, ep=4), "rew_inf": ex(range(4), dp=2, pp=2),
            "ref_inf": ex(range(4), dp=4, ep=2),
            "actor_train": ex(range(4), dp=2, tp=2, ep=2, micro_batches=2, zero1=False)},
            "grpo", GRPO_BATCH, MODEL)),
        # PPO: actor train ep 2 on dp 4 -> generate ep 4; critic ep 2 train <-> ep 1 inference
        "ppo_ep": ("ppo", W.make_plan("cpu4", {
            "actor_gen": ex(range(4), dp=4, ep=4), "rew_inf": ex([0, 1], tp=2),
            "ref_inf": ex([0, 1], dp=2, ep=2), "critic_inf": ex([0, 1], dp=2),
            "actor_train": ex(range(4), dp=4, ep=2), "critic_train": ex([2, 3], dp=2, ep=2)},
            "ppo", PPO_BATCH, MODEL)),
    }


@pytest.fixture(scope="module")
def runs():
    plans = four_process_plans()
    multi = run_distributed(W.run_plans, 4, (W.as_mappings(p for _, p in plans.values()),
                                             CONFIG), timeout_s=600)
    references = [single_process(a) for a in ("grpo", "ppo")]
    single = run_distributed(W.run_plans, 1, (W.as_mappings(references), CONFIG),
                             timeout_s=300)
    return plans, multi, {"grpo": (references[0], 0), "ppo": (references[1], 1)}, single


def test_the_references_train_their_experts(runs):
    """Not vacuous: metrics change between iterations, and every trained expert tensor
    moved from its seeded init by more than the weight tolerance can hide."""
    _, _, references, single = runs
    for algorithm, (plan, index) in references.items():
        metrics = _metrics(single[0][index]["messages"])
        for key, last in metrics[ITERATIONS - 1].items():
            if key == "response_length_mean":   # a fixed gen_len: constant
                continue
            assert abs(last - metrics[0][key]) > 100 * _metric_tolerance(last), (algorithm, key)
        weights = _full_weights(single, index)
        for role in plan.workflow.trained_models():
            experts = [n for n in weights[role] if is_expert_param(n)]
            assert experts, role
            for name in experts:
                moved = (weights[role][name] - _initial_weight(plan, role, name)).norm()
                assert moved > 100 * WEIGHT_FLOOR, (algorithm, role, name)


@pytest.mark.parametrize("name", list(four_process_plans()))
def test_moe_plans_give_the_single_process_metrics_and_weights(runs, name):
    plans, multi, references, single = runs
    algorithm, _ = plans[name]
    index = list(plans).index(name)
    reference_plan, ref_index = references[algorithm]
    reference = _metrics(single[0][ref_index]["messages"])
    got = _metrics([m for r in multi for m in r[index]["messages"]])
    assert got.keys() == reference.keys()
    for iteration, expected in reference.items():
        assert got[iteration].keys() == expected.keys(), iteration
        for key, value in expected.items():
            assert got[iteration][key] == pytest.approx(value, rel=METRIC_RTOL,
                                                        abs=METRIC_ATOL), (iteration, key)
    ref_weights, weights = _full_weights(single, ref_index), _full_weights(multi, index)
    assert weights.keys() == ref_weights.keys()
    for role, params in ref_weights.items():
        assert weights[role].keys() == params.keys(), role
        for param, reference_weight in params.items():
            moved = (reference_weight - _initial_weight(reference_plan, role, param)).norm()
            diff = (weights[role][param] - reference_weight).norm()
            assert diff <= WEIGHT_REL * moved + WEIGHT_FLOOR, (role, param, float(diff),
                                                               float(moved))


@pytest.mark.parametrize("name", list(four_process_plans()))
def test_moe_reallocations_move_the_priced_bytes(runs, name):
    plans, multi, _, _ = runs
    _, plan = plans[name]
    index = list(plans).index(name)
    trace = build_trace(plan, [m for r in multi for m in r[index]["messages"]], ITERATIONS)
    moves = {m["name"]: m["bytes"] for m in trace["reallocations"]}
    assert moves == _priced_move_bytes(plan)
    assert any(v > 0 for v in moves.values())


def _priced_all_to_all_bytes(plan: Plan, call_name: str) -> float:
    """What costmodel/moe_cost.py prices a call's all-to-alls to send, summed over the
    call's ranks: every rank of an ep group > 1 sends, per block of its stage and pass, one
    buffer (all_to_all_buffer_bytes) of the tokens of its rows (seq_len each, padding
    included) ALL_TO_ALLS_PER_BLOCK times: forward for inference; forward, backward and the
    recomputation's rerun for train. Over the ranks: tp copies of every row through every
    block. 0 at ep 1."""
    ex, wf = plan.executions[call_name], plan.workflow
    call = wf.call_by_name[call_name]
    spec = wf.models[call.model].spec
    if ex.ep == 1:
        return 0.0
    per_block = (ALL_TO_ALLS_PER_BLOCK["forward"] if call.kind == "inference" else
                 ALL_TO_ALLS_PER_BLOCK["forward"] + ALL_TO_ALLS_PER_BLOCK["backward"]
                 + RECOMPUTED_ALL_TO_ALLS_PER_BLOCK[ex.recompute])
    dtype_bytes = rank_device_config(plan.cluster, 0, 0).dtype.itemsize
    tokens = ex.tp * wf.batch.n_seqs * wf.batch.seq_len
    return float(all_to_all_buffer_bytes(spec, tokens, dtype_bytes)) * spec.num_layers * per_block


@pytest.mark.parametrize("name", list(four_process_plans()))
def test_moe_all_to_alls_send_the_priced_bytes(runs, name):
    """Inference and train calls (generation's prompt widths and decode rounds are priced
    as expectations, so they are not compared here); ep 1 calls send nothing."""
    plans, multi, _, _ = runs
    _, plan = plans[name]
    index = list(plans).index(name)
    trace = build_trace(plan, [m for r in multi for m in r[index]["messages"]], ITERATIONS)
    compared = 0
    for call in trace["calls"]:
        kind = plan.workflow.call_by_name[call["name"]].kind
        if call["ep"] == 1:
            assert call["all_to_all_bytes"] == 0, call["name"]
        elif kind != "generate":
            assert call["all_to_all_bytes"] == _priced_all_to_all_bytes(plan, call["name"]), \
                call["name"]
            compared += 1
    assert compared >= 2
