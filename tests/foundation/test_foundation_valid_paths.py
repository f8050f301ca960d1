"""Valid inputs: built-in workflows' graphs, pictures, show/check on a plan, user workflow files,
HF config directories, cluster files and presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from foundation_support import SMALL_BATCH, make_plan

from planner.cli.main import main
from planner.domain.cluster import PRESETS as CLUSTER_PRESETS
from planner.domain.cluster import cluster_preset, load_cluster_file, resolve_cluster
from planner.domain.layout import Execution
from planner.domain.mesh import allowed_meshes, mesh_problem, mesh_text
from planner.domain.model_files import resolve_model
from planner.domain.modelspec import PRESETS as MODEL_PRESETS
from planner.domain.plan import plan_to_mapping, save_plan
from planner.domain.workflow_file import builtin_workflow, load_workflow_file

ROLLOUT = ["seqs", "logprobs", "masks"]


def graph_json(cli, workflow: str) -> dict:
    code, out, err = cli("graph", "--workflow", workflow, "--json")
    assert code == 0 and err == "", err
    return json.loads(out)


def nodes_of(data: dict) -> dict[str, tuple[str, str]]:
    return {n["name"]: (n["model"], n["kind"]) for n in data["nodes"]}


def edges_of(data: dict) -> dict[tuple[str, str], list[str]]:
    edges = {(e["src"], e["dst"]): e["keys"] for e in data["edges"]}
    assert len(edges) == len(data["edges"]), "duplicate edges"
    return edges


# --- built-in workflows ---------------------------------------------------------------------

def test_ppo_graph_has_the_six_calls_of_the_design(cli):
    data = graph_json(cli, "ppo")
    assert data["algorithm"] == "ppo"
    assert nodes_of(data) == {
        "actor_gen": ("actor", "generate"),
        "rew_inf": ("reward", "inference"),
        "ref_inf": ("ref", "inference"),
        "critic_inf": ("critic", "inference"),
        "actor_train": ("actor", "train"),
        "critic_train": ("critic", "train"),
    }
    names = [n["name"] for n in data["nodes"]]
    assert names[0] == "actor_gen" and set(names[-2:]) == {"actor_train", "critic_train"}
    train_inputs = {
        ("actor_gen", "actor_train"): ROLLOUT, ("actor_gen", "critic_train"): ROLLOUT,
        ("rew_inf", "actor_train"): ["rewards"], ("rew_inf", "critic_train"): ["rewards"],
        ("ref_inf", "actor_train"): ["ref_logprobs"],
        ("ref_inf", "critic_train"): ["ref_logprobs"],
        ("critic_inf", "actor_train"): ["values"], ("critic_inf", "critic_train"): ["values"],
    }
    rollout_reads = {("actor_gen", dst): ["seqs", "masks"]
                     for dst in ("rew_inf", "ref_inf", "critic_inf")}
    assert edges_of(data) == {**train_inputs, **rollout_reads}


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_grpo_and_rloo_have_no_critic(cli, algorithm):
    data = graph_json(cli, algorithm)
    assert nodes_of(data) == {
        "actor_gen": ("actor", "generate"), "rew_inf": ("reward", "inference"),
        "ref_inf": ("ref", "inference"), "actor_train": ("actor", "train"),
    }
    assert edges_of(data) == {
        ("actor_gen", "rew_inf"): ["seqs", "masks"], ("actor_gen", "ref_inf"): ["seqs", "masks"],
        ("actor_gen", "actor_train"): ROLLOUT, ("rew_inf", "actor_train"): ["rewards"],
        ("ref_inf", "actor_train"): ["ref_logprobs"],
    }
    workflow = builtin_workflow(algorithm)
    assert set(workflow.models) == {"actor", "reward", "ref"}
    assert workflow.batch.group_size > 1, "a group of samples per prompt"


def test_remax_generates_greedily_and_rewards_both_rollouts(cli):
    data = graph_json(cli, "remax")
    assert nodes_of(data) == {
        "actor_gen": ("actor", "generate"), "actor_greedy_gen": ("actor", "generate"),
        "rew_inf": ("reward", "inference"), "rew_greedy_inf": ("reward", "inference"),
        "ref_inf": ("ref", "inference"), "actor_train": ("actor", "train"),
    }
    edges = edges_of(data)
    assert edges[("actor_greedy_gen", "rew_greedy_inf")] == ["greedy_seqs", "greedy_masks"]
    assert edges[("rew_greedy_inf", "actor_train")] == ["greedy_rewards"]
    assert edges[("rew_inf", "actor_train")] == ["rewards"]
    assert ("actor_greedy_gen", "rew_inf") not in edges
    calls = builtin_workflow("remax").call_by_name
    assert calls["actor_greedy_gen"].greedy and not calls["actor_gen"].greedy


def test_dpo_is_ref_inference_then_actor_train_on_pairs(cli):
    data = graph_json(cli, "dpo")
    assert nodes_of(data) == {"ref_inf": ("ref", "inference"), "actor_train": ("actor", "train")}
    assert edges_of(data) == {("ref_inf", "actor_train"): ["ref_logprobs"]}
    workflow = builtin_workflow("dpo")
    assert workflow.inputs == ("pairs",)
    assert "pairs" in workflow.call_by_name["ref_inf"].inputs
    assert "pairs" in workflow.call_by_name["actor_train"].inputs


def test_value_heads_on_critic_and_reward_only():
    workflow = builtin_workflow("ppo")
    assert {r: m.head for r, m in workflow.models.items()} == {
        "actor": "lm", "critic": "value", "ref": "lm", "reward": "value"}


def test_graph_text_lists_every_call_and_edge(cli):
    code, out, _ = cli("graph", "--workflow", "ppo")
    assert code == 0
    assert out.splitlines()[0] == "workflow ppo: 6 calls"
    assert "actor_gen -> rew_inf: seqs, masks" in out
    assert "critic_inf -> critic_train: values" in out


def test_graph_out_writes_a_png(cli, tmp_path):
    out = tmp_path / "figs" / "ppo.png"
    code, stdout, err = cli("graph", "--workflow", "ppo", "--out", out)
    assert code == 0, err
    assert stdout.strip() == f"wrote {out}"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in out.parent.iterdir()] == ["ppo.png"], "no temp files left"


# --- plan show / check ----------------------------------------------------------------------

@pytest.fixture
def saved_plan(tmp_path) -> Path:
    path = tmp_path / "plan.yaml"
    gen = Execution(devices=(0, 1, 2, 3), dp=4, tp=1, pp=1)
    train = Execution(devices=tuple(range(8)), dp=2, tp=2, pp=2, micro_batches=2)
    save_plan(make_plan(executions={"actor_gen": gen, "actor_train": train,
                                    "critic_train": train}), path)
    return path


def test_plan_check_accepts_a_valid_plan(cli, saved_plan):
    code, out, err = cli("check", saved_plan)
    assert (code, err) == (0, "")
    assert "valid (6 calls on h100x8" in out
    code, _, err = cli("check", saved_plan, "--cluster", "h100x8")
    assert (code, err) == (0, "")


def test_plan_show_prints_meshes_layouts_and_reallocations(cli, saved_plan):
    code, out, err = cli("show", saved_plan)
    assert (code, err) == (0, "")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:8]}
    assert rows["actor_gen"][3:] == ["0:0-3", "4", "d4t1p1m1"]
    assert rows["actor_train"][3:] == ["0:0-7", "8", "d2t2p2m2/full"]   # + recomputation
    assert rows["ref_inf"][3:] == ["0:0-7", "8", "d8t1p1m1"]
    # actor: gen -> train and train -> next gen; critic: inf -> train and back.
    assert "reallocations: 4" in out
    assert "actor: actor_train -> actor_gen (next iteration)" in out


def test_plan_show_json_is_the_plan_mapping(cli, saved_plan):
    code, out, _ = cli("show", saved_plan, "--json")
    assert code == 0
    data = json.loads(out)
    assert data == json.loads(json.dumps(yaml.safe_load(saved_plan.read_text())))
    assert data["executions"]["actor_gen"]["devices"] == [0, 1, 2, 3]


@pytest.mark.parametrize("command", ["graph", "show", "check"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert len(capsys.readouterr().out.splitlines()) > 3


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(command in out for command in ("graph", "show", "check"))


# --- user workflow files and HF configs -----------------------------------------------------

def test_short_form_workflow_file_loads(cli, tmp_path):
    path = tmp_path / "my-ppo.yaml"
    path.write_text(
        "algorithm: ppo\n"
        "models: {actor: llama-7b, critic: llama-7b, ref: llama-7b, reward: llama-7b}\n"
        "batch: {n_seqs: 512, prompt_len: 1024, gen_len: 1024, ppo_minibatches: 4}\n")
    workflow = load_workflow_file(path)
    assert workflow.call_order == builtin_workflow("ppo").call_order
    assert workflow.models["critic"].head == "value"
    assert workflow.models["actor"].spec == MODEL_PRESETS["llama-7b"]
    assert workflow.batch.n_seqs == 512 and workflow.batch.seq_len == 2048
    assert len(graph_json(cli, str(path))["nodes"]) == 6


def test_model_entry_with_explicit_head(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({
        "algorithm": "dpo", "batch": SMALL_BATCH,
        "models": {"actor": "llama-tiny", "ref": {"model": "llama-small", "head": "value"}}}))
    workflow = load_workflow_file(path)
    assert workflow.models["ref"].head == "value"
    assert workflow.models["ref"].spec.name == "llama-small"
    assert workflow.models["actor"].head == "lm"


LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
    "vocab_size": 32000, "tie_word_embeddings": False, "torch_dtype": "float16",
}


def test_model_from_hf_config_directory(tmp_path):
    folder = tmp_path / "models" / "my-llama"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LLAMA2_7B_CONFIG))
    spec = resolve_model(str(folder))
    assert spec.name == "my-llama"
    assert spec.num_params() == 6_738_415_616
    # Relative to the workflow file's folder.
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({
        "algorithm": "dpo", "batch": SMALL_BATCH,
        "models": {"actor": "models/my-llama", "ref": "llama-tiny"}}))
    assert load_workflow_file(path).models["actor"].spec.num_params() == 6_738_415_616


def test_qwen2_hf_config_gets_attention_bias(tmp_path):
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
        "max_position_embeddings": 32768, "vocab_size": 152064, "rope_theta": 1e6,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False}))
    spec = resolve_model(str(folder))
    assert spec.attention_bias
    assert spec.num_params() == MODEL_PRESETS["qwen2.5-7b"].num_params()


# --- clusters -------------------------------------------------------------------------------

def test_short_form_cluster_file(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("nodes: 2\ndevices_per_node: 8\ndevice: h100-sxm-80gb\n")
    cluster = load_cluster_file(path)
    assert cluster.name == "lab"
    assert cluster.num_devices == 16 and cluster.num_nodes == 2
    assert cluster.device_node[7] == 0 and cluster.device_node[8] == 1
    group = cluster.node_groups[0]
    assert (group.nics_per_node, group.nic_bandwidth_gb_per_s) == (
        group.hardware.nics_per_node, group.hardware.nic_bandwidth_gb_per_s)
    same = cluster_preset("h100x16")
    assert cluster.node_groups == same.node_groups


def test_heterogeneous_cluster_file(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump({
        "name": "mixed", "inter_node_latency_us": 7.5, "node_groups": [
            {"nodes": 1, "devices_per_node": 8, "device": "h100-sxm-80gb"},
            {"nodes": 2, "devices_per_node": 4, "device": "a100-sxm-80gb"}]}))
    cluster = resolve_cluster(str(path))
    assert cluster.node_devices_per_node == (8, 4, 4)
    assert cluster.num_devices == 16
    assert {h.name for h in cluster.node_hardware} == {"h100-sxm-80gb", "a100-sxm-80gb"}
    assert cluster.hardware_of(7).name == "h100-sxm-80gb"
    assert cluster.hardware_of(8).name == "a100-sxm-80gb"
    assert (cluster.device_node[11], cluster.slot_of(11)) == (1, 3)
    assert cluster.device_id(2, 1) == 13
    assert cluster.inter_node_latency_us == 7.5
    assert [g.nic_bandwidth_gb_per_s for g in cluster.node_groups] == [50.0, 25.0]
    meshes = allowed_meshes(cluster)
    assert (8, 9, 10, 11) in meshes and tuple(range(8, 16)) in meshes
    assert tuple(range(16)) in meshes
    assert mesh_text((8, 9, 10, 11), cluster) == "1:0-3"
    assert mesh_problem((4, 5, 6, 7, 8, 9, 10, 11), cluster) is not None


@pytest.mark.parametrize("name,nodes,devices,kind", [
    ("h100x8", 1, 8, "cuda"), ("h100x16", 2, 16, "cuda"), ("h100x128", 16, 128, "cuda"),
    ("cpu4", 1, 4, "cpu")])
def test_cluster_presets(name, nodes, devices, kind):
    assert name in CLUSTER_PRESETS
    cluster = resolve_cluster(name)
    assert (cluster.num_nodes, cluster.num_devices) == (nodes, devices)
    assert {h.kind for h in cluster.node_hardware} == {kind}
    assert len({h.name for h in cluster.node_hardware}) == 1


def test_plan_check_against_a_cluster_file_of_the_same_cluster(cli, tmp_path):
    cluster_path = tmp_path / "h100x16.yaml"
    cluster_path.write_text("nodes: 2\ndevices_per_node: 8\ndevice: h100-sxm-80gb\n")
    plan_path = tmp_path / "plan.yaml"
    save_plan(make_plan(cluster="h100x16"), plan_path)
    code, _, err = cli("check", plan_path, "--cluster", cluster_path)
    assert (code, err) == (0, "")
    assert plan_to_mapping(make_plan(cluster="h100x16"))["cluster"]["name"] == "h100x16"
