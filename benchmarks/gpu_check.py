"""The device check: on one accelerator, profile a model, run one-device PPO and GRPO plans
and hold every call's measured time and peak memory against the estimate.

Steps (all through the `plan` commands a user runs, into one run folder):
1. `plan profile --model M --device D --tp 1 --out RUN/profiles/<hardware>/<shape>.yaml`
   (the device's own table, its processor recorded);
2. per workflow (ppo, grpo; every role the model M, a small batch): a one-device cluster of
   the device's hardware, `plan baseline --kind symmetric` on it (every call on the device),
   `plan run --iterations N --trace`;
3. the estimate of the same plan priced with RUN's tables (costmodel.simulator over
   costmodel.plan_cost.PlanCosts(profiles_dir=RUN/profiles));
4. per call: measured seconds (the trace's median iteration share) against estimated, and
   the measured peak memory (the trace: CUDA max_memory_allocated, CPU live tensor bytes)
   against the estimate's per-call peak; a table on stdout and RUN/gpu_check.json.

On a GPU (bf16), the default llama-small-sized run fits in a few minutes; tests run it on
CPU with llama-tiny and --quick so that it cannot rot:

    .venv/bin/python benchmarks/gpu_check.py --device cuda --out /tmp/gpu_check
    .venv/bin/python benchmarks/gpu_check.py --device cpu --model llama-tiny --quick \\
        --out /tmp/gpu_check_cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from costmodel.plan_cost import PlanCosts  # noqa: E402
from costmodel.profile_table import model_shape_key  # noqa: E402
from costmodel.simulator import simulate  # noqa: E402
from planner.cli.main import main as plan  # noqa: E402
from planner.domain.modelspec import PRESETS  # noqa: E402
from planner.domain.plan import load_plan  # noqa: E402

GIB = 1024**3
WORKFLOWS = ("ppo", "grpo")
# Small enough for one device in seconds per iteration, large enough to time on a GPU.
BATCH = {"n_seqs": 16, "prompt_len": 64, "gen_len": 32, "ppo_minibatches": 2}
GROUP_SIZE = {"grpo": 4}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_step(argv: list[str]) -> None:
    """One `plan` command; stop the check with its exit code when it fails."""
    code = plan(argv)
    if code != 0:
        raise SystemExit(f"gpu_check: `plan {' '.join(argv)}` exited {code}")


def hardware_name(device: str, hardware: str | None) -> str:
    """The profiles/hardware spec of this machine's device (cpu, or guessed from the GPU)."""
    from runtime.profiling.profiler import device_setup
    return device_setup(device, hardware).hardware


def call_rows(plan_path: Path, trace_path: Path, profiles_dir: Path) -> list[dict]:
    """Per call: measured and estimated seconds and peak GiB (module docstring, step 4)."""
    plan_obj = load_plan(plan_path)
    costs = PlanCosts(plan_obj.workflow, plan_obj.cluster, profiles_dir)
    estimate = simulate(plan_obj.workflow, plan_obj.cluster, plan_obj.executions, costs=costs)
    trace = json.loads(trace_path.read_text())
    rows = []
    for call in trace["calls"]:
        name = call["name"]
        rows.append({"call": name, "measured_s": call["time_s"],
                     "estimated_s": estimate.call_times_s[name],
                     "measured_peak_gib": call["peak_memory_gib"],
                     "estimated_peak_gib": estimate.call_peak_memory_bytes[name] / GIB,
                     "memory_source": trace["memory_source"]})
    return rows


def check_workflow(algorithm: str, model: str, hardware: str, iterations: int, run: Path,
                   profiles_dir: Path) -> list[dict]:
    roles = ("actor", "critic", "ref", "reward") if algorithm == "ppo" else \
        ("actor", "ref", "reward")
    batch = {**BATCH, **({"group_size": GROUP_SIZE[algorithm]} if algorithm in GROUP_SIZE
                         else {})}
    workflow = write_yaml(run / f"{algorithm}.workflow.yaml", {
        "algorithm": algorithm, "models": {r: model for r in roles}, "batch": batch})
    cluster = write_yaml(run / "one-device.cluster.yaml", {
        "name": f"{hardware}x1", "nodes": 1, "devices_per_node": 1, "device": hardware})
    plan_path = run / f"{algorithm}.plan.yaml"
    run_step(["baseline", "--kind", "symmetric", "--workflow", str(workflow),
              "--cluster", str(cluster), "--out", str(plan_path)])
    trace_path = run / f"{algorithm}.trace.json"
    run_step(["run", str(plan_path), "--iterations", str(iterations),
              "--trace", str(trace_path)])
    return [{"workflow": algorithm, **row}
            for row in call_rows(plan_path, trace_path, profiles_dir)]


def print_table(rows: list[dict]) -> None:
    print(f"{'workflow':<8} {'call':<14} {'measured s':>11} {'estimated s':>12} {'ratio':>6}"
          f" {'measured GiB':>13} {'estimated GiB':>14} {'ratio':>6}")
    for r in rows:
        print(f"{r['workflow']:<8} {r['call']:<14} {r['measured_s']:>11.4f} "
              f"{r['estimated_s']:>12.4f} {r['estimated_s'] / r['measured_s']:>6.2f} "
              f"{r['measured_peak_gib']:>13.3f} {r['estimated_peak_gib']:>14.3f} "
              f"{r['estimated_peak_gib'] / max(r['measured_peak_gib'], 1e-9):>6.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--hardware", help="profiles/hardware name (default: guessed)")
    parser.add_argument("--model", default="llama-small", choices=sorted(PRESETS))
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="plan profile --quick (tests)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_check"),
                        help="run folder: tables, plans, traces, gpu_check.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    run = args.out
    run.mkdir(parents=True, exist_ok=True)
    hardware = hardware_name(args.device, args.hardware)
    profiles_dir = run / "profiles"
    table = profiles_dir / hardware / f"{model_shape_key(PRESETS[args.model])}.yaml"
    table.parent.mkdir(parents=True, exist_ok=True)
    run_step(["profile", "--model", args.model, "--device", args.device, "--tp", "1",
              "--hardware", hardware, "--out", str(table)] + (["--quick"] if args.quick else []))
    rows = []
    for algorithm in WORKFLOWS:
        rows += check_workflow(algorithm, args.model, hardware, args.iterations, run,
                               profiles_dir)
    print_table(rows)
    seconds = time.perf_counter() - start
    print(f"gpu_check: {args.model} on {hardware} ({args.device}), {seconds:.0f} s")
    (run / "gpu_check.json").write_text(json.dumps(
        {"device": args.device, "hardware": hardware, "model": args.model,
         "wall_s": seconds, "calls": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
