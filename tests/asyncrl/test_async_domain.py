"""Staleness in the domain: workflow and plan fields, refusals, and the augmented graph.

s = 0 must be today's graph exactly (the golden snapshot of async_support); s >= 1 splits
the rollout model's calls into two chains joined only by weight pushes (augment.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
import yaml
from async_support import (
    GOLDEN,
    H100X8_EXECUTIONS,
    case_executions,
    snapshot_cases,
    sync_snapshot,
)

from planner.domain.augment import (
    WeightPush,
    augmented_graph,
    call_node,
    model_call_pairs,
    rollout_models,
    scheduled_nodes,
    weight_pushes,
)
from planner.domain.cluster import cluster_preset
from planner.domain.errors import InputError
from planner.domain.layout import Execution
from planner.domain.plan import Plan, Provenance, load_plan, plan_to_mapping, save_plan
from planner.domain.workflow import MAX_STALENESS
from planner.domain.workflow_file import builtin_workflow, load_workflow_file

ASYNC_ALGORITHMS = ("ppo", "grpo", "remax", "rloo")
ALL_DEVICES = H100X8_EXECUTIONS[0]


@pytest.mark.parametrize("case,algorithm,choice", snapshot_cases(),
                         ids=[c[0] for c in snapshot_cases()])
def test_staleness_zero_is_the_synchronous_graph(case, algorithm, choice):
    golden = json.loads(GOLDEN.read_text())[case]
    executions = case_executions(algorithm, choice)
    assert sync_snapshot(builtin_workflow(algorithm), executions) == golden
    assert sync_snapshot(builtin_workflow(algorithm), executions, staleness=0) == golden
    if algorithm != "dpo":  # a bound alone changes nothing while the plan stays at s = 0
        bounded = builtin_workflow(algorithm, max_staleness=MAX_STALENESS)
        assert sync_snapshot(bounded, executions) == golden


def test_rollout_models_of_the_builtins():
    assert {a: rollout_models(builtin_workflow(a)) for a in ("ppo", "grpo", "remax", "dpo",
                                                              "rloo")} == {
        "ppo": ("actor",), "grpo": ("actor",), "remax": ("actor",), "dpo": (),
        "rloo": ("actor",)}


def test_pairs_split_into_a_rollout_and_a_training_chain():
    remax = builtin_workflow("remax", max_staleness=1)
    actor = [p for p in model_call_pairs(remax, 1) if p[0] == "actor"]
    assert actor == [("actor", "actor_gen", "actor_greedy_gen", False),
                     ("actor", "actor_train", "actor_train", True)]
    assert [p for p in model_call_pairs(remax, 1) if p[0] != "actor"] == \
        [p for p in model_call_pairs(remax) if p[0] != "actor"]
    assert weight_pushes(remax, 1) == [WeightPush("actor", "actor_train", "actor_gen")]
    assert weight_pushes(remax, 0) == []
    assert WeightPush("actor", "actor_train", "actor_gen").name == \
        "push:actor:actor_train->actor_gen"


def _disjoint(workflow) -> dict[str, Execution]:
    """Generation on devices 0-3, everything else on 4-7."""
    gen, rest = H100X8_EXECUTIONS[3], H100X8_EXECUTIONS[4]
    return {c: gen if workflow.call_by_name[c].kind == "generate" else rest
            for c in workflow.call_order}


@pytest.mark.parametrize("algorithm", ASYNC_ALGORITHMS)
@pytest.mark.parametrize("staleness", [1, 2, 3])
def test_pushes_edges_and_priority_order(algorithm, staleness):
    workflow = builtin_workflow(algorithm, max_staleness=staleness)
    executions = _disjoint(workflow)
    k = 2 * staleness + 3
    graph = augmented_graph(workflow, executions, k, staleness)
    (push,) = weight_pushes(workflow, staleness)
    gens = [c for c in workflow.calls_of_model("actor")
            if workflow.call_by_name[c].kind == "generate"]
    pushes = sorted(n for n, kind in graph.nodes(data="kind") if kind == "push")
    assert pushes == sorted(f"{j}/{push.name}" for j in range(k - staleness - 1))
    for j in range(k - staleness - 1):
        node = f"{j}/{push.name}"
        assert graph.nodes[node]["devices"] == tuple(range(8))
        assert dict(graph.pred[node]) == {
            call_node(j, "actor_train"): {"kind": "version"},
            call_node(j + staleness, gens[-1]): {"kind": "order"}}
        assert dict(graph.succ[node]) == {call_node(j + staleness + 1, gens[0]):
                                          {"kind": "order"}}
    for i in range(1, k):
        # generation never waits for the latest training, only for the one s + 1 back
        assert not nx.has_path(graph, call_node(i - 1, "actor_train"), call_node(i, gens[0]))
        if i > staleness:
            assert nx.has_path(graph, call_node(i - staleness - 1, "actor_train"),
                               call_node(i, gens[0]))
    order = [n.name for n in scheduled_nodes(workflow, executions, k, staleness)]
    assert sorted(order) == sorted(graph.nodes)
    position = {name: p for p, name in enumerate(order)}
    for u, v in graph.edges:
        assert position[u] < position[v], (u, v)
    for j in range(k - staleness - 1):  # right after the last generate call it waits for
        assert position[f"{j}/{push.name}"] == position[call_node(j + staleness, gens[-1])] + 1


def _plan(workflow, executions, staleness, cluster="h100x8") -> Plan:
    return Plan(workflow=workflow, cluster=cluster_preset(cluster), executions=executions,
                provenance=Provenance(created_by="tests/asyncrl"), staleness=staleness)


def test_plan_file_round_trip_with_staleness(tmp_path: Path):
    workflow = builtin_workflow("grpo", max_staleness=2)
    plan = _plan(workflow, _disjoint(workflow), 1)
    assert plan.problems() == []
    path = tmp_path / "async.yaml"
    save_plan(plan, path)
    data = yaml.safe_load(path.read_text())
    assert data["staleness"] == 1 and data["workflow"]["max_staleness"] == 2
    assert data["augmented"]["weight_pushes"] == [
        {"model": "actor", "from": "actor_train", "to": "actor_gen"}]
    loaded = load_plan(path)
    assert loaded.staleness == 1 and loaded.workflow.max_staleness == 2
    assert plan_to_mapping(loaded) == plan_to_mapping(plan)
    save_plan(loaded, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == path.read_text()


def test_synchronous_plan_file_has_no_staleness_keys():
    plan = _plan(builtin_workflow("grpo"), _disjoint(builtin_workflow("grpo")), 0)
    data = plan_to_mapping(plan)
    assert "staleness" not in data and "max_staleness" not in data["workflow"]
    assert "weight_pushes" not in data["augmented"]


def _write_plan(tmp_path: Path, edit) -> Path:
    workflow = builtin_workflow("remax", max_staleness=1)
    data = plan_to_mapping(_plan(workflow, {c: ALL_DEVICES for c in workflow.call_order}, 1))
    edit(data)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(staleness=2), "staleness: got 2; valid: an integer from 0 to the "
                                      "workflow's max_staleness 1"),
    (lambda d: d.update(staleness=-1), "staleness: got -1"),
    (lambda d: d.update(staleness="one"), "staleness: Input should be a valid integer"),
    (lambda d: d["executions"]["actor_greedy_gen"].update(
        mesh="0:0-3", devices=[0, 1, 2, 3], dp=4),
     "staleness: 1 keeps one rollout copy of actor, so its generate calls need one "
     "placement; actor_greedy_gen differ(s) from actor_gen"),
    (lambda d: d["workflow"].update(max_staleness=9), "workflow.max_staleness: got 9"),
])
def test_plan_refusals_name_the_file_and_field(tmp_path, edit, message):
    path = _write_plan(tmp_path, edit)
    with pytest.raises(InputError) as err:
        load_plan(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


@pytest.mark.parametrize("body,message", [
    ("algorithm: grpo\nmax_staleness: -1\n", "max_staleness: got -1; valid: an integer "
                                              "from 0 (synchronous) to 8"),
    (f"algorithm: grpo\nmax_staleness: {MAX_STALENESS + 1}\n", f"got {MAX_STALENESS + 1}"),
    ("algorithm: grpo\nmax_staleness: yes\n", "max_staleness: Input should be a valid "
                                              "integer"),
    ("algorithm: dpo\nmax_staleness: 1\n", "max_staleness: got 1, but the dpo workflow has "
                                           "no rollout model"),
])
def test_workflow_file_refusals(tmp_path, body, message):
    roles = "models: {actor: llama-tiny, ref: llama-tiny"
    roles += "}\n" if "dpo" in body else ", reward: llama-tiny}\n"
    path = tmp_path / "wf.yaml"
    path.write_text(body + roles + "batch: {n_seqs: 64, prompt_len: 16, gen_len: 16, "
                                   "group_size: 8}\n")
    with pytest.raises(InputError) as err:
        load_workflow_file(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_workflow_file_reads_max_staleness(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text("algorithm: grpo\nmax_staleness: 2\nmodels: {actor: llama-tiny, "
                    "ref: llama-tiny, reward: llama-tiny}\nbatch: {n_seqs: 64, prompt_len: "
                    "16, gen_len: 16, group_size: 8}\n")
    assert load_workflow_file(path).max_staleness == 2
