"""`plan search --time-limit` bounds the whole command: pricing candidates, baselines, the
chains, exact re-pricing and the lower bound (planner.search.pipeline), and says which
phase it cut."""

from __future__ import annotations

import json
import re
import time

import yaml

from planner.cli.main import main
from planner.domain.plan import load_plan
from planner.search.deadline import Deadline

# PPO with a 70B actor and reference and a 7B critic and reward on 16 nodes of 8 H100 (the
# scale case ppo-70b-h100x128 of benchmarks/search_speed.py): pricing every mesh shape takes
# 4.1 s at load 1.9, eight times the tables' share of the limit below (pipeline.TABLE_SHARE).
PPO_70B = {"algorithm": "ppo",
           "models": {"actor": "llama-70b", "ref": "llama-70b", "critic": "llama-7b",
                      "reward": "llama-7b"},
           "batch": {"n_seqs": 1024, "prompt_len": 1024, "gen_len": 1024,
                     "ppo_minibatches": 4}}
LIMIT_S = 1.0
SLACK_S = 10.0      # generous: measured ~3 s in all at load 2.4 on 2 cores


def test_tiny_time_limit_cuts_the_tables_and_still_writes_a_plan(tmp_path, capsys):
    workflow = tmp_path / "ppo70b.yaml"
    workflow.write_text(yaml.safe_dump(PPO_70B))
    out = tmp_path / "plan.yaml"
    began = time.perf_counter()
    code = main(["search", "--workflow", str(workflow), "--cluster", "h100x128",
                 "--time-limit", str(LIMIT_S), "--json", "--out", str(out)])
    elapsed_s = time.perf_counter() - began
    assert code == 0
    assert elapsed_s < LIMIT_S + SLACK_S
    data = json.loads(capsys.readouterr().out)
    cut = data["search"]["time_limit_cut"]
    assert "tables cut by the time limit" in cut["pricing candidates"]
    assert data["search"]["lower_bound_s"] is None    # the bound needs every candidate
    assert data["feasible"]
    plan = load_plan(out)
    assert plan.estimate["iteration_s"] == round(data["iteration_s"], 4)


def test_text_output_names_the_phase_the_limit_cut(tmp_path, capsys):
    workflow = tmp_path / "ppo70b.yaml"
    workflow.write_text(yaml.safe_dump(PPO_70B))
    code = main(["search", "--workflow", str(workflow), "--cluster", "h100x128",
                 "--time-limit", str(LIMIT_S), "--out", str(tmp_path / "plan.yaml")])
    assert code == 0
    text = capsys.readouterr().out
    found = re.search(r"search: pricing candidates: tables cut by the time limit: (\d+) of "
                      r"(\d+) mesh shapes priced; raise --time-limit for a bound", text)
    assert found and 1 <= int(found[1]) < int(found[2])
    assert "no plan of the searched space takes less" not in text   # no bound printed


def test_search_with_room_to_spare_cuts_nothing(tmp_path, capsys):
    code = main(["search", "--workflow", "dpo", "--time-limit", "30", "--json",
                 "--out", str(tmp_path / "plan.yaml")])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["search"]["time_limit_cut"] == {}
    assert data["search"]["lower_bound_s"] is not None


def test_a_phase_deadline_ends_no_later_than_the_whole():
    whole = Deadline(10.0)
    part = whole.part(0.5, reserve_s=1.0)
    assert part.budget_s <= 0.5 * 10.0 - 1.0
    assert part.started_s >= whole.started_s
    assert part.started_s + part.budget_s <= whole.started_s + whole.budget_s
    assert whole.part(1.0, reserve_s=20.0).expired()     # nothing left after the reserve
