"""`plan search` and `plan baseline` through the CLI entry point."""

from __future__ import annotations

import json

import pytest
import yaml

from planner.cli.main import main
from planner.domain.plan import load_plan


def test_search_json_has_estimate_baselines_and_search_keys(tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    code = main(["search", "--workflow", "dpo", "--time-limit", "5", "--json",
                 "--out", str(out)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("iteration_s", "feasible", "reason", "calls", "baselines", "search",
                "plan_path"):
        assert key in data
    assert data["feasible"] and data["plan_path"] == str(out)
    assert set(data["baselines"]) == {"symmetric", "colocated", "separate", "realhf-heuristic"}
    assert {"evaluations", "evaluations_per_s", "wall_s", "seed"} <= set(data["search"])
    feasible = [s for s in data["baselines"].values() if s is not None]
    assert feasible and data["iteration_s"] <= min(feasible) + 1e-9
    plan = load_plan(out)
    assert plan.provenance.created_by == "plan search"
    assert plan.estimate["iteration_s"] == round(data["iteration_s"], 4)
    call = data["calls"][0]
    assert {"name", "model", "devices", "dp", "tp", "pp", "micro_batches", "time_s",
            "peak_memory_gib"} <= set(call)


def test_search_prints_table_and_ratios(tmp_path, capsys):
    code = main(["search", "--workflow", "grpo", "--time-limit", "5", "--out",
                 str(tmp_path / "p.yaml")])
    assert code == 0
    text = capsys.readouterr().out
    assert "iteration:" in text and "faster" in text and "symmetric" in text


def test_search_says_when_nothing_fits(tmp_path, capsys):
    workflow = tmp_path / "big.yaml"
    workflow.write_text(yaml.safe_dump({
        "algorithm": "ppo",
        "models": {"actor": "llama-70b", "critic": "llama-70b", "ref": "llama-70b",
                   "reward": "llama-70b"},
        "batch": {"n_seqs": 64, "prompt_len": 512, "gen_len": 512, "ppo_minibatches": 2}}))
    code = main(["search", "--workflow", str(workflow), "--cluster", "h100x2",
                 "--time-limit", "3", "--out", str(tmp_path / "p.yaml")])
    assert code == 1
    err = capsys.readouterr().err
    assert "no plan fits" in err and "GiB" in err
    assert not (tmp_path / "p.yaml").exists()


def test_search_rejects_bad_time_limit(capsys):
    with pytest.raises(SystemExit) as stop:     # argparse's own error, in one line
        main(["search", "--time-limit", "-1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plan search: error: argument --time-limit")


def test_baseline_writes_a_priced_plan(tmp_path, capsys):
    out = tmp_path / "base.yaml"
    code = main(["baseline", "--kind", "symmetric", "--workflow", "dpo", "--json",
                 "--out", str(out)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["baseline"] == "symmetric" and data["feasible"]
    plan = load_plan(out)
    layouts = {ex.layout_text() for ex in plan.executions.values()}
    devices = {ex.devices for ex in plan.executions.values()}
    assert len(layouts) == 1 and devices == {tuple(range(8))}


def test_memory_headroom_is_kept_free_and_recorded(tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    code = main(["search", "--workflow", "dpo", "--memory-headroom", "20", "--time-limit", "5",
                 "--json", "--out", str(out)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    plan = load_plan(out)
    assert plan.cluster.memory_headroom_gib == 20.0
    usable_gib = plan.cluster.usable_memory_bytes(0) / 2**30
    reserve_gib = plan.cluster.reserve_bytes(0) / 2**30
    assert 3.0 < reserve_gib < 8.0
    assert usable_gib == pytest.approx(79.6 - reserve_gib - 20.0)
    assert data["peak_memory_gib"] <= usable_gib
    assert max(c["peak_memory_gib"] for c in data["calls"]) <= usable_gib


def test_memory_headroom_bad_values_are_one_line(tmp_path, capsys):
    assert main(["search", "--memory-headroom", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--memory-headroom" in err[0] and "79.6 GiB" in err[0]
    cluster = tmp_path / "c.yaml"
    cluster.write_text("nodes: 1\ndevices_per_node: 8\ndevice: h100-sxm-80gb\n"
                       "memory_headroom_gib: -1\n")
    assert main(["search", "--cluster", str(cluster)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "memory_headroom_gib" in err[0]
