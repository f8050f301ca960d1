"""Search over staleness (workflow max_staleness k >= 1): the space offers continuous decode
batching only then, the asynchronous baselines split the devices as described, and the
search returns the fastest plan over s = 0..k with its staleness in the plan file."""

from __future__ import annotations

import json

import pytest
import yaml

from costmodel.simulator import estimate_plan
from planner.cli.main import main
from planner.cli.plan_output import priced_plan
from planner.domain.cluster import cluster_preset
from planner.domain.plan import load_plan, save_plan
from planner.domain.workflow_file import builtin_workflow
from planner.search.baselines import ASYNC_BASELINES, async_split, baseline_meshes
from planner.search.mcmc import MCMCSettings
from planner.search.pipeline import search
from planner.search.space import candidate_executions

SMALL = {"n_seqs": 64, "prompt_len": 16, "gen_len": 16, "ppo_minibatches": 2,
         "group_size": 8}
QUICK = MCMCSettings(seed=0, temperatures=4, chains_per_temperature=16, plateau_steps=200,
                     time_limit_s=20.0)


def _grpo(k: int):
    return builtin_workflow("grpo", model="llama-tiny", batch=SMALL, max_staleness=k)


def test_continuous_candidates_only_with_a_staleness_bound():
    """k = 0: static decoding only (today's space); k >= 1: each generate execution with
    more micro-batches than stages also as continuous, other calls unchanged."""
    cluster = cluster_preset("h100x8")
    by_k = {}
    for k in (0, 1):
        workflow = _grpo(k)
        by_k[k] = {name: candidate_executions(workflow.call_by_name[name],
                                              workflow.models[workflow.call_by_name[name]
                                                              .model].spec,
                                              cluster, workflow.batch, max_staleness=k)
                   for name in workflow.call_order}
    assert {e.decode_batching for e in by_k[0]["actor_gen"]} == {"static"}
    offered = by_k[1]["actor_gen"]
    continuous = [e for e in offered if e.decode_batching == "continuous"]
    assert continuous and all(e.micro_batches > e.pp for e in continuous)
    assert [e for e in offered if e.decode_batching == "static"] == by_k[0]["actor_gen"]
    assert {e.model_copy(update={"decode_batching": "static"}) for e in continuous} == \
        {e for e in by_k[0]["actor_gen"] if e.micro_batches > e.pp}
    for name in ("ref_inf", "rew_inf", "actor_train"):
        assert by_k[1][name] == by_k[0][name]


@pytest.mark.parametrize("name,split_75,split_50", [
    ("cpu4", None, (2, 2)), ("h100x8", None, (4, 4)), ("h100x16", (8, 8), (8, 8)),
    ("h100x64", (48, 16), (32, 32))])
def test_async_splits_round_to_whole_nodes_or_halves(name, split_75, split_50):
    cluster = cluster_preset(name)
    for share, expected in ((0.75, split_75), (0.5, split_50)):
        split = async_split(cluster, share)
        if expected is None:
            assert split is None
            continue
        generation, training = split
        assert (len(generation), len(training)) == expected
        assert generation + training == tuple(range(cluster.num_devices))


def test_baseline_meshes_add_the_splits_only_with_a_bound():
    cluster = cluster_preset("h100x64")
    synchronous = baseline_meshes(_grpo(0), cluster)
    bounded = baseline_meshes(_grpo(1), cluster)
    assert bounded[:len(synchronous)] == synchronous
    assert tuple(range(48)) in bounded and tuple(range(48, 64)) in bounded
    assert tuple(range(48)) not in synchronous


def test_staleness_search_returns_the_fastest_plan_over_every_staleness(tmp_path):
    """k = 1 on 4 CPU devices: one run per staleness, the best no slower than the best of
    s = 0 and than every baseline, the async baseline placed as described and priced at
    staleness 1, and the saved plan re-estimates to the same steady state."""
    workflow, cluster = _grpo(1), cluster_preset("cpu4")
    outcome = search(workflow, cluster, QUICK)
    assert set(outcome.chains) == {0, 1} and outcome.best is not None
    best_s = outcome.best.estimate.iteration_s
    assert 0 in outcome.best_by_staleness
    assert best_s <= min(p.estimate.iteration_s for p in outcome.best_by_staleness.values())
    assert outcome.best_by_staleness[outcome.best.staleness] is outcome.best
    assert set(ASYNC_BASELINES) <= set(outcome.baselines)
    assert outcome.baselines["async-75/25"] is None          # one node: halves only
    split = outcome.baselines["async-50/50"]
    assert split is not None and split.staleness == 1
    assert outcome.baseline_staleness["async-50/50"] == 1
    assert outcome.baseline_staleness["colocated"] == 0
    for name, execution in split.executions.items():
        assert execution.devices == ((0, 1) if name == "actor_gen" else (2, 3))
    for plan in outcome.baselines.values():
        if plan is not None and plan.estimate.feasible:
            assert best_s <= plan.estimate.iteration_s + 1e-12
    path = tmp_path / "p.yaml"
    save_plan(priced_plan(workflow, cluster, outcome.best.executions, outcome.best.estimate,
                          "tests"), path)
    loaded = load_plan(path)
    assert loaded.staleness == outcome.best.staleness
    assert ("staleness" in yaml.safe_load(path.read_text())) == (loaded.staleness > 0)
    assert estimate_plan(loaded).iteration_s == pytest.approx(best_s, rel=1e-12)


def test_synchronous_search_has_no_staleness_runs():
    outcome = search(_grpo(0), cluster_preset("cpu4"), QUICK)
    assert outcome.chains == {} and outcome.best_by_staleness == {}
    assert outcome.best.staleness == 0
    assert not set(ASYNC_BASELINES) & set(outcome.baselines)


def test_plan_search_prints_staleness_modes_and_async_baselines(tmp_path, capsys):
    workflow = tmp_path / "grpo_async.yaml"
    workflow.write_text(yaml.safe_dump({
        "algorithm": "grpo", "max_staleness": 1,
        "models": {"actor": "llama-tiny", "ref": "llama-tiny", "reward": "llama-tiny"},
        "batch": SMALL}))
    out = tmp_path / "p.yaml"
    assert main(["search", "--workflow", str(workflow), "--cluster", "cpu4",
                 "--time-limit", "60", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    plan = load_plan(out)
    assert f"search: staleness {plan.staleness} chosen (max_staleness 1); best plan per " \
           f"staleness: s=0: " in text
    mode = plan.executions["actor_gen"].decode_batching
    assert f"search: decode batching: actor_gen {mode}" in text
    assert "async-50/50" in text and "(staleness 1)" in text
    assert "async-75/25        not built: the split makes no two allowed meshes" in text
    if plan.staleness:
        assert "asynchronous: staleness" in text and "split of actor" in text
        assert "is of synchronous plans" in text or "lower bound" not in text
    assert main(["search", "--workflow", str(workflow), "--cluster", "cpu4",
                 "--time-limit", "60", "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["search"]["staleness"] == load_plan(out).staleness
    assert set(data["search"]["iteration_s_by_staleness"]) == {"0", "1"}
    assert data["search"]["baselines_staleness"]["async-50/50"] == 1
    assert data["decode_batching"] == {"actor_gen": load_plan(out).executions["actor_gen"]
                                       .decode_batching}
