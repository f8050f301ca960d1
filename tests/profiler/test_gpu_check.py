"""benchmarks/gpu_check.py on CPU with llama-tiny, so the device check cannot rot before a GPU
is lent: it profiles, builds and runs the one-device PPO and GRPO plans and writes a row per
call with measured and estimated time and memory."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_device_check_runs_on_cpu_and_reports_every_call(tmp_path, capsys):
    gpu_check = load_script()
    assert gpu_check.main(["--device", "cpu", "--model", "llama-tiny", "--quick",
                           "--iterations", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["hardware"] == "cpu" and report["model"] == "llama-tiny"
    calls = {(r["workflow"], r["call"]) for r in report["calls"]}
    assert calls == {("ppo", c) for c in ("actor_gen", "rew_inf", "ref_inf", "critic_inf",
                                          "actor_train", "critic_train")} | \
        {("grpo", c) for c in ("actor_gen", "rew_inf", "ref_inf", "actor_train")}
    for row in report["calls"]:
        assert row["measured_s"] > 0 and row["estimated_s"] > 0
        assert row["measured_peak_gib"] > 0 and row["estimated_peak_gib"] > 0
    table = capsys.readouterr().out
    assert "actor_train" in table and "gpu_check: llama-tiny on cpu" in table
