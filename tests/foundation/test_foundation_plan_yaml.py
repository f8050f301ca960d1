"""Plan YAML: save -> load -> save is byte-identical; saves are atomic."""

from __future__ import annotations

import os

import pytest
import yaml
from foundation_support import make_plan

from planner.cli.main import main
from planner.domain.cluster import NodeGroupFile, build_cluster
from planner.domain.layout import Execution
from planner.domain.mesh import mesh_text, parse_mesh_text
from planner.domain.plan import Plan, Provenance, load_plan, plan_to_yaml, save_plan
from planner.domain.workflow_file import builtin_workflow


def _ppo_with_reallocations() -> Plan:
    gen = Execution(devices=(0, 1, 2, 3), dp=2, tp=2, pp=1)
    train = Execution(devices=tuple(range(8)), dp=2, tp=2, pp=2, micro_batches=4)
    return make_plan(executions={"actor_gen": gen, "actor_train": train,
                                 "critic_inf": Execution(devices=(4, 5), dp=1, tp=2, pp=1),
                                 "critic_train": train})


def _grpo_across_nodes() -> Plan:
    return make_plan("grpo", model="llama-7b", cluster="h100x16", executions={
        "actor_gen": Execution(devices=tuple(range(16)), dp=4, tp=4, pp=1),
        "rew_inf": Execution(devices=tuple(range(8, 16)), dp=8, tp=1, pp=1),
        "ref_inf": Execution(devices=(0, 1, 2, 3), dp=1, tp=4, pp=1),
        "actor_train": Execution(devices=tuple(range(16)), dp=2, tp=4, pp=2, micro_batches=2),
    })


def _remax_with_estimate() -> Plan:
    return make_plan("remax", executions={
        "actor_greedy_gen": Execution(devices=(4, 5, 6, 7), dp=4, tp=1, pp=1),
        "rew_greedy_inf": Execution(devices=(6, 7), dp=2, tp=1, pp=1)},
        estimate={"iteration_s": 12.5, "calls_s": {"actor_gen": 3.25, "actor_train": 1e-3},
                  "peak_memory_gib": [10.0, 11.5, 0.125]},
        provenance=Provenance(created_by="plan search", seed=7, profile_source="defaults",
                              search={"candidates": 12345, "seconds": 0.5}))


def _dpo_single_devices() -> Plan:
    return make_plan("dpo", model="qwen2.5-7b", executions={
        "ref_inf": Execution(devices=(3,), dp=1, tp=1, pp=1),
        "actor_train": Execution(devices=(4, 5, 6, 7), dp=1, tp=1, pp=4, micro_batches=8)})


def _mixed_cluster_across_nodes() -> Plan:
    """Node 0 has eight H100s, nodes 1 and 2 four A100s each."""
    cluster = build_cluster("mixed", [
        NodeGroupFile(nodes=1, devices_per_node=8, device="h100-sxm-80gb"),
        NodeGroupFile(nodes=2, devices_per_node=4, device="a100-sxm-80gb")])
    workflow = builtin_workflow("dpo", model="llama-tiny",
                                batch={"n_seqs": 64, "prompt_len": 16, "gen_len": 16})
    executions = {"ref_inf": Execution(devices=tuple(range(8, 16)), dp=8, tp=1, pp=1),
                  "actor_train": Execution(devices=tuple(range(12)), dp=3, tp=4, pp=1)}
    plan = Plan(workflow=workflow, cluster=cluster, executions=executions,
                provenance=Provenance(created_by="tests/foundation"))
    assert plan.problems() == []
    return plan


def _ppo_with_train_policies() -> Plan:
    """Train calls off the defaults: the actor without ZeRO-1 and with selective
    recomputation, the critic without ZeRO-1 or activation recomputation."""
    base = Execution(devices=tuple(range(8)), dp=8, tp=1, pp=1)
    return make_plan(executions={
        "actor_train": base.model_copy(update={"shard_optimizer_over_dp": False,
                                               "recompute": "selective"}),
        "critic_train": base.model_copy(update={"recompute": "none",
                                                "shard_optimizer_over_dp": False})})


PLANS = [_ppo_with_reallocations, _grpo_across_nodes, _remax_with_estimate,
         _dpo_single_devices, _mixed_cluster_across_nodes, _ppo_with_train_policies, make_plan]


@pytest.mark.parametrize("build", PLANS, ids=[b.__name__ for b in PLANS])
def test_save_load_save_is_byte_identical(build, tmp_path):
    plan = build()
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    save_plan(plan, first)
    loaded = load_plan(first)
    assert loaded == plan
    save_plan(loaded, second)
    assert first.read_bytes() == second.read_bytes()
    assert plan_to_yaml(plan) == first.read_text()


def test_train_policy_is_written_for_train_calls_only(tmp_path):
    path = tmp_path / "plan.yaml"
    save_plan(_ppo_with_train_policies(), path)
    data = yaml.safe_load(path.read_text())["executions"]
    assert data["actor_train"]["shard_optimizer_over_dp"] is False
    assert data["actor_train"]["recompute"] == "selective"
    assert data["critic_train"]["recompute"] == "none"
    for name in ("actor_gen", "rew_inf", "ref_inf", "critic_inf"):
        assert not {"shard_optimizer_over_dp", "recompute"} & set(data[name])
    loaded = load_plan(path)
    assert loaded.executions["actor_train"].recompute == "selective"
    assert loaded.executions["critic_train"].recompute == "none"
    assert loaded.executions["actor_train"].shard_optimizer_over_dp is False


def test_a_train_entry_without_policy_fields_loads_with_the_defaults(tmp_path):
    path = tmp_path / "plan.yaml"
    save_plan(make_plan(), path)
    lines = [line for line in path.read_text().splitlines(keepends=True)
             if "shard_optimizer_over_dp" not in line and "recompute" not in line]
    path.write_text("".join(lines))
    ex = load_plan(path).executions["actor_train"]
    assert ex.shard_optimizer_over_dp is True and ex.recompute == "full"


@pytest.mark.parametrize("field, value", [("shard_optimizer_over_dp", False),
                                          ("recompute", "none"), ("recompute", "selective")])
def test_plan_check_refuses_a_policy_field_on_a_non_train_call(field, value, tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    data = yaml.safe_load(plan_to_yaml(make_plan()))
    data["executions"]["critic_inf"][field] = value
    assert_check_says_one_line(path, data, capsys,
                               (str(path), "executions.critic_inf", field, "train calls only"))


def assert_check_says_one_line(path, data: dict, capsys, words) -> None:
    """`plan check` of `data` written to `path` exits 2 with one line holding every word."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    capsys.readouterr()
    assert main(["check", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in captured.err, captured.err
    for word in words:
        assert word in err[0], (word, err[0])


def test_an_unknown_recompute_mode_is_one_line_naming_the_field_and_the_modes(tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    data = yaml.safe_load(plan_to_yaml(make_plan()))
    data["executions"]["actor_train"]["recompute"] = "attention"
    assert_check_says_one_line(path, data, capsys,
                               (str(path), "executions.actor_train.recompute", "'none'",
                                "'selective'", "'full'"))


def test_augmented_section_lists_the_reallocations(tmp_path):
    path = tmp_path / "plan.yaml"
    save_plan(_ppo_with_reallocations(), path)
    text = path.read_text()
    for line in ("from: actor_gen\n    to: actor_train\n    next_iteration: false",
                 "from: critic_train\n    to: critic_inf\n    next_iteration: true"):
        assert line in text


def test_mesh_text_of_whole_nodes_of_different_sizes():
    plan = _mixed_cluster_across_nodes()
    cluster = plan.cluster
    assert mesh_text(tuple(range(12)), cluster) == "0-1:0-7"
    assert mesh_text(tuple(range(8, 16)), cluster) == "1-2:0-3"
    assert parse_mesh_text("0-1:0-7", cluster) == tuple(range(12))
    assert parse_mesh_text("0-2:0-7", cluster) == tuple(range(16))
    with pytest.raises(ValueError, match="node 1 has slots 0-3"):
        parse_mesh_text("0-1:0-5", cluster)


def test_mesh_text_alone_is_enough_to_load(tmp_path):
    """A hand-written plan may give only `mesh:`; devices follow from it."""
    path = tmp_path / "plan.yaml"
    save_plan(_grpo_across_nodes(), path)
    lines = [line for line in path.read_text().splitlines(keepends=True)
             if not line.lstrip().startswith("devices:")]
    path.write_text("".join(lines))
    assert load_plan(path) == _grpo_across_nodes()


def _write_original(path) -> bytes:
    save_plan(make_plan(), path)
    return path.read_bytes()


def test_save_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "plans" / "nested" / "plan.yaml"
    save_plan(make_plan(), path)
    save_plan(_ppo_with_reallocations(), path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["plan.yaml"]


@pytest.mark.parametrize("broken", ["replace", "fsync"])
def test_failed_save_keeps_the_old_file(broken, tmp_path, monkeypatch):
    path = tmp_path / "plan.yaml"
    original = _write_original(path)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, broken, fail)
    with pytest.raises(OSError):
        save_plan(_ppo_with_reallocations(), path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["plan.yaml"], "temp file cleaned up"
    assert load_plan(path) == make_plan()
