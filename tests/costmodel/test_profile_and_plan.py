"""Profile table lookup, the plan simulator's sanity, and `plan estimate`."""

import argparse
import json
import math

import pytest
import yaml

from costmodel.call_cost import call_time
from costmodel.profile_table import find_profile, model_shape_key
from costmodel.simulator import memory_problem, simulate
from planner.cli import estimate as estimate_cli
from planner.domain.cluster import cluster_preset
from planner.domain.errors import InputError
from planner.domain.layout import Execution
from planner.domain.modelspec import PRESETS
from planner.domain.plan import Plan, Provenance, save_plan
from planner.domain.workflow_file import builtin_workflow

SPEC = PRESETS["llama-7b"]
GRID = {"op": "forward", "part": "block", "batch": [1, 4], "length": [100, 400],
        "seconds": [[1e-3, 4e-3], [4e-3, 16e-3]]}


@pytest.fixture
def profiles(tmp_path):
    table = {"format_version": 1, "device": "h100-sxm-80gb", "torch_version": "2.13.0",
             "recorded": "2025-01-01", "model_shape": model_shape_key(SPEC),
             "shards": [{"tp": 1, "entries": [GRID, {"op": "optimizer", "part": "block",
                                                      "seconds": 0.002}]}]}
    folder = tmp_path / "h100-sxm-80gb"
    folder.mkdir()
    (folder / f"{model_shape_key(SPEC)}.yaml").write_text(yaml.safe_dump(table))
    return tmp_path


def test_profile_lookup_interpolates_in_log_space_and_extrapolates_in_tokens(profiles):
    lookup = find_profile(profiles, "h100-sxm-80gb", SPEC)
    assert lookup.source.startswith("profile:")
    assert lookup.time_s("forward", "block", 1, 4, 400) == pytest.approx(16e-3)
    assert lookup.time_s("forward", "block", 1, 2, 200) == pytest.approx(4e-3)  # log-linear
    # outside: nearest edge point (4, 400) scaled by tokens 8 x 800 / (4 x 400)
    assert lookup.time_s("forward", "block", 1, 8, 800) == pytest.approx(16e-3 * 4)
    assert lookup.time_s("optimizer", "block", 1, 1, 1) == pytest.approx(0.002)
    assert not lookup.has("forward", "block", 2)


@pytest.mark.parametrize("seconds, expected", [
    ([[1e-3, 1e-3], [2e-3, 2e-3]], 1e-3),            # flat in length: slope 0, no change
    ([[1e-3, 2e-3], [2e-3, 4e-3]], 1e-3 * 0.5 ** 0.5),  # slope 1/2 continued
    ([[1e-3, 16e-3], [2e-3, 32e-3]], 0.5e-3),         # slope 2 clipped to linear in tokens
])
def test_profile_lookup_below_the_grid_continues_the_first_segment(tmp_path, seconds,
                                                                  expected):
    entry = {"op": "decode", "part": "block", "batch": [1, 4], "length": [100, 400],
             "seconds": seconds}
    table = {"format_version": 1, "device": "h100-sxm-80gb", "torch_version": "2.13.0",
             "recorded": "2025-01-01", "model_shape": model_shape_key(SPEC),
             "shards": [{"tp": 1, "entries": [entry]}]}
    folder = tmp_path / "h100-sxm-80gb"
    folder.mkdir()
    (folder / f"{model_shape_key(SPEC)}.yaml").write_text(yaml.safe_dump(table))
    lookup = find_profile(tmp_path, "h100-sxm-80gb", SPEC)
    # half the first length at batch 1 (inside the batch axis)
    assert lookup.time_s("decode", "block", 1, 1, 50) == pytest.approx(expected)
    assert lookup.time_s("decode", "block", 1, 1, 100) == pytest.approx(seconds[0][0])


def test_call_time_names_the_profile_it_used(profiles):
    wf = builtin_workflow("ppo")
    call = wf.call_by_name["ref_inf"]
    result = call_time(call, wf.models["ref"], Execution(devices=(0,), dp=1, tp=1, pp=1),
                       wf.batch, cluster_preset("h100x1"), profiles)
    assert any(s.startswith("profile:") for s in result.source.split(", "))
    assert "roofline:h100-sxm-80gb" in result.source  # head/embedding not in the table


def ppo_plan(cluster_name="h100x8", gen_m=4, train_m=16):
    # 16 train micro-batches: with 8, actor_train's activations do not fit beside the
    # inference copies of the actor and critic (dp 8, unlike their tp-8 homes), which live
    # from the reallocation into their call to the one out of it (costmodel/plan_memory.py)
    wf = builtin_workflow("ppo")
    cluster = cluster_preset(cluster_name)
    n = cluster.num_devices
    gen = Execution(devices=tuple(range(n)), dp=n // 4, tp=4, pp=1, micro_batches=gen_m)
    train = Execution(devices=tuple(range(n)), dp=n // 8, tp=8, pp=1, micro_batches=train_m)
    inf = Execution(devices=tuple(range(n)), dp=n, tp=1, pp=1, micro_batches=4)
    executions = {"actor_gen": gen, "rew_inf": inf, "ref_inf": inf, "critic_inf": inf,
                  "actor_train": train, "critic_train": train}
    return Plan(workflow=wf, cluster=cluster, executions=executions,
                provenance=Provenance(created_by="test"))


def test_ppo_llama7b_on_eight_h100_is_physically_plausible():
    plan = ppo_plan()
    est = simulate(plan.workflow, plan.cluster, plan.executions)
    assert est.feasible, est.reason
    # ReaLHF reports 100-300 s per PPO iteration of 7B models on 8 H100; a roofline is
    # optimistic, so accept 40-400 s.
    assert 40 < est.iteration_s < 400
    assert 10 < est.call_times_s["actor_gen"] < 200
    assert 5 < est.call_times_s["actor_train"] < 100
    assert 0.5 < est.call_times_s["ref_inf"] < 30
    # every call and reallocation shares all 8 devices, so they run one after another
    assert est.iteration_s == pytest.approx(sum(est.call_times_s.values())
                                            + sum(est.realloc_times_s.values()), rel=0.01)
    assert est.critical_path[-1].startswith("2/")
    assert est.compute_source == "roofline:h100-sxm-80gb"


def test_memory_problem_names_device_bytes_and_call():
    plan = ppo_plan(gen_m=1)
    reason = memory_problem(plan)
    assert reason and "device 0:" in reason and "GiB" in reason and "actor_gen" in reason


def _run_cli(path, json_out=True):
    return estimate_cli.run(argparse.Namespace(plan=str(path), json=json_out, iterations=3))


def test_estimate_cli_json_and_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    save_plan(ppo_plan(), good)
    assert _run_cli(good) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"iteration_s", "feasible", "reason", "calls", "reallocations",
            "compute_source"} <= set(data)
    first = data["calls"][0]
    assert {"name", "model", "devices", "dp", "tp", "pp", "micro_batches", "time_s",
            "peak_memory_gib"} <= set(first)
    assert math.isfinite(data["iteration_s"])
    by_device = data["memory_by_device"]
    assert [d["device"] for d in by_device] == list(range(8))
    for entry in by_device:
        assert sum(p["gib"] for p in entry["parts"]) == pytest.approx(entry["peak_gib"])
        assert entry["during"] in {c["name"] for c in data["calls"]} | \
            {r["name"] for r in data["reallocations"]}
    assert max(d["peak_gib"] for d in by_device) == pytest.approx(data["peak_memory_gib"])
    for call in data["calls"]:
        assert sum(p["gib"] for p in call["peak_memory_parts"]) == \
            pytest.approx(call["peak_memory_gib"])
    bad = tmp_path / "bad.yaml"
    save_plan(ppo_plan(gen_m=1), bad)
    assert _run_cli(bad, json_out=False) == 1
    assert "infeasible: device" in capsys.readouterr().out
    with pytest.raises(InputError):
        _run_cli(tmp_path / "missing.yaml")
