"""Bad input through the `plan` CLI: exit code 2 and one line naming the file, the field and
what is valid (design.md section 10). No tracebacks.

Each case builds its input files in tmp_path and returns the CLI arguments plus the words the
error line must contain: the source (file or flag), the field, and what is valid or wrong.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from foundation_support import SMALL_BATCH

TINY_PPO = {"algorithm": "ppo",
            "models": {role: "llama-tiny" for role in ("actor", "critic", "ref", "reward")},
            "batch": dict(SMALL_BATCH)}


@dataclass
class Expect:
    args: list
    source: str
    fields: list[str]
    valid: list[str]


def _write(path: Path, data=None, text: str | None = None) -> Path:
    path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
    return path


def _ppo(**changes) -> dict:
    data = copy.deepcopy(TINY_PPO)
    data.update(changes)
    return data


def _custom(calls: list[dict]) -> dict:
    return {"algorithm": "custom", "models": {"actor": "llama-tiny"}, "batch": dict(SMALL_BATCH),
            "calls": calls}


def _call(name: str, inputs: list[str], outputs: list[str]) -> dict:
    return {"name": name, "model": "actor", "kind": "inference", "inputs": inputs,
            "outputs": outputs}


def _set_execution(call: str, **fields) -> Callable[[dict], None]:
    """An edit of the plan data: set (or with None, remove) fields of one execution."""

    def edit(data: dict) -> None:
        entry = data["executions"][call]
        for key, value in fields.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value

    return edit


def _graph(path: Path) -> list:
    return ["graph", "--workflow", path]


# --- workflow files (plan graph --workflow FILE) -------------------------------------------

def malformed_yaml(tmp, plan_file):
    path = _write(tmp / "wf.yaml", text="algorithm: ppo\nmodels: {actor: [\nbatch: 3\n")
    return Expect(_graph(path), str(path), ["malformed YAML", "line 4"], ["expected"])


def not_a_mapping(tmp, plan_file):
    path = _write(tmp / "wf.yaml", text="- ppo\n- grpo\n")
    return Expect(_graph(path), str(path), ["(top level)"], ["expected a mapping"])


def unknown_top_level_key(tmp, plan_file):
    path = _write(tmp / "wf.yaml", _ppo(colour="red"))
    return Expect(_graph(path), str(path), ["colour", "unknown key"],
                  ["algorithm", "models", "batch", "calls"])


def unknown_nested_key(tmp, plan_file):
    path = _write(tmp / "wf.yaml", _ppo(batch={**SMALL_BATCH, "n_seq": 64}))
    return Expect(_graph(path), str(path), ["batch.n_seq", "unknown key"],
                  ["n_seqs", "prompt_len", "gen_len", "ppo_minibatches"])


def unknown_model_entry_key(tmp, plan_file):
    models = {**TINY_PPO["models"], "actor": {"model": "llama-tiny", "hed": "lm"}}
    path = _write(tmp / "wf.yaml", _ppo(models=models))
    return Expect(_graph(path), str(path), ["models.actor.hed", "unknown key"],
                  ["model", "head"])


def model_entry_wrong_type(tmp, plan_file):
    path = _write(tmp / "wf.yaml", _ppo(models={**TINY_PPO["models"], "actor": 7}))
    return Expect(_graph(path), str(path), ["models", "'actor'"],
                  ["model name", "{model: NAME, head: lm|value}"])


def unknown_model_name(tmp, plan_file):
    path = _write(tmp / "wf.yaml", _ppo(models={**TINY_PPO["models"], "actor": "llama-9b"}))
    return Expect(_graph(path), str(path), ["models.actor", "llama-9b"],
                  ["llama-7b", "llama3-8b", "qwen2.5-7b", "config.json"])


def bad_hf_config(tmp, plan_file):
    folder = tmp / "odd-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 100,
        "num_attention_heads": 3, "intermediate_size": 64, "vocab_size": 128,
        "max_position_embeddings": 64}))
    path = _write(tmp / "wf.yaml", _ppo(models={**TINY_PPO["models"], "actor": "odd-model"}))
    return Expect(_graph(path), str(path), ["models.actor", "config.json"],
                  ["hidden_size 100 is not divisible by num_heads 3"])


def unknown_workflow_name(tmp, plan_file):
    return Expect(["graph", "--workflow", "ppx"], "--workflow", ["'ppx'"],
                  ["ppo", "grpo", "remax", "dpo", "rloo", "workflow YAML file"])


def missing_batch_field(tmp, plan_file):
    path = _write(tmp / "wf.yaml", _ppo(batch={"n_seqs": 64, "prompt_len": 16}))
    return Expect(_graph(path), str(path), ["batch.gen_len"], ["required"])


def negative_n_seqs(tmp, plan_file):
    path = _write(tmp / "wf.yaml", _ppo(batch={**SMALL_BATCH, "n_seqs": -4}))
    return Expect(_graph(path), str(path), ["batch.n_seqs"], ["greater than or equal to 1"])


def odd_dpo_batch(tmp, plan_file):
    path = _write(tmp / "wf.yaml", {"algorithm": "dpo",
                                    "models": {"actor": "llama-tiny", "ref": "llama-tiny"},
                                    "batch": {"n_seqs": 3, "prompt_len": 8, "gen_len": 8}})
    return Expect(_graph(path), str(path), ["batch", "n_seqs 3"], ["must be even"])


def workflow_cycle(tmp, plan_file):
    path = _write(tmp / "wf.yaml", _custom([_call("a", ["prompts", "y"], ["x"]),
                                            _call("b", ["x"], ["y"])]))
    return Expect(_graph(path), str(path), ["calls", "a -> b"], ["cycle", "must be acyclic"])


def key_nobody_produces(tmp, plan_file):
    path = _write(tmp / "wf.yaml", _custom([_call("a", ["prompts", "ghost"], ["x"])]))
    return Expect(_graph(path), str(path), ["calls", "a", "'ghost'"],
                  ["produced keys: ['x']", "dataset inputs: ['prompts']"])


def duplicate_producers(tmp, plan_file):
    path = _write(tmp / "wf.yaml", _custom([_call("a", ["prompts"], ["x"]),
                                            _call("b", ["prompts"], ["x"])]))
    return Expect(_graph(path), str(path), ["calls", "b", "'x'", "produced by a"],
                  ["one producer"])


def custom_without_calls(tmp, plan_file):
    data = _custom([])
    del data["calls"]
    path = _write(tmp / "wf.yaml", data)
    return Expect(_graph(path), str(path), ["calls"], ["needs a list of calls"])


def role_used_by_no_call(tmp, plan_file):
    path = _write(tmp / "wf.yaml", _ppo(models={**TINY_PPO["models"], "judge": "llama-tiny"}))
    return Expect(_graph(path), str(path), ["models", "judge"],
                  ["valid roles: ['actor', 'critic', 'ref', 'reward']"])


def workflow_file_not_found(tmp, plan_file):
    path = tmp / "missing.yaml"
    return Expect(_graph(path), str(path), [], ["file not found"])


def unsupported_picture_type(tmp, plan_file):
    out = tmp / "graph.gif"
    return Expect(["graph", "--workflow", "ppo", "--out", out], "--out", ["graph.gif"],
                  [".png", ".svg", ".pdf"])


def unwritable_picture_path(tmp, plan_file):
    blocker = tmp / "not-a-folder"
    blocker.write_text("a file where a folder is needed")
    out = blocker / "graph.png"
    return Expect(["graph", "--workflow", "ppo", "--out", out], "--out", [str(out)],
                  ["cannot write"])


# --- plan files (plan check / plan show) ----------------------------------------------------

def degrees_do_not_multiply(tmp, plan_file):
    path = plan_file(_set_execution("actor_train", dp=2, tp=2, pp=1))
    return Expect(["check", path], str(path), ["executions.actor_train"],
                  ["dp 2 x tp 2 x pp 1 = 4", "mesh has 8 devices"])


def tp_not_dividing_heads(tmp, plan_file):
    path = plan_file(_set_execution("actor_train", dp=1, tp=8, pp=1), model="qwen2.5-7b")
    return Expect(["check", path], str(path), ["executions.actor_train", "tp 8"],
                  ["does not evenly split", "28 attention heads"])


def tp_spanning_nodes(tmp, plan_file):
    path = plan_file(_set_execution("actor_train", dp=1, tp=16, pp=1), model="llama-7b",
                     cluster="h100x16")
    return Expect(["check", path], str(path), ["executions.actor_train", "tp 16"],
                  ["span nodes", "inside one node"])


def pp_above_layer_count(tmp, plan_file):
    path = plan_file(_set_execution("actor_train", dp=1, tp=1, pp=8))
    return Expect(["check", path], str(path), ["executions.actor_train", "pp 8"],
                  ["4 layers of llama-tiny"])


def device_outside_cluster(tmp, plan_file):
    path = plan_file(_set_execution("actor_gen", mesh=None, devices=[99], dp=1))
    return Expect(["check", path], str(path), ["executions.actor_gen", "[99]"],
                  ["devices 0-7"])


def node_outside_cluster(tmp, plan_file):
    path = plan_file(_set_execution("actor_gen", mesh="5:0", devices=None, dp=1))
    return Expect(["check", path], str(path), ["executions.actor_gen.mesh", "'5:0'"],
                  ["nodes 0-0"])


def non_aligned_mesh_slice(tmp, plan_file):
    path = plan_file(_set_execution("actor_gen", mesh=None, devices=[1, 2], dp=2))
    return Expect(["check", path], str(path), ["executions.actor_gen"],
                  ["power-of-two size aligned", "from slot 1"])


def empty_device_list(tmp, plan_file):
    path = plan_file(_set_execution("actor_gen", mesh=None, devices=[], dp=1))
    return Expect(["check", path], str(path), ["executions.actor_gen.devices"],
                  ["at least 1 item"])


def malformed_mesh_text(tmp, plan_file):
    path = plan_file(_set_execution("actor_gen", mesh="zero", devices=None))
    return Expect(["show", path], str(path), ["executions.actor_gen.mesh", "'zero'"],
                  ["NODE:SLOT", "e.g. 0:0-3"])


def mesh_and_devices_disagree(tmp, plan_file):
    path = plan_file(_set_execution("actor_gen", mesh="0:0-3"))
    return Expect(["check", path], str(path), ["executions.actor_gen", "'0:0-3'"],
                  ["[0, 1, 2, 3]", "devices says"])


def plan_for_another_cluster(tmp, plan_file):
    path = plan_file()
    return Expect(["check", path, "--cluster", "h100x16"], str(path), ["cluster"],
                  ["h100x8", "h100x16", "re-plan"])


def wrong_schema_version(tmp, plan_file):
    path = plan_file(lambda data: data.update(schema_version=2))
    return Expect(["check", path], str(path), ["schema_version", "got 2"],
                  ["reads schema_version 1"])


def missing_execution(tmp, plan_file):
    path = plan_file(lambda data: data["executions"].pop("critic_train"))
    return Expect(["check", path], str(path), ["executions"],
                  ["no execution for call(s) ['critic_train']"])


def execution_for_unknown_call(tmp, plan_file):
    path = plan_file(lambda data: data["executions"].update(
        judge_inf=dict(data["executions"]["ref_inf"])))
    return Expect(["show", path], str(path), ["executions", "judge_inf"],
                  ["valid:", "actor_gen", "critic_train"])


def unknown_key_in_plan_model_spec(tmp, plan_file):
    path = plan_file(lambda data: data["workflow"]["models"]["actor"]["spec"].update(heads=3))
    return Expect(["check", path], str(path), ["workflow.models.actor.spec.heads", "unknown key"],
                  ["num_heads", "num_kv_heads", "hidden_size"])


def plan_file_not_found(tmp, plan_file):
    path = tmp / "no-plan.yaml"
    return Expect(["show", path], str(path), [], ["file not found"])


# --- cluster files (plan check PLAN --cluster FILE) -----------------------------------------

def unknown_device_name(tmp, plan_file):
    cluster = _write(tmp / "cluster.yaml", {"nodes": 1, "devices_per_node": 8, "device": "h900"})
    return Expect(["check", plan_file(), "--cluster", cluster], str(cluster),
                  ["device", "'h900'"], ["h100-sxm-80gb", "a100-sxm-80gb", "cpu"])


def unknown_device_in_node_group(tmp, plan_file):
    cluster = _write(tmp / "cluster.yaml", {"node_groups": [
        {"nodes": 1, "devices_per_node": 8, "device": "h100-sxm-80gb"},
        {"nodes": 1, "devices_per_node": 8, "device": "b300"}]})
    return Expect(["check", plan_file(), "--cluster", cluster], str(cluster),
                  ["node_groups", "'b300'"], ["h100-sxm-80gb", "a100-sxm-80gb"])


def cluster_both_forms(tmp, plan_file):
    cluster = _write(tmp / "cluster.yaml", {
        "nodes": 1, "devices_per_node": 8, "device": "h100-sxm-80gb",
        "node_groups": [{"nodes": 1, "devices_per_node": 8, "device": "h100-sxm-80gb"}]})
    return Expect(["check", plan_file(), "--cluster", cluster], str(cluster),
                  ["node_groups", "nodes/devices_per_node/device"], ["not both"])


def cluster_unknown_key(tmp, plan_file):
    cluster = _write(tmp / "cluster.yaml", {"nodes": 1, "devices_per_node": 8,
                                            "device": "h100-sxm-80gb", "gpus": 8})
    return Expect(["check", plan_file(), "--cluster", cluster], str(cluster),
                  ["gpus", "unknown key"], ["devices_per_node", "node_groups"])


def unknown_cluster_name(tmp, plan_file):
    return Expect(["check", plan_file(), "--cluster", "h100x9"], "--cluster", ["'h100x9'"],
                  ["h100x8", "h100x16", "cluster YAML file"])


def cluster_file_not_found(tmp, plan_file):
    cluster = tmp / "nowhere.yaml"
    return Expect(["check", plan_file(), "--cluster", cluster], str(cluster), [],
                  ["file not found"])


CASES = [
    malformed_yaml, not_a_mapping, unknown_top_level_key, unknown_nested_key,
    unknown_model_entry_key, model_entry_wrong_type, unknown_model_name, bad_hf_config,
    unknown_workflow_name, missing_batch_field, negative_n_seqs, odd_dpo_batch, workflow_cycle,
    key_nobody_produces, duplicate_producers, custom_without_calls, role_used_by_no_call,
    workflow_file_not_found, unsupported_picture_type, unwritable_picture_path,
    degrees_do_not_multiply, tp_not_dividing_heads, tp_spanning_nodes, pp_above_layer_count,
    device_outside_cluster, node_outside_cluster, non_aligned_mesh_slice, empty_device_list,
    malformed_mesh_text, mesh_and_devices_disagree, plan_for_another_cluster,
    wrong_schema_version, missing_execution, execution_for_unknown_call,
    unknown_key_in_plan_model_spec, plan_file_not_found,
    unknown_device_name, unknown_device_in_node_group, cluster_both_forms, cluster_unknown_key,
    unknown_cluster_name, cluster_file_not_found,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(case, tmp_path, plan_file, cli):
    expect = case(tmp_path, plan_file)
    code, out, err = cli(*expect.args)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    line = err.rstrip("\n")
    command = str(expect.args[0])
    assert line.startswith(f"plan {command}: error: "), line
    assert expect.source in line, (expect.source, line)
    for word in expect.fields + expect.valid:
        assert word in line, (word, line)
