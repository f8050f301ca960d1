"""Estimator accuracy on the local CPU gloo cluster: estimate vs measurement, per call and per
iteration, before and after calibration, with the fit's plans held out (leave-one-out).

1. Measure: runs each plan of PLANS (tiny PPO and GRPO on llama-tiny / llama-small, cpu1,
   cpu2, cpu4, various dp/tp/pp/micro-batch layouts) with the runtime (`plan run`'s
   executor) for ITERATIONS iterations; writes <dir>/<name>.yaml and <name>.r<k>.trace.json
   (skipped when the trace is there already, unless --remeasure).
2. Leave-one-out: for each plan, fit the calibration (costmodel.calibration) on the
   other plans' traces and estimate the held-out plan with it.
3. Prints, per plan, the measured, uncalibrated and held-out calibrated seconds per
   iteration; the per-call median / worst relative error; Kendall tau of the plans'
   iteration times (estimate vs measurement); and one summary line. Each plan runs
   --repeats times (rounds over all plans); its times are the medians over the repeats.
   --fit-all also writes the calibration fitted on every plan (--out, default
   profiles/cpu/calibration.yaml; DIR/calibration.yaml with --reprofile).

--reprofile first measures, on this machine, the profile tables of the model shapes and
tensor-parallel degrees the plans use (`plan profile`, benchmarks/reprofile.py) into
DIR/profiles/ (over the shipped profiles/ only with --into-shipped-profiles), and fits and
estimates with them, as a user on a new machine would; it also writes the calibration fitted
on every plan. The report names this machine's processor and the one each table was
measured on.

    .venv/bin/python benchmarks/estimator_accuracy.py [--dir DIR] [--remeasure] [--fit-all]
        [--reprofile [--into-shipped-profiles]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from reprofile import (
    add_reprofile_options,
    plan_degrees,
    reprofile_dir,
    reprofile_tables,
    tables_processors,
)

from planner.domain.paths import PROFILES_DIR

ITERATIONS = 4
REPEATS = 3
# Before each run, wait up to QUIET_WAIT_S for the CPU to be at most QUIET_BUSY busy
# (other jobs share this 2-core machine).
QUIET_BUSY = 0.25
QUIET_WAIT_S = 60.0
BATCH_A = {"n_seqs": 8, "prompt_len": 16, "gen_len": 8, "ppo_minibatches": 2}
BATCH_B = {"n_seqs": 16, "prompt_len": 24, "gen_len": 16, "ppo_minibatches": 2}
GRPO_A = {**BATCH_A, "group_size": 4}
GRPO_B = {**BATCH_B, "group_size": 4}

# name: (algorithm, model, cluster, batch, {call or "*": layout "dXtYpZmW@first-last"})
PLANS = {
    "ppo-tiny-cpu1": ("ppo", "llama-tiny", "cpu1", BATCH_A, {"*": "d1t1p1m1@0-0"}),
    "grpo-tiny-cpu1-m2": ("grpo", "llama-tiny", "cpu1", GRPO_B, {"*": "d1t1p1m2@0-0"}),
    "ppo-small-cpu1": ("ppo", "llama-small", "cpu1", BATCH_A, {"*": "d1t1p1m1@0-0"}),
    "ppo-tiny-cpu2-dp2": ("ppo", "llama-tiny", "cpu2", BATCH_B, {"*": "d2t1p1m1@0-1"}),
    "ppo-tiny-cpu2-tp2": ("ppo", "llama-tiny", "cpu2", BATCH_A, {"*": "d1t2p1m1@0-1"}),
    "grpo-tiny-cpu2-mixed": ("grpo", "llama-tiny", "cpu2", GRPO_A, {
        "actor_gen": "d2t1p1m1@0-1", "rew_inf": "d1t1p1m1@0-0", "ref_inf": "d1t1p1m1@1-1",
        "actor_train": "d1t1p2m2@0-1"}),
    "grpo-small-cpu2-tp2": ("grpo", "llama-small", "cpu2", GRPO_A, {"*": "d1t2p1m1@0-1"}),
    "ppo-tiny-cpu4-sym": ("ppo", "llama-tiny", "cpu4", BATCH_B, {"*": "d2t2p1m1@0-3"}),
    "ppo-tiny-cpu4-split": ("ppo", "llama-tiny", "cpu4", BATCH_A, {
        "actor_gen": "d4t1p1m1@0-3", "rew_inf": "d2t1p1m1@0-1", "ref_inf": "d1t1p2m1@2-3",
        "critic_inf": "d1t2p1m1@0-1", "actor_train": "d1t2p2m2@0-3",
        "critic_train": "d1t2p1m1@2-3"}),
    "grpo-tiny-cpu4-dp4": ("grpo", "llama-tiny", "cpu4", GRPO_B, {"*": "d4t1p1m1@0-3"}),
    "grpo-tiny-cpu4-pp": ("grpo", "llama-tiny", "cpu4", GRPO_A, {
        "actor_gen": "d2t2p1m1@0-3", "rew_inf": "d1t1p1m1@0-0", "ref_inf": "d1t1p1m1@1-1",
        "actor_train": "d1t1p4m4@0-3"}),
    "ppo-small-cpu4-sym": ("ppo", "llama-small", "cpu4", BATCH_A, {"*": "d2t2p1m1@0-3"}),
}


def parse_layout(text: str):
    from planner.domain.layout import Execution
    layout, devices = text.split("@")
    first, last = (int(x) for x in devices.split("-"))
    d, rest = layout[1:].split("t")
    t, rest = rest.split("p")
    p, m = rest.split("m")
    return Execution(devices=tuple(range(first, last + 1)), dp=int(d), tp=int(t), pp=int(p),
                     micro_batches=int(m))


def build_plan(name: str):
    from planner.domain.cluster import cluster_preset
    from planner.domain.plan import Plan, Provenance
    from planner.domain.workflow_file import builtin_workflow
    algorithm, model, cluster, batch, layouts = PLANS[name]
    workflow = builtin_workflow(algorithm, model, batch)
    executions = {c: parse_layout(layouts.get(c, layouts.get("*", ""))) for c in
                  workflow.call_order}
    return Plan(workflow=workflow, cluster=cluster_preset(cluster), executions=executions,
                provenance=Provenance(created_by="benchmarks/estimator_accuracy"))


def cpu_busy_fraction(seconds: float = 0.5) -> float:
    """Fraction of the machine's CPU time busy over `seconds` (/proc/stat), 0 if unknown."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(limit_s: float = QUIET_WAIT_S) -> float:
    """Wait (up to limit_s) until other jobs leave the CPU mostly idle; the busy fraction."""
    deadline = time.perf_counter() + limit_s
    busy = cpu_busy_fraction()
    while busy > QUIET_BUSY and time.perf_counter() < deadline:
        time.sleep(2.0)
        busy = cpu_busy_fraction()
    return busy


def trace_paths(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.r*.trace.json"))


def measure(directory: Path, names: list[str], remeasure: bool, repeats: int) -> None:
    """Rounds over all plans (a slow spell of the machine then hits one repeat of many
    plans, not every repeat of one); each run waits for a quiet CPU first."""
    from planner.domain.output_files import atomic_write_text
    from planner.domain.plan import save_plan
    from runtime.executor.config import RunConfig
    from runtime.executor.launcher import run_plan
    directory.mkdir(parents=True, exist_ok=True)
    for r in range(repeats):
        for name in names:
            trace_path = directory / f"{name}.r{r}.trace.json"
            if trace_path.is_file() and not remeasure:
                continue
            plan = build_plan(name)
            save_plan(plan, directory / f"{name}.yaml")
            busy = wait_for_quiet()
            start = time.perf_counter()
            trace, _ = run_plan(plan, RunConfig(iterations=ITERATIONS), emit=lambda line: None)
            atomic_write_text(trace_path, json.dumps(trace, indent=1))
            load = os.getloadavg()[0]
            print(f"measured {name} r{r}: {trace['iteration_s']:.3f} s/iteration "
                  f"({time.perf_counter() - start:.0f} s run; CPU {busy:.0%} busy before, "
                  f"load average {load:.2f} after)", flush=True)


TIMELINE_PLAN = "ppo-tiny-cpu4-split"


def draw_figures(out: Path, rows: list[dict], call_rows: list[dict], directory: Path,
                 calibration, profiles_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    measured = [r["measured_s"] for r in call_rows]
    ax.scatter(measured, [r["raw_s"] for r in call_rows], marker="x", color="tab:red",
               label="uncalibrated")
    ax.scatter(measured, [r["calibrated_s"] for r in call_rows], marker="o", facecolor="none",
               edgecolor="tab:blue", label="calibrated (plan held out of the fit)")
    low, high = min(measured) / 2, max(measured) * 2
    ax.plot([low, high], [low, high], color="grey", lw=1, label="estimate = measured")
    ax.fill_between([low, high], [low * 0.85, high * 0.85], [low * 1.15, high * 1.15],
                    color="grey", alpha=0.15, label="+-15%")
    ax.set(xscale="log", yscale="log", xlabel="measured call time (s)",
           ylabel="estimated call time (s)",
           title=f"Per call: {len(call_rows)} calls of {len(rows)} plans, CPU gloo cluster")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_scatter.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9.0, 4.5))
    x = range(len(rows))
    width = 0.27
    ax.bar([i - width for i in x], [r["measured_s"] for r in rows], width, label="measured",
           color="black")
    ax.bar(list(x), [r["raw_s"] for r in rows], width, label="uncalibrated estimate",
           color="tab:red")
    ax.bar([i + width for i in x], [r["calibrated_s"] for r in rows], width,
           label="calibrated, held out", color="tab:blue")
    ax.set_xticks(list(x), [r["plan"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set(yscale="log", ylabel="seconds per iteration (steady state)",
           title="Per iteration: measured vs estimated (leave-one-plan-out calibration)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_iterations.png", dpi=120)
    plt.close(fig)

    from costmodel.calibration_data import load_measured_plan, predict_plan
    from planner.domain.augment import augmented_graph
    from planner.figures.timeline import draw_timeline
    from planner.figures.trace import load_trace
    trace = trace_paths(directory, TIMELINE_PLAN)[0]
    case = load_measured_plan(directory / f"{TIMELINE_PLAN}.yaml", trace)
    est = predict_plan(case, calibration, profiles_dir)
    graph = augmented_graph(case.plan.workflow, case.plan.executions, 3)
    title = (f"{TIMELINE_PLAN}: calibrated estimate (filled, fitted without this plan) and "
             f"measured run (hatched)\nestimate {est.iteration_s:.2f} s per iteration, "
             f"measured {case.iteration_s:.2f} s")
    draw_timeline(case.plan, est, graph, out / "accuracy_timeline.png", title,
                  load_trace(trace, case.plan))


def relative_error(estimated: float, measured: float) -> float:
    return abs(estimated - measured) / measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/estimator_accuracy", help="plans and traces")
    parser.add_argument("--remeasure", action="store_true", help="run every plan again")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help=f"runs per plan; per-call and per-iteration medians (default "
                             f"{REPEATS})")
    parser.add_argument("--plans", default=",".join(PLANS), help="comma-separated subset")
    parser.add_argument("--fit-all", action="store_true",
                        help="also fit on every plan and write --out")
    parser.add_argument("--out", help="where --fit-all writes (default "
                                      "profiles/cpu/calibration.yaml; DIR/calibration.yaml "
                                      "with --reprofile)")
    add_reprofile_options(parser)
    parser.add_argument("--profile-tables", metavar="DIR", type=Path,
                        help="estimate with the tables a run re-profiled before "
                             "(<DIR>/cpu/*.yaml, e.g. DIR/profiles of an earlier --reprofile "
                             "run) instead of measuring them again")
    parser.add_argument("--json", metavar="FILE", help="write per-plan / per-call rows here")
    parser.add_argument("--figures", metavar="DIR",
                        help="draw accuracy_scatter.png, accuracy_iterations.png and "
                             "accuracy_timeline.png (TIMELINE_PLAN, held-out calibrated "
                             "estimate over its measured trace) into DIR")
    args = parser.parse_args()
    names = args.plans.split(",")
    directory = Path(args.dir)
    profiles_dir = args.profile_tables or PROFILES_DIR
    if args.reprofile and args.profile_tables:
        parser.error("--reprofile measures the tables; --profile-tables reuses measured ones: "
                     "give one of them")
    if args.reprofile:
        profiles_dir = reprofile_tables(plan_degrees([build_plan(n) for n in names]),
                                        reprofile_dir(directory, args.into_shipped_profiles))
        args.fit_all = True
    args.out = Path(args.out) if args.out else default_calibration_path(args, directory)
    measure(directory, names, args.remeasure, args.repeats)
    report(directory, names, args, profiles_dir)


def default_calibration_path(args, directory: Path) -> Path:
    """Next to the tables it is fitted over: the shipped one unless re-profiled into DIR."""
    if args.reprofile and not args.into_shipped_profiles:
        return directory / "calibration.yaml"
    return PROFILES_DIR / "cpu" / "calibration.yaml"


def report(directory: Path, names: list[str], args, profiles_dir: Path = PROFILES_DIR) -> None:
    from scipy.stats import kendalltau

    from costmodel.calibration import save_calibration
    from costmodel.calibration_data import load_measured_plan, median_plan, predict_plan
    from costmodel.calibration_fit import fit_calibration
    from runtime.machine import cpu_processor
    processor = cpu_processor()
    models = sorted(plan_degrees([build_plan(n) for n in names]))
    print(f"machine: {processor.describe()}; profile tables {profiles_dir}: "
          f"{tables_processors(profiles_dir, models)}")

    def fit(cases):
        return fit_calibration(cases, processor=processor, profiles_dir=profiles_dir)

    measured = {n: median_plan([load_measured_plan(directory / f"{n}.yaml", t)
                                for t in trace_paths(directory, n)], n) for n in names}
    rows, call_rows = [], []
    for held_out in names:
        held_out_fit = fit([measured[n] for n in names if n != held_out])
        case = measured[held_out]
        raw = predict_plan(case, None, profiles_dir)
        cal = predict_plan(case, held_out_fit.calibration, profiles_dir)
        rows.append({"plan": held_out, "measured_s": case.iteration_s,
                     "raw_s": raw.iteration_s, "calibrated_s": cal.iteration_s})
        for call, seconds in case.call_times_s.items():
            call_rows.append({"plan": held_out, "call": call, "measured_s": seconds,
                              "raw_s": raw.call_times_s[call],
                              "calibrated_s": cal.call_times_s[call]})
    print(f"{'plan':<22} {'measured':>9} {'raw est':>9} {'err':>6} {'held-out cal':>12} {'err':>6}")
    for r in rows:
        print(f"{r['plan']:<22} {r['measured_s']:9.3f} {r['raw_s']:9.3f} "
              f"{relative_error(r['raw_s'], r['measured_s']):6.0%} {r['calibrated_s']:12.3f} "
              f"{relative_error(r['calibrated_s'], r['measured_s']):6.0%}")

    def summary(key: str) -> dict:
        it = [relative_error(r[key], r["measured_s"]) for r in rows]
        per_call = [relative_error(r[key], r["measured_s"]) for r in call_rows]
        tau = kendalltau([r[key] for r in rows], [r["measured_s"] for r in rows]).statistic
        return {"iteration_median": statistics.median(it), "iteration_max": max(it),
                "call_median": statistics.median(per_call), "call_max": max(per_call),
                "kendall_tau": float(tau),
                "within_10pct": sum(e <= 0.10 for e in it)}

    for key, label in (("raw_s", "uncalibrated"), ("calibrated_s", "held-out calibrated")):
        s = summary(key)
        print(f"{label}: per-iteration error median {s['iteration_median']:.1%} max "
              f"{s['iteration_max']:.1%} ({s['within_10pct']}/{len(rows)} within 10%); per-call "
              f"error median {s['call_median']:.1%} max {s['call_max']:.1%}; Kendall tau "
              f"{s['kendall_tau']:.2f} over {len(rows)} plans")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": processor.as_mapping(), "profiles_dir": str(profiles_dir),
             "plans": rows, "calls": call_rows}, indent=1))
    if args.figures:
        timeline_fit = fit([measured[n] for n in names if n != TIMELINE_PLAN])
        draw_figures(Path(args.figures), rows, call_rows, directory,
                     timeline_fit.calibration, profiles_dir)
    if args.fit_all:
        all_fit = fit(list(measured.values()))
        save_calibration(all_fit.calibration, Path(args.out))
        print(f"fitted on all {len(names)} plans: {all_fit.calibration.describe()}; wrote "
              f"{args.out}")


if __name__ == "__main__":
    main()
