"""Searched plan vs the baselines, measured: tiny PPO (llama-tiny) on the cpu4 cluster.

Searches a plan (planner.search.pipeline, a short MCMC), takes the baselines the search builds
(symmetric, colocated, separate pools, ReaLHF heuristic), runs each with `plan run`'s
executor for ITERATIONS iterations and prints, per plan, the estimated and the measured
seconds per iteration (steady state, the simulator's rule) side by side. By default the
search and the estimates use the calibrated CPU profile (profiles/cpu/calibration.yaml, as
`plan search --profile` would); `--uncalibrated` uses the plain cost model.

    .venv/bin/python benchmarks/plan_vs_baselines_measured.py [--uncalibrated]
"""

from __future__ import annotations

ITERATIONS = 4
BATCH = {"n_seqs": 16, "prompt_len": 32, "gen_len": 16, "ppo_minibatches": 2}


def main() -> None:
    import argparse
    from pathlib import Path

    from costmodel.calibration import load_calibration
    from planner.domain.cluster import cluster_preset
    from planner.domain.paths import PROFILES_DIR
    from planner.domain.plan import Plan, Provenance
    from planner.domain.workflow_file import builtin_workflow
    from planner.search.mcmc import MCMCSettings
    from planner.search.pipeline import search
    from runtime.executor.config import RunConfig
    from runtime.executor.launcher import run_plan

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uncalibrated", action="store_true")
    args = parser.parse_args()
    calibration = None if args.uncalibrated else load_calibration(
        Path(PROFILES_DIR) / "cpu" / "calibration.yaml")
    workflow = builtin_workflow("ppo", "llama-tiny", BATCH)
    cluster = cluster_preset("cpu4")
    outcome = search(workflow, cluster, MCMCSettings(time_limit_s=20.0, plateau_steps=500),
                     calibration=calibration)
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
