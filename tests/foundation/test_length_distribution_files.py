"""Workflow files with length distributions: each form loads, round-trips through a plan
file, and a bad one gives one line naming the file, the field and what is valid."""

from __future__ import annotations

import copy

import pytest
import yaml
from foundation_support import SMALL_BATCH, make_plan

from planner.domain.length_distribution import (
    BucketLengths,
    ClippedGeometricLengths,
    FixedLength,
)
from planner.domain.plan import plan_from_mapping, plan_to_mapping, plan_to_yaml
from planner.domain.workflow_file import load_workflow_file

TINY_GRPO = {"algorithm": "grpo",
             "models": {role: "llama-tiny" for role in ("actor", "ref", "reward")},
             "batch": {**SMALL_BATCH, "group_size": 4}}
FORMS = {
    "fixed": (16, FixedLength, 16),
    "mean_max": ({"mean": 5.5, "max": 16}, ClippedGeometricLengths, 16),
    "buckets": ([{"len": 4, "weight": 3}, {"len": 12, "weight": 1}], BucketLengths, 12),
}


def _workflow_file(tmp_path, **batch):
    data = copy.deepcopy(TINY_GRPO)
    data["batch"].update(batch)
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("form", FORMS)
def test_each_form_loads_with_its_maximum_as_the_length(form, tmp_path):
    raw, kind, longest = FORMS[form]
    workflow = load_workflow_file(_workflow_file(tmp_path, gen_len=raw, prompt_len=raw))
    for length, dist in ((workflow.batch.gen_len, workflow.batch.gen_lengths),
                         (workflow.batch.prompt_len, workflow.batch.prompt_lengths)):
        assert isinstance(dist, kind)
        assert length == longest == dist.max_len


def test_distributions_round_trip_through_a_plan_file():
    plan = make_plan()
    batch = {**SMALL_BATCH, "gen_len": {"mean": 5.5, "max": 16},
             "prompt_len": [{"len": 4, "weight": 3}, {"len": 12, "weight": 1}]}
    data = plan_to_mapping(plan)
    data["workflow"]["batch"] = batch
    loaded = plan_from_mapping(data, "plan.yaml")
    assert loaded.workflow.batch.gen_lengths == ClippedGeometricLengths(mean=5.5, max=16)
    assert plan_to_mapping(loaded)["workflow"]["batch"] == {
        **batch, "gen_len": {"mean": 5.5, "max": 16},
        "prompt_len": [{"len": 4, "weight": 3.0}, {"len": 12, "weight": 1.0}],
        "group_size": 1}
    again = plan_from_mapping(yaml.safe_load(plan_to_yaml(loaded)), "plan.yaml")
    assert plan_to_yaml(again) == plan_to_yaml(loaded)


def test_fixed_lengths_write_plans_as_before():
    assert plan_to_mapping(make_plan())["workflow"]["batch"] == {**SMALL_BATCH, "group_size": 1}


BAD = [
    ({"mean": 20, "max": 16}, "batch.gen_len", ["mean 20 exceeds max 16", "1 <= mean <= max"]),
    ({"mean": 0.5, "max": 16}, "batch.gen_len.mean", ["greater than or equal to 1"]),
    ({"mean": 5}, "batch.gen_len.max", ["required"]),
    ({"mean": 5, "max": 16, "p99": 12}, "batch.gen_len.p99", ["unknown key", "mean, max"]),
    ({"mean": 5, "max": 2_000_000}, "batch.gen_len.max", ["less than or equal to 1048576"]),
    ([], "batch.gen_len", ["no buckets", "{len: N, weight: W}"]),
    ([{"len": 8, "weight": 0}], "batch.gen_len[0].weight", ["greater than 0"]),
    ([{"len": 0, "weight": 1}], "batch.gen_len[0].len", ["greater than or equal to 1"]),
    ([{"len": 8, "weight": 1}, {"len": 9, "weight": 1, "share": 2}], "batch.gen_len[1].share",
     ["unknown key", "len, weight"]),
    ([{"len": 8, "weight": 1}, {"length": 9, "weight": 1}], "batch.gen_len[1].len",
     ["required"]),
    ([{"len": 8, "weight": 1}, {"len": 8, "weight": 2}], "batch.gen_len",
     ["len 8 is given twice"]),
    ([8, 16], "batch.gen_len[0]", ["a bucket is {len: N, weight: W}"]),
    ("long", "batch.gen_len", ["'long'", "{mean: M, max: N}", "[{len: N, weight: W}, ...]"]),
]


@pytest.mark.parametrize("raw,field,words", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_distribution_gives_one_line_naming_file_and_field(raw, field, words, tmp_path,
                                                               cli):
    path = _workflow_file(tmp_path, gen_len=raw)
    code, out, err = cli("graph", "--workflow", path)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1, err
    assert f"{path}: {field}: " in err, err
    for word in words:
        assert word in err, (word, err)
