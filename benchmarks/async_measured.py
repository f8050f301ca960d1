"""Asynchronous vs synchronous plans, searched and then measured on four CPU processes
(issue 14).

Cases: tiny GRPO and tiny PPO (llama-tiny in every role, 32 sequences, prompts of 16
tokens, long-tailed responses `gen_len: {mean: 16, max: 128}`,
planner/domain/length_distribution.py) on the cpu4 cluster (four processes on this machine).
`plan run` ends every response at a length drawn from that distribution
(runtime/executor/lengths.py), as the cost model prices it. For each case the benchmark:
1. searches twice with the shipped profile tables and calibration (profiles/cpu/, as
   `plan search --profile` would): the workflow with max_staleness 0 (the best
   synchronous plan) and with max_staleness 2 (every staleness 0..2, continuous
   batching allowed: the asynchronous search's plan); where the latter is of staleness 0,
   also its best plan of staleness >= 1 ("stale");
2. runs the plans with `plan run`'s executor, alternately, --rounds times each for
   --iterations iterations (the workflow's reward model, as priced), and prints per plan
   the estimated and the measured seconds per iteration (steady state, the simulator's
   rule), their ratio, and the measured and estimated speedup of the asynchronous
   search's plan over the synchronous one;
3. GRPO only: learning. The synchronous plan and the stale one (the asynchronous search's
   plan, or its best stale plan) run the programmatic task
   (--reward programmatic:target_token=7: reward = share of generated tokens equal to 7)
   for --learn-iterations iterations at --lr, with the roles' vocabulary cut to
   LEARNING_VOCAB tokens so that a random policy emits token 7 often enough to learn from
   (every layout of llama-tiny stays valid: heads and layers are unchanged); it prints the
   reward per iteration and the first iteration whose 3-iteration mean reward reaches
   LEARNED_REWARD, for each plan.

    .venv/bin/python benchmarks/async_measured.py [--case grpo|ppo|both] [--rounds N]
        [--iterations K] [--time-limit S] [--learn-iterations L] [--lr LR] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

CASES = {
    "grpo": {"actor": "llama-tiny", "ref": "llama-tiny", "reward": "llama-tiny"},
    "ppo": {"actor": "llama-tiny", "ref": "llama-tiny", "critic": "llama-tiny",
            "reward": "llama-tiny"},
}
BATCH = {"n_seqs": 32, "prompt_len": 16, "gen_len": {"mean": 16, "max": 128},
         "ppo_minibatches": 2}
GROUP_SIZE = 4
MAX_STALENESS = 2
SEARCH_TIME_LIMIT_S = 30.0
SEARCH_PLATEAU_STEPS = 500
ROUNDS = 2
ITERATIONS = 10
LEARN_ITERATIONS = 30
LEARNING_RATE = 1e-3
# 1/32 of a random policy's tokens are token 7: a few per sequence batch, enough signal
LEARNING_VOCAB = 32
LEARNED_REWARD = 0.5
TARGET_REWARD = "programmatic:target_token=7"


def workflow_of(case: str, max_staleness: int):
    from planner.domain.workflow_file import WorkflowFile, build_workflow
    batch = dict(BATCH, **({"group_size": GROUP_SIZE} if case == "grpo" else {}))
    return build_workflow(WorkflowFile(algorithm=case, models=CASES[case], batch=batch,
                                       max_staleness=max_staleness), f"case {case}")


def searched_plans(case: str, max_staleness: int, time_limit_s: float, calibration
                   ) -> dict[str, tuple]:
    """{"best": (plan, estimate)} of one search, and with max_staleness >= 1 also "stale":
    the best plan of staleness >= 1 where the best one has staleness 0."""
    from planner.domain.cluster import cluster_preset
    from planner.domain.plan import Plan, Provenance
    from planner.search.mcmc import MCMCSettings
    from planner.search.pipeline import search
    workflow, cluster = workflow_of(case, max_staleness), cluster_preset("cpu4")
    outcome = search(workflow, cluster, MCMCSettings(time_limit_s=time_limit_s,
                                                     plateau_steps=SEARCH_PLATEAU_STEPS),
                     calibration=calibration)

    def as_plan(priced):
        return (Plan(workflow=workflow, cluster=cluster, executions=priced.executions,
                     staleness=priced.staleness,
                     provenance=Provenance(created_by="benchmarks/async_measured")),
                priced.estimate)

    out = {"best": as_plan(outcome.best)}
    stale = [p for s, p in outcome.best_by_staleness.items() if s >= 1 and p.estimate.feasible]
    if outcome.best.staleness == 0 and stale:
        out["stale"] = as_plan(min(stale, key=lambda p: p.estimate.iteration_s))
    return out


def describe(plan) -> str:
    layout = " ".join(f"{c}={ex.layout_text()}@{','.join(map(str, ex.devices))}"
                      + ("/cont" if ex.decode_batching == "continuous" else "")
                      for c, ex in plan.executions.items())
    return f"s={plan.staleness} [{layout}]"


def measure(plans: dict, rounds: int, iterations: int, directory: Path
            ) -> dict[str, list[float]]:
    """Seconds per iteration of each plan, the plans run alternately round by round; each
    plan and the trace of its last run are written to `directory` (NAME.yaml,
    NAME.trace.json: `plan estimate` / `plan viz --trace` read them)."""
    from planner.domain.output_files import atomic_write_text
    from planner.domain.plan import save_plan
    from runtime.executor.config import RunConfig
    from runtime.executor.launcher import run_plan
    directory.mkdir(parents=True, exist_ok=True)
    measured = {name: [] for name in plans}
    for _ in range(rounds):
        for name, plan in plans.items():
            trace, _ = run_plan(plan, RunConfig(iterations=iterations), emit=lambda line: None)
            measured[name].append(trace["iteration_s"])
            save_plan(plan, directory / f"{name}.yaml")
            atomic_write_text(directory / f"{name}.trace.json", json.dumps(trace, indent=1))
    return measured


def learning_plan(plan):
    """The plan with every role's vocabulary cut to LEARNING_VOCAB (module docstring)."""
    from planner.domain.plan import Plan
    from planner.domain.workflow import Workflow
    wf = plan.workflow
    models = {r: m.model_copy(update={"spec": m.spec.model_copy(
        update={"name": f"{m.spec.name}-v{LEARNING_VOCAB}", "vocab_size": LEARNING_VOCAB})})
        for r, m in wf.models.items()}
    workflow = Workflow.model_validate(wf.model_copy(update={"models": models}).model_dump())
    return Plan.model_validate(plan.model_copy(update={"workflow": workflow}).model_dump())


def learning_curve(plan, iterations: int, lr: float) -> list[float]:
    from runtime.executor.config import RunConfig
    from runtime.executor.launcher import run_plan
    trace, _ = run_plan(learning_plan(plan), RunConfig(iterations=iterations, lr=lr,
                                                       reward=TARGET_REWARD),
                        emit=lambda line: None)
    return [it["metrics"]["rewards_mean"] for it in trace["iterations"]]


def iterations_to_learn(rewards: list[float]) -> int | None:
    """The first iteration (1-based) whose mean over it and the two before reaches
    LEARNED_REWARD, or None."""
    for i in range(2, len(rewards)):
        if sum(rewards[i - 2:i + 1]) / 3 >= LEARNED_REWARD:
            return i + 1
    return None


def main() -> None:
    from costmodel.calibration import load_calibration
    from planner.domain.paths import PROFILES_DIR
    from runtime.machine import cpu_processor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["grpo", "ppo", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--time-limit", type=float, default=SEARCH_TIME_LIMIT_S)
    parser.add_argument("--learn-iterations", type=int, default=LEARN_ITERATIONS)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    parser.add_argument("--dir", default="/tmp/async_measured",
                        help="where the plans and traces go (DIR/CASE/NAME.yaml, "
                             "NAME.trace.json)")
    args = parser.parse_args()
    calibration = load_calibration(Path(PROFILES_DIR) / "cpu" / "calibration.yaml")
    print(f"machine: {cpu_processor().describe()}; calibration of "
          f"{calibration.processor.name if calibration.processor else 'unknown'} "
          f"({calibration.cores_per_node} cores per node)", flush=True)
    for case in (["grpo", "ppo"] if args.case == "both" else [args.case]):
        print(f"\n{case}: llama-tiny, {BATCH} on cpu4", flush=True)
        plans, estimates = {}, {}
        for name, k in (("synchronous", 0), ("asynchronous", MAX_STALENESS)):
            found = searched_plans(case, k, args.time_limit, calibration)
            plans[name], estimates[name] = found["best"]
            if "stale" in found:
                plans["stale"], estimates["stale"] = found["stale"]
        for name, plan in plans.items():
            print(f"  {name:<12} estimated {estimates[name].iteration_s:.3f} s  "
                  f"{describe(plan)}", flush=True)
        measured = measure(plans, args.rounds, args.iterations, Path(args.dir) / case)
        for name in plans:
            median = statistics.median(measured[name])
            print(f"  {name:<12} measured {median:.3f} s (runs "
                  f"{' / '.join(f'{m:.3f}' for m in measured[name])}), estimate / measured "
                  f"{estimates[name].iteration_s / median:.3f}", flush=True)
        sync, asyn = (statistics.median(measured[n]) for n in ("synchronous", "asynchronous"))
        estimated = (estimates["synchronous"].iteration_s
                     / estimates["asynchronous"].iteration_s)
        print(f"  asynchronous speedup: measured {sync / asyn:.3f}x, estimated "
              f"{estimated:.3f}x", flush=True)
        if case != "grpo":
            continue
        learned = {}
        stale = "asynchronous" if plans["asynchronous"].staleness else "stale"
        for name, plan in (("synchronous", plans["synchronous"]), (stale, plans[stale])):
            rewards = learning_curve(plan, args.learn_iterations, args.lr)
            learned[name] = iterations_to_learn(rewards)
            print(f"  {name:<12} learning (vocab {LEARNING_VOCAB}, lr {args.lr:g}): reward "
                  f"{' '.join(f'{r:.3f}' for r in rewards)}; mean of 3 reaches "
                  f"{LEARNED_REWARD} at iteration {learned[name]}", flush=True)
        if None not in learned.values():
            print(f"  iterations to learn, {stale} (s = {plans[stale].staleness}) / "
                  f"synchronous: {learned[stale] / learned['synchronous']:.2f}", flush=True)


if __name__ == "__main__":
    main()
