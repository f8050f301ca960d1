"""The executor end to end on CPU gloo (slow: spawns processes).

Invariance: a tiny PPO (llama-tiny, 8 sequences, prompt 16, gen 8, two minibatches) under
three cpu4 plans (overlapping and disjoint meshes, tp / pp / dp, reallocations and transfers)
gives the 1-process plan's per-iteration metrics within METRIC_RTOL / METRIC_ATOL and, after
two iterations, its weights within a tolerance relative to how far training moved them
(WEIGHT_REL, reasons at the constants). Rollouts match because every sequence samples from
its own seeded generator. The bytes each reallocation and transfer moves are the bytes the
cost model prices for it.

Learning: with the programmatic reward (target token 7 of a 32-token vocabulary, ~3% by
chance) PPO and GRPO on llama-micro raise the mean reward of the last three iterations far
above the first three: 384 tokens per 3 iterations, 3% by chance gives ~12 hits, and the
thresholds need 4 x the start and at least 0.15 (58+ hits), not reachable by chance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import executor_workers as W
import pytest
import torch

from costmodel.plan_cost import PlanCosts
from costmodel.realloc_cost import realloc_cost
from planner.domain.augment import reallocations, transfers
from planner.domain.plan import Plan, save_plan
from runtime.executor.config import RunConfig
from runtime.executor.trace import build_trace
from runtime.executor.worker import FAIL_ENV, FAIL_EXIT_CODE
from runtime.launch import run_distributed
from runtime.optimizer import AdamConfig
from runtime.params import init_full_param

pytestmark = pytest.mark.slow

LR = 1e-4
ITERATIONS = 2
CONFIG = RunConfig(iterations=ITERATIONS, lr=LR, return_weights=True)
ADAM_STEPS = ITERATIONS * W.PPO_BATCH["ppo_minibatches"]  # one step per minibatch
# Kingma & Ba (2015) section 2.1: one Adam step moves an element by at most
# lr x max(1, (1 - beta1) / sqrt(1 - beta2)).
_ADAM = AdamConfig(lr=LR)
MAX_MOVE = ADAM_STEPS * LR * max(1.0, (1 - _ADAM.beta1) / (1 - _ADAM.beta2) ** 0.5)

# Why a plan's weights differ from the single process's at all: float sums run in another
# order (BLAS kernels differ between processors; a tp split sums its halves apart; dp sums
# gradients over replicas), so gradients differ by float noise. Adam's update m / sqrt(v) is
# about lr whatever the gradient's size, so where a gradient element is near zero that noise
# can flip the update's sign: up to 2 lr per step (runtime-notes). The element-wise maximum
# difference is therefore not small next to the movement (measured 4.8e-2 of a parameter's
# largest movement on this 2-core machine, 5.2e-2 on another), but such elements are few:
# the norm of the difference is at most 4.0e-4 of the norm of the movement (colocated plan,
# critic embedding). WEIGHT_REL is 25x that, and far below what a missed Adam step (~0.25)
# or a wrong shard (~1) gives.
WEIGHT_REL = 1e-2
# Parameters that barely move (the critic's value-head bias: 2e-5 in four steps) are held to
# a floor far below one Adam step of one element (~LR), so a lost update still shows.
WEIGHT_FLOOR = LR / 100
# Metrics are means over every token of the batch, so element-wise noise averages out:
# measured at most 1.7e-5 relative (kl, a mean of differences of near-equal log-probs) and
# 1.8e-7 absolute (actor_loss); the tolerances are 6x and 5x those.
METRIC_RTOL, METRIC_ATOL = 1e-4, 1e-6
PLAN = [sys.executable, "-m", "planner.cli.main", "run"]
REPO = Path(__file__).resolve().parents[2]
# `plan run` waits on gloo with a 30-minute timeout: a run that stopped when a rank died ends
# long before this, one that hangs does not. A hang guard, not a speed figure.
HANG_GUARD_S = 300


def _metrics(messages: list[dict]) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for m in messages:
        out.setdefault(m["iteration"], {}).update(m["metrics"])
    return out


def _full_weights(per_rank: list[dict], plan_index: int) -> dict[str, dict[str, torch.Tensor]]:
    full: dict[str, dict[str, torch.Tensor]] = {}
    for rank_result in per_rank:
        for role, shards in rank_result[plan_index]["weights"].items():
            for name, (ranges, tensor) in shards.items():
                shape = tuple(b for _, b in ranges)
                target = full.setdefault(role, {})
                if name not in target or target[name].shape < torch.Size(shape):
                    grown = torch.zeros(tuple(max(a, b) for a, b in zip(
                        shape, target[name].shape))) if name in target else torch.zeros(shape)
                    if name in target:
                        grown[tuple(slice(0, s) for s in target[name].shape)] = target[name]
                    target[name] = grown
                target[name][tuple(slice(a, b) for a, b in ranges)] = tensor
    return full


@pytest.fixture(scope="module")
def invariance_runs():
    plans = W.four_process_ppo_plans()
    multi = run_distributed(W.run_plans, 4, (W.as_mappings(plans.values()), CONFIG),
                            timeout_s=400)
    single = run_distributed(W.run_plans, 1, (W.as_mappings([W.single_process_ppo()]), CONFIG),
                             timeout_s=200)
    return plans, multi, single


def _initial_weight(plan: Plan, role: str, name: str) -> torch.Tensor:
    """The parameter before training: the executor seeds lm-head models with seed * 2 and
    value-head models with seed * 2 + 1 (runtime/executor/worker.py, _*_SEED_OFFSET)."""
    model = plan.workflow.models[role]
    offset = 1 if model.head == "value" else 0
    return init_full_param(model.spec, name, CONFIG.seed * 2 + offset)


def _metric_tolerance(value: float) -> float:
    """What pytest.approx(value, rel=METRIC_RTOL, abs=METRIC_ATOL) allows."""
    return max(METRIC_RTOL * abs(value), METRIC_ATOL)


def test_the_single_process_reference_is_trained_from_the_seeded_init(invariance_runs):
    """Not vacuous: the reference's metrics change between iterations by far more than their
    tolerance, and every trained parameter moved from its seeded initial value by more than
    WEIGHT_FLOOR yet no more than ADAM_STEPS steps can move it (so the initial value is the
    one the executor started from)."""
    _, _, single = invariance_runs
    reference = _metrics(single[0][0]["messages"])
    assert set(reference[ITERATIONS - 1]) == {"rewards_mean", "actor_loss", "critic_loss", "kl",
                                              "response_length_mean"}
    # a fixed gen_len: every response runs to it (runtime/executor/lengths.py)
    gen_len = W.single_process_ppo().workflow.batch.gen_len
    assert {it["response_length_mean"] for it in reference.values()} == {gen_len}
    for key, last in reference[ITERATIONS - 1].items():
        if key == "response_length_mean":
            continue
        first = reference[0][key]
        assert abs(last - first) > 100 * _metric_tolerance(last), (key, first, last)
    plan, weights = W.single_process_ppo(), _full_weights(single, 0)
    for role in plan.workflow.trained_models():
        for param, trained in weights[role].items():
            moved = (trained - _initial_weight(plan, role, param)).abs()
            assert WEIGHT_FLOOR < moved.norm() and moved.max() <= MAX_MOVE, (role, param)


def test_plans_give_the_single_process_metrics_and_weights(invariance_runs):
    plans, multi, single = invariance_runs
    reference = _metrics(single[0][0]["messages"])
    single_plan, ref_weights = W.single_process_ppo(), _full_weights(single, 0)
    for index, name in enumerate(plans):
        got = _metrics([m for r in multi for m in r[index]["messages"]])
        assert got.keys() == reference.keys(), name
        for iteration, expected in reference.items():
            assert got[iteration].keys() == expected.keys(), (name, iteration)
            for key, value in expected.items():
                assert got[iteration][key] == pytest.approx(value, rel=METRIC_RTOL,
                                                            abs=METRIC_ATOL), (name, key)
        weights = _full_weights(multi, index)
        assert weights.keys() == ref_weights.keys(), name
        for role, params in ref_weights.items():
            assert weights[role].keys() == params.keys(), (name, role)
            for param, reference_weight in params.items():
                # frozen models did not move: they must then be equal up to the floor
                moved = (reference_weight - _initial_weight(single_plan, role, param)).norm()
                diff = (weights[role][param] - reference_weight).norm()
                assert diff <= WEIGHT_REL * moved + WEIGHT_FLOOR, (name, role, param,
                                                                   float(diff), float(moved))


def _priced_move_bytes(plan: Plan) -> dict[str, float]:
    """Bytes the cost model puts on links for each reallocation the plan implies."""
    priced = {}
    for move in reallocations(plan.workflow, plan.executions):
        model = plan.workflow.models[move.model]
        cost = realloc_cost(model.spec, model.head, plan.executions[move.src_call],
                            plan.executions[move.dst_call], plan.cluster)
        priced[move.name] = cost.intra_node_bytes + cost.inter_node_bytes
    return priced


def _priced_transfer_bytes(plan: Plan) -> dict[str, float]:
    """Bytes the cost model puts on links for each data transfer the plan implies
    (PlanCosts.transfer: bytes per sequence from planner.domain.data_keys)."""
    costs = PlanCosts(plan.workflow, plan.cluster)
    priced = {}
    for t in transfers(plan.workflow, plan.executions):
        cost = costs.transfer(t.src_call, t.dst_call, plan.executions[t.src_call],
                              plan.executions[t.dst_call])
        priced[f"{t.src_call}->{t.dst_call}"] = cost.intra_node_bytes + cost.inter_node_bytes
    return priced


def test_reallocations_and_transfers_move_exactly_the_priced_bytes(invariance_runs):
    """The runtime counts the bytes each rank sends; the cost model prices the same
    schedules in the hardware's compute dtype (fp32 on cpu). Every reallocation appears in
    the trace, moving bytes or not; a transfer whose rows all stay on their devices has no
    step (and no trace entry), so it must be priced at zero bytes."""
    plans, multi, _ = invariance_runs
    nonzero_moves = nonzero_transfers = 0
    for index, name in enumerate(plans):
        plan = plans[name]
        trace = build_trace(plan, [m for r in multi for m in r[index]["messages"]], ITERATIONS)
        run_moves = {m["name"]: m["bytes"] for m in trace["reallocations"]}
        assert run_moves == _priced_move_bytes(plan), name
        run_transfers = {t["name"]: t["bytes"] for t in trace["transfers"]}
        priced_transfers = _priced_transfer_bytes(plan)
        assert run_transfers.keys() <= priced_transfers.keys(), name
        assert {n: run_transfers.get(n, 0) for n in priced_transfers} == priced_transfers, name
        nonzero_moves += sum(b > 0 for b in run_moves.values())
        nonzero_transfers += sum(b > 0 for b in run_transfers.values())
        assert {c["name"] for c in trace["calls"]} == set(W.CALLS)
        assert all(c["time_s"] > 0 and c["peak_memory_gib"] > 0 for c in trace["calls"])
    assert nonzero_moves and nonzero_transfers, "nothing moved: the comparison is vacuous"


def _plan_run(args: list[str], timeout: float, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(PLAN + args, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("algorithm,iterations,lr", [("ppo", 40, 3e-3), ("grpo", 25, 3e-3)])
def test_programmatic_reward_is_learned(tmp_path, algorithm, iterations, lr):
    plan_file = tmp_path / f"{algorithm}.yaml"
    save_plan(W.learning_plan(algorithm), plan_file)
    trace_file = tmp_path / "trace.json"
    done = _plan_run([str(plan_file), "--iterations", str(iterations), "--lr", str(lr),
                      "--reward", "programmatic:target_token=7", "--trace", str(trace_file)],
                     timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("rewards_mean") == iterations  # one progress line per iteration
    rewards = [it["metrics"]["rewards_mean"] for it in json.loads(trace_file.read_text())[
        "iterations"]]
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert end >= 0.15 and end >= 4 * start, rewards


def test_a_killed_rank_stops_the_run_and_is_named(tmp_path):
    plan_file = tmp_path / "ppo.yaml"
    save_plan(W.four_process_ppo_plans()["disjoint"], plan_file)
    done = _plan_run([str(plan_file), "--iterations", "3", "--trace", str(tmp_path / "t.json")],
                     timeout=HANG_GUARD_S, env={FAIL_ENV: "2:1/critic_inf"})
    assert done.returncode == 1
    assert f"rank 2 exited with code {FAIL_EXIT_CODE}" in done.stderr, done.stderr
    assert not (tmp_path / "t.json").exists()
