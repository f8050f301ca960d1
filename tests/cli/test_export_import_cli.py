"""`plan export`, `plan import`, and `plan search --target / --baseline`, through the CLI.

The commands are tested against a small fake target installed under a real target's name
(`sys.modules`), so these tests do not depend on what verl, AReaL, ROLL or OpenRLHF can
express. The fake runs every call on all devices with one tensor-parallel degree and one
micro-batch count for all calls, no pipeline parallelism; its config is YAML naming the
model preset, the batch and that layout. Its space offers micro-batch count 3, which the
search tables do not hold (so the exact simulator prices those plans), and layouts the
batch cannot take (skipped as invalid).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import simulate
from planner.cli.main import main
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.plan import Plan, Provenance, load_plan, save_plan
from planner.domain.workflow_file import builtin_workflow
from planner.domain.yamlio import load_yaml_mapping
from planner.frameworks.target import ExportedConfig, ImportedConfig, Unexpressible
from planner.search.target_search import (
    SPACE_EXHAUSTED,
    TIME_LIMIT,
    search_target_space,
)

TARGET = "verl"          # the name the fake is installed under
BATCH = {"n_seqs": 8, "prompt_len": 16, "gen_len": 8, "ppo_minibatches": 2}
TINY_WORKFLOW = yaml.safe_dump({"algorithm": "ppo", "models": {
    role: "llama-tiny" for role in ("actor", "critic", "ref", "reward")}, "batch": BATCH})
FAKE_MICRO_BATCHES = (1, 2, 3)


def fake_executions(workflow, cluster, tp: int, micro_batches: int) -> dict[str, Execution]:
    everything = tuple(range(cluster.num_devices))
    dp = max(1, cluster.num_devices // tp)   # a tp above the device count stays invalid
    return {name: Execution(devices=everything, dp=dp, tp=tp, pp=1,
                            micro_batches=micro_batches) for name in workflow.call_order}


def make_fake_target(name: str) -> ModuleType:
    """A module implementing planner.frameworks.target's interface (module docstring)."""
    fake = ModuleType(f"planner.frameworks.{name}")
    fake.NAME, fake.TARGET_VERSION = name, "fake 1.0"
    fake.plan_staleness = lambda workflow: 0
    fake.KEY_SOURCES = ("tests/cli/test_export_import_cli.py",)

    def unexpressible(workflow, cluster, executions):
        reasons = []
        everything = tuple(range(cluster.num_devices))
        for call, ex in executions.items():
            if ex.devices != everything:
                reasons.append(f"{call} runs on devices {list(ex.devices)}; fake runs every "
                               f"call on all devices")
            if ex.pp > 1:
                reasons.append(f"{call} has pp {ex.pp}; fake has no pipeline parallelism")
        if len({(ex.tp, ex.micro_batches) for ex in executions.values()}) > 1:
            reasons.append("calls with different tp or micro-batches; fake has one of each")
        return reasons

    def export_config(workflow, cluster, executions, staleness=0):
        reasons = unexpressible(workflow, cluster, executions)
        if reasons:
            raise Unexpressible(name, reasons)
        ex = next(iter(executions.values()))
        text = yaml.safe_dump({"version": fake.TARGET_VERSION,
                               "model": workflow.models["actor"].spec.name,
                               "batch": workflow.batch.model_dump(include=set(BATCH)),
                               "tp": ex.tp, "micro_batches": ex.micro_batches})
        return ExportedConfig(text=text, file_suffix=".yaml")

    def import_config(path, cluster):
        data = load_yaml_mapping(Path(path))
        workflow = builtin_workflow("ppo", data["model"], data["batch"])
        executions = fake_executions(workflow, cluster, data["tp"], data["micro_batches"])
        return ImportedConfig(workflow, executions, notes=[f"read tp {data['tp']} for all"])

    def target_plans(workflow, cluster):
        for tp, micro_batches in itertools.product((1, 2), FAKE_MICRO_BATCHES):
            if tp <= cluster.num_devices:
                yield fake_executions(workflow, cluster, tp, micro_batches)

    fake.unexpressible, fake.export_config = unexpressible, export_config
    fake.import_config, fake.target_plans = import_config, target_plans
    fake.workflow_problems = lambda workflow: []
    return fake


@pytest.fixture
def fake_target(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    fake = make_fake_target(TARGET)
    monkeypatch.setitem(sys.modules, f"planner.frameworks.{TARGET}", fake)
    return fake


@pytest.fixture
def cli(capsys: pytest.CaptureFixture):
    """Run `plan ARGS...` in-process; return (exit code, stdout, stderr)."""

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def tiny_workflow():
    return builtin_workflow("ppo", "llama-tiny", BATCH)


def save_tiny_plan(path: Path, executions_of) -> Path:
    cluster = cluster_preset("cpu2")
    workflow = tiny_workflow()
    plan = Plan(workflow=workflow, cluster=cluster, executions=executions_of(workflow, cluster),
                provenance=Provenance(created_by="tests/cli"))
    assert plan.problems() == []
    save_plan(plan, path)
    return path


def expressible(workflow, cluster):
    return fake_executions(workflow, cluster, 2, 1)


def split(workflow, cluster):
    """The generation on device 0 alone with its own micro-batch count, everything else as
    the fake would have it: two features the fake cannot express."""
    executions = fake_executions(workflow, cluster, 1, 1)
    executions["actor_gen"] = Execution(devices=(0,), dp=1, tp=1, pp=1, micro_batches=2)
    return executions


def assert_one_line(code: int, err: str, *words: str, expected_code: int = 2) -> None:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, err)


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


# --- plan export -----------------------------------------------------------------------------

def test_export_writes_the_targets_config_atomically(cli, fake_target, tmp_path):
    plan = save_tiny_plan(tmp_path / "plan.yaml", expressible)
    out = tmp_path / "out" / "verl.yaml"
    code, stdout, err = cli("export", plan, "--to", TARGET, "--out", out)
    assert (code, err) == (0, "")
    assert f"wrote {out} (fake 1.0)" in stdout
    config = yaml.safe_load(out.read_text())
    assert config == {"version": "fake 1.0", "model": "llama-tiny", "batch": BATCH, "tp": 2,
                      "micro_batches": 1}
    assert no_temporary_files(out.parent)


def test_export_prints_to_stdout_without_out(cli, fake_target, tmp_path):
    plan = save_tiny_plan(tmp_path / "plan.yaml", expressible)
    code, stdout, err = cli("export", plan, "--to", TARGET)
    assert (code, err) == (0, "")
    assert yaml.safe_load(stdout)["tp"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["plan.yaml"]


def test_export_refuses_with_one_line_per_reason(cli, fake_target, tmp_path):
    plan = save_tiny_plan(tmp_path / "plan.yaml", split)
    out = tmp_path / "verl.yaml"
    code, stdout, err = cli("export", plan, "--to", TARGET, "--out", out)
    reasons = fake_target.unexpressible(load_plan(plan).workflow, load_plan(plan).cluster,
                                        load_plan(plan).executions)
    assert code == 1 and stdout == "" and len(reasons) == 2
    assert err.splitlines() == [f"plan export: verl cannot express: {r}" for r in reasons]
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["missing.yaml", "--to", TARGET], ["missing.yaml", "file not found"]),
    (["PLAN", "--to", TARGET, "--out", "."], ["--out", "directory"]),
])
def test_export_bad_input_is_one_line(cli, fake_target, tmp_path, monkeypatch, args, words):
    save_tiny_plan(tmp_path / "plan.yaml", expressible)
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli("export", *[a.replace("PLAN", "plan.yaml") for a in args])
    assert stdout == ""
    assert_one_line(code, err, *words)


def test_unknown_target_is_argparses_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export", str(tmp_path / "p.yaml"), "--to", "deepspeed-chat"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert_one_line(2, err, "--to", "deepspeed-chat", "verl", "openrlhf")


# --- plan import -----------------------------------------------------------------------------

def write_config(path: Path, tp: int = 2, micro_batches: int = 1, **changes) -> Path:
    data = {"model": "llama-tiny", "batch": BATCH, "tp": tp, "micro_batches": micro_batches}
    path.write_text(yaml.safe_dump({**data, **changes}))
    return path


def test_import_writes_a_priced_plan_and_prints_notes(cli, fake_target, tmp_path):
    config = write_config(tmp_path / "mine.yaml")
    out = tmp_path / "mine.plan.yaml"
    code, stdout, err = cli("import", config, "--from", TARGET, "--cluster", "cpu2",
                            "--out", out)
    assert (code, err) == (0, "")
    assert "read" in stdout and "fake 1.0" in stdout and "note: read tp 2 for all" in stdout
    assert "iteration:" in stdout and f"wrote {out}" in stdout
    plan = load_plan(out)
    cluster = cluster_preset("cpu2")
    assert plan.executions == fake_executions(plan.workflow, cluster, 2, 1)
    assert plan.workflow == tiny_workflow()
    estimate = simulate(plan.workflow, plan.cluster, plan.executions)
    assert plan.estimate["iteration_s"] == round(estimate.iteration_s, 4)
    assert plan.provenance.created_by == f"plan import --from {TARGET} mine.yaml"
    assert no_temporary_files(tmp_path)


def test_import_json_and_default_out(cli, fake_target, tmp_path, monkeypatch):
    write_config(tmp_path / "run_tiny.yaml")
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli("import", "run_tiny.yaml", "--from", TARGET, "--cluster", "cpu2",
                            "--json")
    assert (code, err) == (0, "")
    data = json.loads(stdout)
    assert data["plan_path"] == f"run_tiny-{TARGET}.plan.yaml" and data["feasible"]
    assert data["notes"] == ["read tp 2 for all"]
    assert data["source"] == {"config": "run_tiny.yaml", "target": TARGET, "version": "fake 1.0"}
    assert load_plan(tmp_path / data["plan_path"]).estimate["feasible"]


def test_import_of_a_config_that_does_not_fit_is_written_and_exits_1(cli, fake_target,
                                                                     tmp_path):
    # llama-7b in fp32 on two CPU devices of a few GiB each cannot fit
    config = write_config(tmp_path / "big.yaml", model="llama-7b")
    out = tmp_path / "big.plan.yaml"
    code, stdout, err = cli("import", config, "--from", TARGET, "--cluster", "cpu2",
                            "--out", out)
    assert code == 1 and err == ""
    assert "infeasible:" in stdout and "does not fit" in stdout
    assert load_plan(out).estimate["feasible"] is False


def test_import_of_a_layout_the_cluster_cannot_take_is_one_line(cli, fake_target, tmp_path):
    config = write_config(tmp_path / "mine.yaml", tp=4)   # 4 tensor-parallel ranks, 2 devices
    out = tmp_path / "mine.plan.yaml"
    code, stdout, err = cli("import", config, "--from", TARGET, "--cluster", "cpu2",
                            "--out", out)
    assert stdout == ""
    assert_one_line(code, err, str(config), "fake 1.0", "cpu2", "tp 4", "mesh has 2 devices")
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["missing.yaml", "--cluster", "cpu2"], ["missing.yaml", "file not found"]),
    (["CONFIG", "--cluster", "tpu-pod"], ["--cluster", "tpu-pod"]),
])
def test_import_bad_input_is_one_line(cli, fake_target, tmp_path, monkeypatch, args, words):
    write_config(tmp_path / "mine.yaml")
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("CONFIG", "mine.yaml") for a in args]
    code, stdout, err = cli("import", *argv, "--from", TARGET)
    assert stdout == ""
    assert_one_line(code, err, *words)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.yaml"]


# --- plan search --target / --baseline ---------------------------------------------------------

def test_target_search_prices_the_whole_space_and_keeps_the_exact_best(fake_target):
    workflow, cluster = tiny_workflow(), cluster_preset("cpu2")
    plans = list(fake_target.target_plans(workflow, cluster))
    result = search_target_space(workflow, cluster, plans, time_limit_s=600)
    # tp 1 (dp 2) with 3 micro-batches asks for 6 rows of the 4 a train step has: invalid
    assert (result.invalid_plans, result.plans_priced, result.stopped_by) == \
        (1, 5, SPACE_EXHAUSTED)
    assert result.fast_priced == 4       # micro-batch count 3 is not in the search tables
    costs = PlanCosts(workflow, cluster)
    exact = [simulate(workflow, cluster, p, costs=costs) for p in plans if
             not (p["actor_train"].dp == 2 and p["actor_train"].micro_batches == 3)]
    best = min(e.iteration_s for e in exact if e.feasible)
    assert result.best.estimate.iteration_s == pytest.approx(best, rel=1e-12)
    assert result.best.estimate.feasible


def test_target_search_stops_at_the_time_limit(fake_target):
    workflow, cluster = tiny_workflow(), cluster_preset("cpu2")

    def endless():
        while True:
            yield fake_executions(workflow, cluster, 2, 1)

    result = search_target_space(workflow, cluster, endless(), time_limit_s=0.05)
    assert result.stopped_by == TIME_LIMIT and result.best is not None
    assert result.plans_priced > 0


def test_search_target_writes_the_targets_best_and_its_ratio(cli, fake_target, tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_WORKFLOW)
    out = tmp_path / "best-verl.plan.yaml"
    code, stdout, err = cli("search", "--workflow", tmp_path / "tiny.yaml", "--cluster",
                            "cpu2", "--time-limit", "120", "--target", TARGET, "--out", out)
    assert code == 0, err
    plan = load_plan(out)
    assert plan.provenance.created_by == f"plan search --target {TARGET}"
    assert fake_target.unexpressible(plan.workflow, plan.cluster, plan.executions) == []
    assert "fake 1.0: 5 plans of its space priced" in stdout
    assert "verl can run a plan" in stdout and "than the best plan" in stdout
    assert f"plan export {out} --to {TARGET}" in stdout


def test_search_with_a_baseline_plan_and_json(cli, fake_target, tmp_path):
    config = write_config(tmp_path / "mine.yaml", tp=1, micro_batches=2)
    mine = tmp_path / "mine.plan.yaml"
    assert cli("import", config, "--from", TARGET, "--cluster", "cpu2", "--out", mine)[0] == 0
    out = tmp_path / "best.plan.yaml"
    # no --workflow / --cluster: the baseline plan's are searched
    code, stdout, err = cli("search", "--baseline", mine, "--time-limit", "120", "--target",
                            TARGET, "--json", "--out", out)
    assert code == 0, err
    data = json.loads(stdout)
    label = f"your plan {mine}"
    user = load_plan(mine)
    expected = simulate(user.workflow, user.cluster, user.executions).iteration_s
    assert data["baselines"][label] == pytest.approx(expected, rel=1e-12)
    assert data["baseline_plans"] == [{"path": str(mine), "iteration_s": data["baselines"][label],
                                       "feasible": True, "reason": None}]
    assert data["target"]["name"] == TARGET and data["target"]["version"] == "fake 1.0"
    # the fake's space holds the imported plan, so the best of it is no slower
    assert data["iteration_s"] <= expected + 1e-12
    assert data["target"]["slowdown_vs_best"] == pytest.approx(
        data["iteration_s"] / data["target"]["best_searched_iteration_s"])
    assert load_plan(out).workflow == user.workflow and load_plan(out).cluster == user.cluster


def test_search_text_lists_the_baseline_plan(cli, tmp_path):
    mine = save_tiny_plan(tmp_path / "mine.yaml", split)
    code, stdout, err = cli("search", "--baseline", mine, "--time-limit", "120", "--out",
                            tmp_path / "best.yaml")
    assert code == 0, err
    [line] = [x for x in stdout.splitlines() if f"your plan {mine}" in x]
    assert " s  -> " in line and "faster" in line


def test_baseline_for_another_cluster_or_workflow_is_one_line(cli, tmp_path):
    mine = save_tiny_plan(tmp_path / "mine.yaml", expressible)
    code, _, err = cli("search", "--baseline", mine, "--cluster", "cpu4",
                       "--time-limit", "1", "--out", tmp_path / "best.yaml")
    assert_one_line(code, err, str(mine), "cluster", "cpu2", "cpu4")
    code, _, err = cli("search", "--baseline", mine, "--workflow", "grpo", "--cluster",
                       "cpu2", "--time-limit", "1", "--out", tmp_path / "best.yaml")
    assert_one_line(code, err, str(mine), "workflow", "grpo")
    assert not (tmp_path / "best.yaml").exists()


def test_missing_baseline_file_is_one_line(cli, tmp_path):
    code, _, err = cli("search", "--baseline", tmp_path / "none.yaml", "--time-limit", "1",
                       "--out", tmp_path / "best.yaml")
    assert_one_line(code, err, "none.yaml", "file not found")



def test_search_target_refuses_a_workflow_the_target_cannot_run_before_pricing(cli, tmp_path):
    """AReaL has no reward-model engine: PPO with a reward model is refused with the
    target's reason, exit 1, before any candidate is priced (no plan written)."""
    code, _, err = cli("search", "--target", "areal", "--cluster", "cpu2", "--workflow",
                       "ppo", "--time-limit", "1", "--out", tmp_path / "best.yaml")
    assert code == 1
    [line] = err.strip().splitlines()
    assert line.startswith("plan search: areal cannot run this workflow: ") and "rew_inf" in line
    assert not (tmp_path / "best.yaml").exists()


FRAMEWORK_DATA = Path(__file__).parents[1] / "frameworks" / "data"


@pytest.mark.parametrize("target, config", [
    ("verl", FRAMEWORK_DATA / "verl" / "run_qwen2_5-7b_math_megatron_diff_tp.sh"),
    ("openrlhf", FRAMEWORK_DATA / "openrlhf" / "readme_ppo_example_v0.11.sh"),
])
def test_a_published_config_imports_and_is_a_baseline_of_the_search(cli, tmp_path, target,
                                                                      config):
    """verl's GRPO Qwen2.5-7B example and OpenRLHF's README command: imported on one node
    of eight H100 (written even where it does not fit), then priced beside the search's
    own baselines, with the search taking workflow and cluster from the imported plan."""
    mine = tmp_path / "mine.plan.yaml"
    code, stdout, err = cli("import", config, "--from", target, "--cluster", "h100x8",
                            "--out", mine)
    assert code in (0, 1), err
    assert mine.exists() and "iteration:" in stdout
    code, stdout, err = cli("search", "--baseline", mine, "--time-limit", "60", "--json",
                            "--out", tmp_path / "best.yaml")
    assert code == 0, err
    data = json.loads(stdout)
    [entry] = data["baseline_plans"]
    assert entry["path"] == str(mine) and entry["iteration_s"] > 0
    assert f"your plan {mine}" in data["baselines"]
