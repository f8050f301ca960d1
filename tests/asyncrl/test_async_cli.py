"""`plan show` and `plan estimate` of an asynchronous plan state its staleness and split."""

from __future__ import annotations

import json

from planner.cli.main import main
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.plan import Plan, Provenance, save_plan
from planner.domain.workflow_file import builtin_workflow

SMALL = {"n_seqs": 64, "prompt_len": 16, "gen_len": 16, "ppo_minibatches": 2,
         "group_size": 8}


def _save(tmp_path, staleness):
    workflow = builtin_workflow("grpo", model="llama-tiny", batch=SMALL, max_staleness=1)
    gen, rest = (Execution(devices=(0, 1, 2, 3), dp=4, tp=1, pp=1),
                 Execution(devices=(4, 5, 6, 7), dp=4, tp=1, pp=1))
    executions = {c: gen if c == "actor_gen" else rest for c in workflow.call_order}
    plan = Plan(workflow=workflow, cluster=cluster_preset("h100x8"), executions=executions,
                provenance=Provenance(created_by="tests/asyncrl"), staleness=staleness)
    path = tmp_path / f"s{staleness}.yaml"
    save_plan(plan, path)
    return path


def test_show_and_estimate_state_staleness_and_split(tmp_path, capsys):
    path = _save(tmp_path, 1)
    assert main(["show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "asynchronous: staleness 1 (workflow max_staleness 1)" in shown
    assert "staleness reached 1" in shown
    assert ("split of actor: generation (rollout copy) on 0:0-3 (4 devices), training "
            "(training copy) on 0:4-7 (4 devices), disjoint; weight push") in shown
    assert "reallocations: 0\n" in shown   # the actor's two chains never cross
    assert main(["estimate", str(path)]) == 0
    text = capsys.readouterr().out
    assert "asynchronous: staleness 1" in text and "push:actor:actor_train->actor_gen" in text
    assert main(["estimate", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["staleness"] == 1 and data["staleness_reached"] == 1
    assert data["split"][0]["generation_devices"] == [0, 1, 2, 3]
    assert data["split"][0]["training_devices"] == [4, 5, 6, 7]
    assert [p["name"] for p in data["weight_pushes"]] == ["push:actor:actor_train->actor_gen"]


def test_synchronous_output_says_nothing_new(tmp_path, capsys):
    path = _save(tmp_path, 0)
    assert main(["show", str(path)]) == 0
    assert "asynchronous" not in capsys.readouterr().out
    assert main(["estimate", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert not {"staleness", "split", "weight_pushes"} & set(data)


def test_estimate_refuses_too_few_iterations(tmp_path, capsys):
    path = _save(tmp_path, 1)
    assert main(["estimate", "--iterations", "2", str(path)]) == 2
    assert "--iterations: got 2; a plan of staleness 1 needs at least 3" in \
        capsys.readouterr().err


def test_async_baselines_from_the_command_line(tmp_path, capsys):
    """`plan baseline --kind async-50/50` builds AReaL's split at the workflow's
    max_staleness: generation on the first half of the devices, the rest on the other, and
    the plan file keeps the staleness; a synchronous workflow gets one line and exit 2."""
    workflow = tmp_path / "grpo.yaml"
    workflow.write_text("algorithm: grpo\nmodels: {actor: llama-tiny, ref: llama-tiny, "
                        "reward: llama-tiny}\nbatch: {n_seqs: 64, prompt_len: 16, gen_len: "
                        "{mean: 8, max: 64}, ppo_minibatches: 2, group_size: 8}\n"
                        "max_staleness: 1\n")
    out = tmp_path / "b.yaml"
    assert main(["baseline", "--kind", "async-50/50", "--workflow", str(workflow),
                 "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["baseline"] == "async-50/50" and data["staleness"] == 1
    assert data["split"][0]["generation_devices"] == [0, 1, 2, 3]
    assert data["split"][0]["training_devices"] == [4, 5, 6, 7]
    from planner.domain.plan import load_plan
    assert load_plan(out).staleness == 1
    # 75/25 of one node's 8 devices is no aligned split
    assert main(["baseline", "--kind", "async-75/25", "--workflow", str(workflow)]) == 1
    assert "no such plan fits" in capsys.readouterr().out
    assert main(["baseline", "--kind", "async-50/50", "--workflow", "grpo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_staleness >= 1" in err
