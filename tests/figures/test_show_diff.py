"""`plan show` (table, critical path) and `plan diff` (what differs, what it changes)."""

from __future__ import annotations

import json

import pytest

from costmodel.simulator import estimate_plan
from planner.domain.plan import load_plan


def test_show_prints_table_times_and_critical_path(cli, plan_files):
    code, out, err = cli("show", plan_files["searched"])
    assert (code, err) == (0, "")
    assert "actor_gen        actor    generate   0:0-7" in out
    assert "d1t2p2m16" in out and "0:4-7" in out
    # a train call's layout carries its recomputation mode, other calls' do not
    assert "d4t2p1m1/full" in out and "d2t2p2m16/full" in out and "d8t1p1m1/" not in out
    est = estimate_plan(load_plan(plan_files["searched"]))
    assert f"{est.iteration_s:.2f} s per iteration" in out
    move_s = est.realloc_times_s["realloc:critic:critic_train->critic_inf"]
    assert f"critic: critic_train -> critic_inf (next iteration): {move_s * 1e3:.1f} ms" in out
    assert "actor_gen -> rew_inf (" in out
    assert out.count("  on critical path") == 1
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.endswith((" yes", " no"))}
    assert rows["rew_inf"][-1] == "no" and rows["ref_inf"][-1] == "yes"
    assert float(rows["actor_gen"][0]) == round(est.call_times_s["actor_gen"], 2)
    path_lines = out.split("critical path (")[1].strip().splitlines()[1:]
    gen_s = est.call_times_s["actor_gen"]
    assert path_lines[0].startswith(f"  iteration 0: actor_gen ({gen_s:.1f} s) -> ref_inf")
    critical_calls = [n.split("/", 1)[1] for n in est.critical_path]
    train_s = est.call_times_s["critic_train"]
    assert "critic_train" in critical_calls and f"critic_train ({train_s:.1f} s)" in out


def test_show_prints_the_peak_device_part_by_part(cli, plan_files):
    code, out, err = cli("show", plan_files["separate"])
    assert (code, err) == (0, "")
    est = estimate_plan(load_plan(plan_files["separate"]))
    device = max(est.peak_memory_bytes, key=est.peak_memory_bytes.get)
    lines = out.split("memory of the peak device ")[1].splitlines()
    assert lines[0].startswith(f"0:{device}: {est.peak_memory_bytes[device] / 2**30:.1f} GiB")
    node = est.memory.peak_node(device)
    assert f"during {node}" in lines[0]
    parts = est.memory.device_parts[device]
    rows = [line.split() for line in lines[1:1 + len(parts)]]
    assert [(r[0], " ".join(r[1:-2])) for r in rows] == \
        [(model, kind.replace("_", " ")) for kind, model, _ in parts]
    assert sum(float(r[-2]) for r in rows) == pytest.approx(
        est.peak_memory_bytes[device] / 2**30, abs=0.005 * len(rows))
    assert lines[1 + len(parts)].startswith("compute times from:")


def test_show_json_is_the_plan(cli, plan_files):
    code, out, _ = cli("show", plan_files["separate"], "--json")
    data = json.loads(out)
    assert code == 0
    assert data["executions"]["actor_gen"]["mesh"] == "0:0-1"
    assert data["augmented"]["reallocations"][0]["model"] == "actor"


def test_diff_of_a_plan_with_itself_reports_no_differences(cli, plan_files):
    code, out, err = cli("diff", plan_files["searched"], plan_files["searched"])
    assert (code, err) == (0, "")
    assert "no differences" in out
    assert "(+0.00 s, B/A = 1.000)" in out
    assert "reallocation added" not in out and "reallocation removed" not in out
    code, out, _ = cli("diff", plan_files["searched"], plan_files["searched"], "--json")
    data = json.loads(out)
    assert data["identical"] is True
    assert data["calls"] == [] and data["call_times_s"] == []
    assert data["iteration_s"]["delta"] == 0.0


def test_diff_names_changed_calls_and_iteration_delta(cli, plan_files):
    a, b = plan_files["searched"], plan_files["separate"]
    est_a = estimate_plan(load_plan(a))
    est_b = estimate_plan(load_plan(b))
    code, out, err = cli("diff", a, b)
    assert (code, err) == (0, "")
    delta = est_b.iteration_s - est_a.iteration_s
    assert f"iteration time: {est_a.iteration_s:.2f} s -> {est_b.iteration_s:.2f} s " \
           f"({delta:+.2f} s" in out
    assert "  actor_gen        0:0-7     d4t2p1m2           0:0-1     d1t2p1m8  " in out
    assert "  actor_train      0:0-7     d4t2p1m1/full      0:4-5     d2t1p1m8/full  " in out
    assert "reallocation added: realloc:actor:actor_gen->actor_train" in out
    assert "reallocation removed: realloc:critic:critic_inf->critic_train" in out
    data = json.loads(cli("diff", a, b, "--json")[1])
    assert data["identical"] is False
    assert {c["name"] for c in data["calls"]} == {"actor_gen", "rew_inf", "ref_inf",
                                                   "critic_inf", "actor_train", "critic_train"}
    assert data["iteration_s"]["delta"] == delta
    assert data["workflow"] == [] and data["cluster"] == []


def test_diff_reports_one_changed_call_only(cli, plan_files, tmp_path):
    from planner.domain.layout import Execution
    from planner.domain.plan import save_plan
    plan = load_plan(plan_files["searched"])
    executions = dict(plan.executions)
    executions["critic_inf"] = Execution(devices=tuple(range(8)), dp=2, tp=2, pp=2,
                                         micro_batches=16)
    changed = tmp_path / "changed.yaml"
    save_plan(plan.model_copy(update={"executions": executions}), changed)
    data = json.loads(cli("diff", plan_files["searched"], changed, "--json")[1])
    assert [c["name"] for c in data["calls"]] == ["critic_inf"]
    assert data["calls"][0]["a"]["layout"] == "d8t1p1m1"
    assert data["calls"][0]["b"]["layout"] == "d2t2p2m16"
    removed = {r["name"] for r in data["reallocations"]["removed"]}
    assert removed == {"realloc:critic:critic_inf->critic_train",
                       "realloc:critic:critic_train->critic_inf"}


def test_diff_reports_a_changed_recompute_mode(cli, plan_files, tmp_path):
    from planner.domain.plan import save_plan
    plan = load_plan(plan_files["searched"])
    executions = dict(plan.executions)
    executions["actor_train"] = executions["actor_train"].model_copy(
        update={"recompute": "selective"})
    changed = tmp_path / "changed.yaml"
    save_plan(plan.model_copy(update={"executions": executions}), changed)
    data = json.loads(cli("diff", plan_files["searched"], changed, "--json")[1])
    assert [c["name"] for c in data["calls"]] == ["actor_train"]
    assert data["calls"][0]["a"]["layout"] == "d4t2p1m1/full"
    assert data["calls"][0]["b"]["layout"] == "d4t2p1m1/selective"
    assert data["calls"][0]["time_s_b"] < data["calls"][0]["time_s_a"]


def test_diff_bad_input_is_one_line(cli, plan_files, tmp_path):
    code, out, err = cli("diff", plan_files["searched"], tmp_path / "missing.yaml")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "file not found" in err


def test_new_subcommands_have_help(capsys):
    import pytest

    from planner.cli.main import main
    for command, operands in (("viz", "PLAN.yaml"), ("diff", "A.yaml B.yaml"),
                              ("show", "PLAN.yaml")):
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0
        assert operands in capsys.readouterr().out, command
