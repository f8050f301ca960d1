"""Calibration: the fit recovers known factors, the profile round-trips (with the processor
it was measured on, or without one, as older files) and changes estimates as the model
says, and bad input is one line with exit 2. Pure logic, no runtime runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmodel.calibration import Calibration, load_calibration, save_calibration
from costmodel.calibration_data import MeasuredPlan, predict_plan
from costmodel.calibration_fit import fit_calibration
from costmodel.call_cost import call_time_with_knobs
from costmodel.call_geometry import CostKnobs
from planner.cli.main import main
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.plan import Plan, Provenance, save_plan
from planner.domain.processor import Processor
from planner.domain.workflow_file import builtin_workflow
from runtime import machine

BATCH_A = {"n_seqs": 8, "prompt_len": 16, "gen_len": 8, "ppo_minibatches": 2}
BATCH_B = {"n_seqs": 16, "prompt_len": 24, "gen_len": 16, "ppo_minibatches": 2}

# (algorithm, cluster, batch, one layout for every call: devices, dp, tp, pp, micro-batches)
PLANS = [
    ("ppo", "cpu1", BATCH_A, ((0,), 1, 1, 1, 1)),
    ("grpo", "cpu1", {**BATCH_B, "group_size": 4}, ((0,), 1, 1, 1, 2)),
    ("ppo", "cpu2", BATCH_B, ((0, 1), 2, 1, 1, 1)),
    ("ppo", "cpu2", BATCH_A, ((0, 1), 1, 2, 1, 1)),
    ("grpo", "cpu4", {**BATCH_A, "group_size": 4}, ((0, 1, 2, 3), 2, 2, 1, 1)),
    ("ppo", "cpu4", BATCH_B, ((0, 1, 2, 3), 1, 1, 4, 4)),
]

KNOWN = Calibration(
    format_version=1, kind="calibration", device="cpu", recorded="2025-01-01",
    cores_per_node=2, process_slowdown=0.3, compute_scale={"generate": 1.3, "inference": 0.9, "train": 1.6},
    call_overhead_s={"generate": 0.004, "inference": 0.002, "train": 0.02},
    decode_step_s=0.0012, collective_latency_s=0.0008, move_scale=2.0, move_overhead_s=0.003)


def make_plan(algorithm: str, cluster: str, batch: dict, layout: tuple) -> Plan:
    workflow = builtin_workflow(algorithm, "llama-tiny", batch)
    devices, dp, tp, pp, m = layout
    ex = Execution(devices=devices, dp=dp, tp=tp, pp=pp, micro_batches=m)
    return Plan(workflow=workflow, cluster=cluster_preset(cluster),
                executions={c: ex for c in workflow.call_order},
                provenance=Provenance(created_by="tests/calibration"))


def synthetic_case(i: int, plan: Plan, truth: Calibration) -> MeasuredPlan:
    """A 'measurement' that is exactly what the model with `truth` predicts."""
    probe = MeasuredPlan(f"p{i}", plan, 1.0, {c: 1.0 for c in plan.workflow.call_order}, {})
    est = predict_plan(probe, truth)
    raw = predict_plan(probe, None)
    moves = {n: truth.move_time_s(t) for n, t in {**raw.realloc_times_s,
                                                  **raw.transfer_times_s}.items() if t > 0}
    return MeasuredPlan(f"p{i}", plan, est.iteration_s, dict(est.call_times_s), moves)


@pytest.fixture(scope="module")
def plans() -> list[Plan]:
    return [make_plan(*p) for p in PLANS]


def test_fit_recovers_known_factors(plans):
    cases = [synthetic_case(i, p, KNOWN) for i, p in enumerate(plans)]
    fit = fit_calibration(cases, cores_per_node=2).calibration
    for kind in ("generate", "inference", "train"):
        assert fit.compute_scale[kind] == pytest.approx(KNOWN.compute_scale[kind], rel=0.05)
        assert fit.call_overhead_s[kind] == pytest.approx(KNOWN.call_overhead_s[kind],
                                                          rel=0.15, abs=5e-4)
    assert fit.decode_step_s == pytest.approx(KNOWN.decode_step_s, rel=0.1)
    assert fit.collective_latency_s == pytest.approx(KNOWN.collective_latency_s, rel=0.1)
    # a file without oversubscribed_latency_s means latency x oversubscription (older files)
    assert fit.oversubscribed_latency_s == pytest.approx(KNOWN.collective_latency_s, rel=0.15)
    assert fit.process_slowdown == pytest.approx(KNOWN.process_slowdown, abs=0.03)
    assert fit.fit["call_rel_error_median_after"] < 0.01


def test_fit_separates_the_oversubscribed_latency(plans):
    """Machines differ: on one, a gloo step's latency grows with processes per core, on
    another not (docs/accuracy.md); the fit tells the two terms apart."""
    flat = KNOWN.model_copy(update={"oversubscribed_latency_s": 0.0})
    cases = [synthetic_case(i, p, flat) for i, p in enumerate(plans)]
    fit = fit_calibration(cases, cores_per_node=2).calibration
    assert fit.collective_latency_s == pytest.approx(KNOWN.collective_latency_s, rel=0.1)
    assert fit.oversubscribed_latency_s < 0.1 * KNOWN.collective_latency_s
    cpu4 = plans[4].executions["actor_gen"]
    assert flat.knobs("generate", cpu4, plans[4].cluster).latency_s == \
        pytest.approx(KNOWN.collective_latency_s)
    assert KNOWN.knobs("generate", cpu4, plans[4].cluster).latency_s == \
        pytest.approx(2 * KNOWN.collective_latency_s)


def test_fit_of_uncalibrated_measurements_is_neutral(plans):
    neutral = KNOWN.model_copy(update={
        "compute_scale": {"generate": 1.0, "inference": 1.0, "train": 1.0},
        "call_overhead_s": {"generate": 0.0, "inference": 0.0, "train": 0.0},
        "decode_step_s": 0.0, "collective_latency_s": 500e-6, "cores_per_node": 8,
        "process_slowdown": 0.0})
    cases = [synthetic_case(i, p, neutral) for i, p in enumerate(plans[:4])]
    fit = fit_calibration(cases, cores_per_node=8).calibration
    assert fit.compute_scale["train"] == pytest.approx(1.0, rel=0.02)
    assert fit.collective_latency_s == pytest.approx(500e-6, rel=0.05)


def test_profile_round_trips_and_scales_estimates(tmp_path, plans):
    path = tmp_path / "cal.yaml"
    save_calibration(KNOWN, path)
    assert load_calibration(path) == KNOWN
    plan = plans[0]  # cpu1: no communication, one process per core
    doubled = KNOWN.model_copy(update={
        "compute_scale": {"generate": 2.0, "inference": 2.0, "train": 2.0},
        "call_overhead_s": {"generate": 0.0, "inference": 0.0, "train": 0.0},
        "decode_step_s": 0.0, "collective_latency_s": None})
    case = MeasuredPlan("p", plan, 1.0, {c: 1.0 for c in plan.workflow.call_order}, {})
    raw, cal = predict_plan(case, None), predict_plan(case, doubled)
    for call, seconds in raw.call_times_s.items():
        assert cal.call_times_s[call] == pytest.approx(2 * seconds, rel=1e-9)
    assert cal.iteration_s == pytest.approx(2 * raw.iteration_s, rel=1e-6)


def test_oversubscription_slows_calls_on_more_devices_than_cores(plans):
    plan = plans[4]  # 4 devices on one node
    one_core_each = KNOWN.model_copy(update={"cores_per_node": 4})
    two_cores = KNOWN.model_copy(update={"cores_per_node": 2})
    ex = plan.executions["actor_gen"]
    assert one_core_each.oversubscription(ex, plan.cluster) == 1.0
    assert two_cores.oversubscription(ex, plan.cluster) == 2.0
    case = MeasuredPlan("p", plan, 1.0, {c: 1.0 for c in plan.workflow.call_order}, {})
    assert (predict_plan(case, two_cores).call_times_s["actor_train"]
            > predict_plan(case, one_core_each).call_times_s["actor_train"])


def test_slowdown_adds_per_co_running_process_up_to_the_cores(plans):
    cal = KNOWN.model_copy(update={"cores_per_node": 2, "process_slowdown": 0.25})
    one, two, four = (plans[i].executions["actor_train"] for i in (0, 2, 4))
    assert cal.slowdown(one, plans[0].cluster) == 1.0
    assert cal.slowdown(two, plans[2].cluster) == pytest.approx(1.25)
    # 4 processes on 2 cores: time-sliced (x2) and each shares with one co-running process
    assert cal.slowdown(four, plans[4].cluster) == pytest.approx(2 * 1.25)


def test_calibration_ignores_other_hardware(plans):
    other = KNOWN.model_copy(update={"device": "h100-sxm-80gb"})
    case = MeasuredPlan("p", plans[2], 1.0, {c: 1.0 for c in plans[2].workflow.call_order}, {})
    assert predict_plan(case, other).call_times_s == predict_plan(case, None).call_times_s


def write_case(tmp_path: Path, plan: Plan, truth: Calibration) -> Path:
    save_plan(plan, tmp_path / "run.yaml")
    case = synthetic_case(0, plan, truth)
    calls = [{"name": n, "dp": ex.dp, "tp": ex.tp, "pp": ex.pp,
              "micro_batches": ex.micro_batches, "time_s": case.call_times_s[n]}
             for n, ex in plan.executions.items()]
    trace = {"iteration_s": case.iteration_s, "calls": calls, "reallocations": [],
             "transfers": [{"name": n, "time_s": t} for n, t in case.move_times_s.items()]}
    path = tmp_path / "run.trace.json"
    path.write_text(json.dumps(trace))
    return path


def test_cli_calibrate_then_estimate_with_profile(tmp_path, plans, capsys):
    trace = write_case(tmp_path, plans[3], KNOWN)
    out = tmp_path / "cal.yaml"
    assert main(["calibrate", str(trace), "--out", str(out), "--cores", "2"]) == 0
    printed = capsys.readouterr().out
    assert "factors:" in printed and "run:actor_train" in printed
    assert main(["estimate", str(tmp_path / "run.yaml"), "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert main(["estimate", str(tmp_path / "run.yaml"), "--json", "--profile", str(out)]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    assert "calibration:cpu" in calibrated["compute_source"]
    assert calibrated["iteration_s"] != raw["iteration_s"]
    measured = json.loads(trace.read_text())["iteration_s"]
    assert abs(calibrated["iteration_s"] - measured) < abs(raw["iteration_s"] - measured)


def _one_line_exit_2(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err
    return err


def test_bad_trace_input_is_one_line_exit_2(tmp_path, plans, capsys):
    trace = write_case(tmp_path, plans[0], KNOWN)
    out = str(tmp_path / "cal.yaml")
    bad = tmp_path / "bad.trace.json"
    bad.write_text("{not json")
    assert "not JSON" in _one_line_exit_2(["calibrate", f"{tmp_path / 'run.yaml'}={bad}",
                                           "--out", out], capsys)
    assert "file not found" in _one_line_exit_2(["calibrate", str(tmp_path / "nope.trace.json"),
                                                 "--out", out], capsys)
    assert "cannot tell its plan" in _one_line_exit_2(["calibrate", str(tmp_path / "x.json"),
                                                       "--out", out], capsys)
    data = json.loads(trace.read_text())
    data["calls"][0]["time_s"] = -1
    bad.write_text(json.dumps(data))
    assert "time_s" in _one_line_exit_2(["calibrate", f"{tmp_path / 'run.yaml'}={bad}",
                                         "--out", out], capsys)
    other = make_plan("grpo", "cpu1", {**BATCH_A, "group_size": 4}, ((0,), 1, 1, 1, 1))
    save_plan(other, tmp_path / "other.yaml")
    assert "another plan" in _one_line_exit_2(["calibrate", f"{tmp_path / 'other.yaml'}={trace}",
                                               "--out", out], capsys)
    assert not Path(out).exists()


def test_bad_profile_for_estimate_is_one_line_exit_2(tmp_path, plans, capsys):
    save_plan(plans[0], tmp_path / "run.yaml")
    bad = tmp_path / "cal.yaml"
    save_calibration(KNOWN, bad)
    bad.write_text(bad.read_text().replace("train: 1.6", "train: -1.6"))
    err = _one_line_exit_2(["estimate", str(tmp_path / "run.yaml"), "--profile", str(bad)],
                           capsys)
    assert "compute_scale" in err


FAKE_CPU = Processor(kind="cpu", name="AMD EPYC 7B13", logical_cores=2, threads=1,
                     torch_version="2.13.0+cpu")


def test_calibration_round_trips_its_processor_and_loads_without_one(tmp_path):
    path = tmp_path / "cal.yaml"
    save_calibration(KNOWN.model_copy(update={"processor": FAKE_CPU}), path)
    assert load_calibration(path).processor == FAKE_CPU
    save_calibration(KNOWN, path)   # as files from before processors were recorded
    assert "processor" not in path.read_text()
    assert load_calibration(path).processor is None


def test_cli_calibrate_records_this_machines_processor(tmp_path, plans, capsys, monkeypatch):
    monkeypatch.setattr(machine, "processors_of_kind",
                        lambda kind: [FAKE_CPU] if kind == "cpu" else [])
    trace = write_case(tmp_path, plans[2], KNOWN)
    out = tmp_path / "cal.yaml"
    assert main(["calibrate", str(trace), "--out", str(out), "--cores", "2"]) == 0
    assert "processor: AMD EPYC 7B13, 2 logical cores" in capsys.readouterr().out
    assert load_calibration(out).processor == FAKE_CPU


def test_gloo_messages_share_the_cores_as_the_compute_does(plans):
    plan = plans[2]                     # cpu2, dp 2: the train call all-reduces gradients
    ex, cluster = plan.executions["actor_train"], plan.cluster
    call = plan.workflow.call_by_name["actor_train"]
    role = plan.workflow.models[call.model]

    def bandwidth_s(scale: float) -> float:
        knobs = CostKnobs(compute_scale=0.0, latency_s=0.0, bandwidth_scale=scale)
        return call_time_with_knobs(call, role, ex, plan.workflow.batch, cluster,
                                    knobs=knobs).time_s

    assert bandwidth_s(1.0) > 0
    assert bandwidth_s(2.5) == pytest.approx(2.5 * bandwidth_s(1.0), rel=1e-9)
    cal = KNOWN.model_copy(update={"process_slowdown": 0.25})
    assert cal.knobs("train", ex, cluster).bandwidth_scale == pytest.approx(1.25)
    # NCCL's copies run on the GPU, not on the cores the host processes share
    gpu = cluster_preset("h100x2")
    on_gpu = cal.model_copy(update={"device": "h100-sxm-80gb"})
    assert on_gpu.knobs("train", ex, gpu).bandwidth_scale == 1.0


def test_move_factors_are_fitted_to_reallocations_not_transfer_waits(plans):
    # a transfer's senders post eagerly, so its trace time is the receiver's short wait
    split = []
    for p in plans[2:4]:        # cpu2: generation and inference on device 0 alone
        alone = Execution(devices=(0,), dp=1, tp=1, pp=1)
        executions = {c: (ex if c.endswith("train") else alone)
                      for c, ex in p.executions.items()}
        split.append(p.model_copy(update={"executions": executions}))
    cases = []
    for i, p in enumerate(split):
        case = synthetic_case(i, p, KNOWN)
        assert any("realloc" in n for n in case.move_times_s)
        waits = {n: (1e-5 if "realloc" not in n else t) for n, t in case.move_times_s.items()}
        cases.append(MeasuredPlan(case.name, p, case.iteration_s, case.call_times_s, waits))
    fit = fit_calibration(cases, cores_per_node=2).calibration
    assert fit.move_scale == pytest.approx(KNOWN.move_scale, rel=0.05)
