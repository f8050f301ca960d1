"""Searched plan vs the baselines, measured: tiny PPO (llama-tiny) on the cpu4 cluster.

Searches a plan (planner.search.pipeline, a short MCMC), takes the baselines the search builds
(symmetric, colocated, separate pools, ReaLHF heuristic), runs each with `plan run`'s
executor for ITERATIONS iterations and prints, per plan, the estimated and the measured
seconds per iteration (steady state, the simulator's rule) side by side. By default the
search and the estimates use the calibrated CPU profile (profiles/cpu/calibration.yaml, as
`plan search --profile` would); `--uncalibrated` uses the plain cost model.

--reprofile measures what the estimates read on this machine first, as a user on a new
machine would: the profile tables (`plan profile`: llama-tiny at every degree the search may
pick, llama-small at the degrees of the calibration plans) into DIR/profiles/ (over the
shipped profiles/ only with --into-shipped-profiles), then the calibration: the plans of
benchmarks/estimator_accuracy.py (--calibration-plans) run --repeats times into DIR and
fitted over those tables into DIR/calibration.yaml (with --uncalibrated: no calibration).
The search and the estimates then use both.

    .venv/bin/python benchmarks/plan_vs_baselines_measured.py [--uncalibrated]
        [--reprofile [--dir DIR] [--calibration-plans A,B] [--repeats N]]
"""

from __future__ import annotations

ITERATIONS = 4
BATCH = {"n_seqs": 16, "prompt_len": 32, "gen_len": 16, "ppo_minibatches": 2}
SEARCH_TIME_LIMIT_S = 20.0
SEARCH_PLATEAU_STEPS = 500


def calibration_on_this_machine(directory, names: list[str], repeats: int, remeasure: bool,
                                profiles_dir, out):
    """Run the calibration plans, fit over `profiles_dir`'s tables, write `out`."""
    from estimator_accuracy import measure, trace_paths

    from costmodel.calibration import save_calibration
    from costmodel.calibration_data import load_measured_plan, median_plan
    from costmodel.calibration_fit import fit_calibration
    from runtime.machine import cpu_processor
    measure(directory, names, remeasure, repeats)
    cases = [median_plan([load_measured_plan(directory / f"{n}.yaml", t)
                          for t in trace_paths(directory, n)], n) for n in names]
    fit = fit_calibration(cases, processor=cpu_processor(), profiles_dir=profiles_dir)
    save_calibration(fit.calibration, out)
    print(f"calibrated on {len(names)} plans: {fit.calibration.describe()}; wrote {out}",
          flush=True)
    return fit.calibration


def main() -> None:
    import argparse
    from pathlib import Path

    from estimator_accuracy import PLANS, REPEATS, build_plan
    from reprofile import (
        add_reprofile_options,
        plan_degrees,
        reprofile_dir,
        reprofile_tables,
        tables_processors,
    )

    from costmodel.calibration import load_calibration
    from planner.domain.cluster import cluster_preset
    from planner.domain.paths import PROFILES_DIR
    from planner.domain.plan import Plan, Provenance
    from planner.domain.workflow_file import builtin_workflow
    from planner.search.mcmc import MCMCSettings
    from planner.search.pipeline import search
    from runtime.executor.config import RunConfig
    from runtime.executor.launcher import run_plan
    from runtime.machine import cpu_processor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uncalibrated", action="store_true")
    add_reprofile_options(parser)
    parser.add_argument("--dir", default="/tmp/plan_vs_baselines",
                        help="with --reprofile: the run's tables, calibration plans and traces")
    parser.add_argument("--calibration-plans", default=",".join(PLANS),
                        help="with --reprofile: estimator_accuracy plans to calibrate on "
                             "(comma-separated; default all)")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help=f"with --reprofile: runs of each calibration plan (default "
                             f"{REPEATS})")
    parser.add_argument("--remeasure", action="store_true",
                        help="with --reprofile: run the calibration plans again even where "
                             "DIR has their traces")
    parser.add_argument("--time-limit", type=float, default=SEARCH_TIME_LIMIT_S,
                        help=f"search seconds (default {SEARCH_TIME_LIMIT_S:g})")
    args = parser.parse_args()
    workflow = builtin_workflow("ppo", "llama-tiny", BATCH)
    cluster = cluster_preset("cpu4")
    profiles_dir, calibration = PROFILES_DIR, None
    if args.reprofile:
        directory = Path(args.dir)
        names = args.calibration_plans.split(",")
        degrees = {**plan_degrees([build_plan(n) for n in names]), "llama-tiny": None}
        profiles_dir = reprofile_tables(degrees, reprofile_dir(directory,
                                                               args.into_shipped_profiles))
        if not args.uncalibrated:
            out = (PROFILES_DIR / "cpu" if args.into_shipped_profiles else directory) \
                / "calibration.yaml"
            calibration = calibration_on_this_machine(directory, names, args.repeats,
                                                      args.remeasure, profiles_dir, out)
    elif not args.uncalibrated:
        calibration = load_calibration(Path(PROFILES_DIR) / "cpu" / "calibration.yaml")
    print(f"machine: {cpu_processor().describe()}; profile tables {profiles_dir}: "
          f"{tables_processors(profiles_dir, ['llama-tiny'])}", flush=True)
    outcome = search(workflow, cluster, MCMCSettings(time_limit_s=args.time_limit,
                                                     plateau_steps=SEARCH_PLATEAU_STEPS),
                     calibration=calibration, profiles_dir=profiles_dir)
    candidates = {"searched": outcome.best, **outcome.baselines}
    rows = []
    for name, priced in candidates.items():
        if priced is None:
            rows.append(f"{name:<12} (no feasible plan)")
            continue
        plan = Plan(workflow=workflow, cluster=cluster, executions=priced.executions,
                    provenance=Provenance(created_by="benchmarks/plan_vs_baselines_measured"))
        trace, _ = run_plan(plan, RunConfig(iterations=ITERATIONS), emit=lambda line: None)
        layout = " ".join(f"{c}={ex.layout_text()}@{','.join(map(str, ex.devices))}"
                          for c, ex in priced.executions.items())
        rows.append(f"{name:<12} estimated {priced.estimate.iteration_s:7.3f} s  measured "
                    f"{trace['iteration_s']:7.3f} s  [{layout}]")
    model = "uncalibrated cost model" if calibration is None else "calibrated cost model"
    print(f"ppo llama-tiny {BATCH} on cpu4, {ITERATIONS} iterations, {model}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
