"""`plan estimate` and `plan search` say on stderr (one line, not an error) when a profile
table or the calibration they price with was measured on another processor than this
machine's, naming both, and say nothing when it matches; a CUDA plan on a machine without
a GPU says nothing. The machine's processors are faked (runtime.machine.processors_of_kind)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from costmodel.calibration import Calibration, save_calibration
from costmodel.profile_table import model_shape_key
from planner.cli.main import main
from planner.cli.processor_check import warn_if_measured_elsewhere
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.modelspec import PRESETS
from planner.domain.paths import PROFILES_DIR
from planner.domain.plan import Plan, Provenance, save_plan
from planner.domain.processor import Processor
from planner.domain.workflow_file import builtin_workflow
from planner.domain.yamlio import dump_yaml, load_yaml_mapping
from runtime import machine

HERE = Processor(kind="cpu", name="Intel(R) Xeon(R) Platinum 8488C", logical_cores=2,
                 threads=1)
ELSEWHERE = Processor(kind="cpu", name="AMD EPYC 7B13", logical_cores=16, threads=1)
H100 = Processor(kind="cuda", name="NVIDIA H100 80GB HBM3", driver_version="550.54.15")
A100 = Processor(kind="cuda", name="NVIDIA A100-SXM4-80GB", driver_version="550.54.15")
BATCH = {"n_seqs": 8, "prompt_len": 16, "gen_len": 8, "ppo_minibatches": 2}
TINY_WORKFLOW = ("algorithm: ppo\n"
                 "models: {actor: llama-tiny, critic: llama-tiny, ref: llama-tiny, "
                 "reward: llama-tiny}\n"
                 f"batch: {BATCH}\n".replace("'", ""))


def calibration(device: str, processor: Processor | None) -> Calibration:
    return Calibration(format_version=1, kind="calibration", device=device,
                       recorded="2026-01-01", processor=processor, cores_per_node=2,
                       compute_scale={"generate": 1, "inference": 1, "train": 1},
                       call_overhead_s={"generate": 0, "inference": 0, "train": 0},
                       decode_step_s=0, move_scale=1, move_overhead_s=0)


def machine_has(monkeypatch, cpu: Processor, gpus: list[Processor] = ()) -> None:
    monkeypatch.setattr(machine, "processors_of_kind",
                        lambda kind: [cpu] if kind == "cpu" else list(gpus))


@pytest.fixture()
def tiny_plan(tmp_path) -> Path:
    workflow = builtin_workflow("ppo", "llama-tiny", BATCH)
    ex = Execution(devices=(0, 1), dp=2, tp=1, pp=1)
    path = tmp_path / "plan.yaml"
    save_plan(Plan(workflow=workflow, cluster=cluster_preset("cpu2"),
                   executions={c: ex for c in workflow.call_order},
                   provenance=Provenance(created_by="tests/cli")), path)
    return path


def recorded_calibration(tmp_path: Path, processor: Processor | None) -> Path:
    path = tmp_path / "calibration.yaml"
    save_calibration(calibration("cpu", processor), path)
    return path


def test_estimate_names_both_processors_when_the_calibration_differs(
        tiny_plan, tmp_path, monkeypatch, capsys):
    machine_has(monkeypatch, HERE)
    cal = recorded_calibration(tmp_path, ELSEWHERE)
    assert main(["estimate", str(tiny_plan), "--profile", str(cal)]) == 0
    out, err = capsys.readouterr()
    assert "iteration:" in out
    [line] = [x for x in err.splitlines() if str(cal) in x]
    assert line.startswith("plan estimate: measured on another CPU")
    assert "AMD EPYC 7B13, 16 logical cores" in line
    assert "Intel(R) Xeon(R) Platinum 8488C, 2 logical cores" in line
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize("recorded,says", [(HERE, False), (None, True)],
                         ids=["same processor", "file without a processor"])
def test_estimate_is_quiet_about_a_calibration_of_this_processor(
        tiny_plan, tmp_path, monkeypatch, capsys, recorded, says):
    machine_has(monkeypatch, HERE)
    cal = recorded_calibration(tmp_path, recorded)
    assert main(["estimate", str(tiny_plan), "--profile", str(cal)]) == 0
    err = capsys.readouterr().err
    assert (f"{cal} (unknown processor)" in err) is says, err
    assert (str(cal) in err) is says, err


def test_search_says_it_too(tmp_path, monkeypatch, capsys):
    machine_has(monkeypatch, HERE)
    workflow = tmp_path / "tiny.yaml"
    workflow.write_text(TINY_WORKFLOW)
    cal = recorded_calibration(tmp_path, ELSEWHERE)
    assert main(["search", "--workflow", str(workflow), "--cluster", "cpu2", "--time-limit",
                 "1", "--profile", str(cal), "--out", str(tmp_path / "p.yaml"), "--json"]) == 0
    [line] = [x for x in capsys.readouterr().err.splitlines() if str(cal) in x]
    assert line.startswith("plan search: ") and "AMD EPYC 7B13" in line


def table_recorded_on(profiles_dir: Path, processor: Processor) -> Path:
    """The shipped llama-tiny table, as if measured on `processor`, under profiles_dir."""
    name = f"{model_shape_key(PRESETS['llama-tiny'])}.yaml"
    data = load_yaml_mapping(PROFILES_DIR / "cpu" / name)
    data["processor"] = processor.as_mapping()
    path = profiles_dir / "cpu" / name
    path.parent.mkdir(parents=True)
    path.write_text(dump_yaml(data))
    return path


@pytest.mark.parametrize("table_on,says", [(HERE, False), (ELSEWHERE, True)])
def test_profile_tables_are_compared_too(tmp_path, monkeypatch, table_on, says):
    machine_has(monkeypatch, HERE)
    table = table_recorded_on(tmp_path / "profiles", table_on)
    stream = io.StringIO()
    warn_if_measured_elsewhere("plan estimate", builtin_workflow("ppo", "llama-tiny", BATCH),
                               cluster_preset("cpu2"), calibration("cpu", HERE), "cal.yaml",
                               tmp_path / "profiles", stream)
    expected = (f"plan estimate: measured on another CPU than this machine's "
                f"({HERE.describe()}): {table} ({ELSEWHERE.describe()}); its times may not "
                f"hold here (re-measure with plan profile and plan calibrate)\n")
    assert stream.getvalue() == (expected if says else "")


@pytest.mark.parametrize("gpus,says", [([], False), ([H100], False), ([A100], True)],
                         ids=["no GPU here", "same GPU", "another GPU"])
def test_a_cuda_plan_is_compared_only_on_a_machine_with_a_gpu(tmp_path, monkeypatch, gpus,
                                                                says):
    machine_has(monkeypatch, HERE, gpus)
    stream = io.StringIO()
    warn_if_measured_elsewhere("plan search", builtin_workflow("ppo", "llama-7b"),
                               cluster_preset("h100x8"), calibration("h100-sxm-80gb", H100),
                               "h100-calibration.yaml", tmp_path / "no-tables", stream)
    line = stream.getvalue()
    assert bool(line) is says, line
    if says:
        assert "another GPU" in line and H100.describe() in line and A100.describe() in line
