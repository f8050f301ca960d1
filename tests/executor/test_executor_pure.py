"""Pure pieces of the executor: step order, model homes, algorithms, data, inputs, CLI errors."""

from __future__ import annotations

import subprocess
import sys

import executor_workers as W
import pytest
import torch

from planner.domain.errors import InputError
from planner.domain.plan import save_plan
from runtime.algorithms import dpo, grpo, ppo, rloo
from runtime.executor.calls import split_rows
from runtime.executor.config import RunConfig, parse_reward
from runtime.executor.data import DataStore
from runtime.executor.dataset import Dataset, load_records
from runtime.executor.launcher import runnable_problem
from runtime.executor.steps import (
    CallStep,
    ReallocStep,
    TransferStep,
    build_steps,
    initial_placements,
    model_homes,
)


def test_steps_follow_call_order_with_reallocations_and_transfers_before_their_call():
    plan = W.four_process_ppo_plans()["overlap"]
    steps = build_steps(plan.workflow, plan.executions, 2, plan.cluster.device_node)
    names = [s.name for s in steps]
    calls = [s.call for s in steps if isinstance(s, CallStep)]
    assert calls == list(plan.workflow.call_order) * 2
    wrap = names.index("0/realloc:actor:actor_train->actor_gen")  # runs in iteration 1
    assert names[wrap + 1:].index("1/actor_gen") < names[wrap + 1:].index("1/rew_inf")
    assert "0/realloc:actor:actor_train->actor_gen" not in names[:names.index("0/actor_train")]
    for i, step in enumerate(steps):
        if isinstance(step, (ReallocStep, TransferStep)):
            following = next(s for s in steps[i:] if isinstance(s, CallStep))
            assert following.call == (step.move.dst_call if isinstance(step, ReallocStep)
                                       else step.dst_call)


def test_homes_are_train_placements_and_single_placement_models_are_never_copied():
    plan = W.four_process_ppo_plans()["overlap"]
    ex = plan.executions
    homes = model_homes(plan.workflow, ex)
    assert homes["actor"] == ex["actor_train"].placement
    assert homes["ref"] == ex["ref_inf"].placement
    starts = initial_placements(plan.workflow, ex)
    assert starts["actor"] == [ex["actor_train"].placement, ex["actor_gen"].placement]
    assert starts["ref"] == [ex["ref_inf"].placement]
    steps = build_steps(plan.workflow, ex, 3, plan.cluster.device_node)
    moved = {s.move.model for s in steps if isinstance(s, ReallocStep)}
    assert moved == {"actor", "critic"}  # ref and reward have one placement each


def test_gae_matches_a_direct_computation():
    rewards = torch.tensor([[0.0, 0.5, 1.0]])
    values = torch.tensor([[0.2, 0.1, 0.4]])
    mask = torch.ones(1, 3)
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.4
    d1 = 0.5 + 0.4 - 0.1
    d0 = 0.0 + 0.1 - 0.2
    expected = torch.tensor([[d0 + 0.5 * (d1 + 0.5 * d2), d1 + 0.5 * d2, d2]])
    assert torch.allclose(adv, expected) and torch.allclose(ret, adv + values)


def test_group_baselines():
    r = torch.tensor([1.0, 0.0, 3.0, 3.0])
    assert torch.allclose(grpo.group_advantages(r, 2), torch.tensor([1.0, -1.0, 0.0, 0.0]),
                          atol=1e-5)
    assert torch.allclose(rloo.leave_one_out(torch.tensor([1.0, 2.0, 6.0]), 3),
                          torch.tensor([-3.0, -1.5, 4.5]))
    margins = dpo.pair_margins(torch.tensor([[1.0], [0.0]]), torch.zeros(2, 1), torch.ones(2, 1))
    assert margins.tolist() == [1.0]


def test_split_rows_keeps_units_whole_and_covers_every_row():
    parts = split_rows(8, 3, unit=2)
    assert torch.cat(parts).tolist() == list(range(8))
    assert all(len(p) % 2 == 0 and len(p) > 0 for p in parts)


def test_store_assembles_rows_from_segments():
    store = DataStore()
    store.put(0, "rewards", 4, torch.tensor([4.0, 5.0]))
    store.put(0, "rewards", 2, torch.tensor([2.0, 3.0]))
    assert store.rows(0, "rewards", 3, 6).tolist() == [3.0, 4.0, 5.0]


def test_prompts_file_is_padded_grouped_and_validated(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": [5, 6]}\n{"prompt": [1, 2, 3, 4, 5]}\n')
    batch = W.LEARNING_BATCH["grpo"]
    from planner.domain.workflow import BatchSpec
    data = Dataset(BatchSpec(**batch), 32, 0, False, good)
    rows = data.prompts(0)
    assert rows.ids.shape == (16, 4) and rows.ids[0].tolist() == [0, 0, 5, 6]
    assert rows.ids[4].tolist() == [2, 3, 4, 5] and torch.equal(rows.ids[0], rows.ids[3])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": [5, 99]}\n')
    with pytest.raises(InputError, match=r"bad.jsonl: line 1: prompt"):
        load_records(bad, False, 32)


def test_bad_settings_are_one_line_input_errors():
    with pytest.raises(InputError, match="--reward"):
        parse_reward("programmatic:7")
    assert parse_reward("programmatic:target_token=7").target_token == 7
    with pytest.raises(InputError, match="--iterations"):
        RunConfig(iterations=0)
    batch = {**W.PPO_BATCH, "n_seqs": 12}
    plan = W.make_plan("cpu4", {c: W.ex(range(4), dp=4) for c in W.CALLS}, batch=batch)
    assert "divisible by dp 4 x ppo_minibatches 2" in runnable_problem(plan, RunConfig())


def test_plan_run_bad_input_exits_2_with_one_line(tmp_path):
    plan_file = tmp_path / "p.yaml"
    save_plan(W.learning_plan("ppo"), plan_file)
    done = subprocess.run([sys.executable, "-m", "planner.cli.main", "run", str(plan_file),
                           "--reward", "nonsense"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--reward" in done.stderr
