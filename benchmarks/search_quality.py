"""Search quality: MCMC against the exhaustive optimum, and against today's baselines.

Part 1 (enumerable spaces: GRPO and DPO on up to 8 H100, PPO on 2 CPU processes, and the
spaces of GRPO and PPO plans at staleness 1 and 2): the exhaustive optimum of the pruned space, then
MCMC from random starting plans (no baseline seeds) for 10 seeds with a 2 s limit each.
Prints, per space, the worst gap to the optimum and the slowest time to get within 0.5%.
Times exclude building the tables (pricing every candidate), which both searches share.

Part 2: PPO with a LLaMA-70B actor (and reference) and LLaMA-7B critic and reward on
16 nodes x 8 H100; `plan search`'s pipeline with a 60 s limit; prints the exact-simulator
iteration time of the found plan and of every baseline, and the ratios.

Usage: python benchmarks/search_quality.py [--part 1|2|both] [--seeds 10] [--only-async]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from planner.domain.cluster import cluster_preset
from planner.domain.workflow import BatchSpec
from planner.domain.workflow_file import WorkflowFile, build_workflow, builtin_workflow
from planner.search.builder import full_tables, pruned_tables
from planner.search.exhaustive import exhaustive_search
from planner.search.fast_evaluator import FastEvaluator
from planner.search.mcmc import MCMCSettings, run_mcmc
from planner.search.pipeline import search

# PPO on H100: every space of <= 8 devices with a plan that fits has more than 10^9 plans
# after pruning, so PPO is enumerated on the CPU cluster (tiny models, a small batch), where
# the runtime runs plans too. None means the workflow's default batch.
CPU_BATCH = {"n_seqs": 64, "prompt_len": 128, "gen_len": 128, "ppo_minibatches": 2}
# (algorithm, model, cluster, staleness s): s >= 1 enumerates the space of plans at
# staleness s (the workflow's max_staleness s, so continuous batching is offered; the
# search's MCMC runs once per s, planner/search/pipeline.py, each against its optimum).
ENUMERABLE = [
    ("ppo", "llama-tiny", "cpu2", 0),
    ("ppo", "llama-small", "cpu2", 0),
    ("grpo", "llama-7b", "h100x4", 0),
    ("grpo", "llama-13b", "h100x8", 0),
    ("grpo", "llama3-8b", "h100x8", 0),
    ("grpo", "llama-7b", "h100x8", 0),
    ("dpo", "llama-7b", "h100x8", 0),
    ("dpo", "llama-13b", "h100x8", 0),
    ("dpo", "llama3-8b", "h100x8", 0),
    ("ppo", "llama-tiny", "cpu2", 1),
    ("grpo", "llama-7b", "h100x4", 1),
    ("grpo", "llama-7b", "h100x4", 2),
]
TOLERANCE = 0.005
MCMC_LIMIT_S = 2.0
MAX_EXHAUSTIVE_PLANS = 200_000_000   # about two minutes of enumeration on 2 cores


def time_to_within(history: list[tuple[float, float]], target: float) -> float:
    for wall_s, best in history:
        if best <= target:
            return wall_s
    return float("inf")


def part_one(num_seeds: int, only_async: bool = False) -> None:
    print(f"part 1: MCMC vs exhaustive optimum ({num_seeds} seeds, {MCMC_LIMIT_S:g} s limit, "
          f"random starts)")
    all_pass = True
    for algorithm, model, cluster_name, staleness in ENUMERABLE:
        if only_async and not staleness:
            continue
        batch = CPU_BATCH if cluster_name.startswith("cpu") else None
        workflow = builtin_workflow(algorithm, model=model, batch=batch,
                                    max_staleness=staleness)
        tables, _ = pruned_tables(full_tables(workflow, cluster_preset(cluster_name)), {})
        evaluator = FastEvaluator(tables, staleness=staleness)
        space = f"{algorithm:>4} {model:<10} {cluster_name:<7} s={staleness}"
        start = time.perf_counter()
        size = int(np.prod(tables.sizes.astype(object)))
        if size > MAX_EXHAUSTIVE_PLANS:
            print(f"  {space} plans {size:>12,}: over the "
                  f"{MAX_EXHAUSTIVE_PLANS:,} plans enumerated here, not compared")
            continue
        truth = exhaustive_search(evaluator, max_plans=MAX_EXHAUSTIVE_PLANS)
        exhaustive_s = time.perf_counter() - start
        target = truth.best_iteration_s * (1 + TOLERANCE)
        gaps, times = [], []
        for seed in range(num_seeds):
            result = run_mcmc(evaluator, [], MCMCSettings(seed=seed, time_limit_s=MCMC_LIMIT_S))
            gaps.append(result.best_iteration_s / truth.best_iteration_s - 1)
            times.append(time_to_within(result.history, target))
        passed = sum(g <= TOLERANCE and t <= MCMC_LIMIT_S for g, t in zip(gaps, times))
        all_pass &= passed == num_seeds
        print(f"  {space} plans {truth.num_plans:>12,} "
              f"(feasible {truth.num_feasible:,}) exhaustive {exhaustive_s:6.1f} s, optimum "
              f"{truth.best_iteration_s:8.2f} s | MCMC worst gap {max(gaps) * 100:.3f}%, "
              f"slowest to within 0.5% {max(times):.2f} s, {passed}/{num_seeds} seeds pass")
    print(f"  all spaces pass: {all_pass}")


def big_ppo_workflow():
    spec = WorkflowFile(algorithm="ppo",
                        models={"actor": "llama-70b", "ref": "llama-70b",
                                "critic": "llama-7b", "reward": "llama-7b"},
                        batch=BatchSpec(n_seqs=512, prompt_len=1024, gen_len=1024,
                                        ppo_minibatches=4))
    return build_workflow(spec, "benchmark workflow")


def part_two(time_limit_s: float) -> None:
    cluster = cluster_preset("h100x128")
    print(f"part 2: PPO 70B actor/ref + 7B critic/reward on {cluster.describe()}, "
          f"{time_limit_s:g} s search")
    start = time.perf_counter()
    outcome = search(big_ppo_workflow(), cluster,
                     MCMCSettings(seed=0, time_limit_s=time_limit_s, plateau_steps=10**9))
    total_s = time.perf_counter() - start
    best = outcome.best.estimate.iteration_s
    mcmc = outcome.mcmc
    print(f"  tables built in {outcome.build_s:.1f} s; MCMC {mcmc.evaluations:,} plans in "
          f"{mcmc.wall_s:.1f} s ({mcmc.evaluations / mcmc.wall_s:,.0f}/s), stopped by "
          f"{mcmc.stopped_by}; total {total_s:.1f} s")
    print(f"  searched plan: {best:.2f} s per iteration")
    for name, priced in outcome.baselines.items():
        if priced is None or not priced.estimate.feasible:
            print(f"  {name:<18} does not fit")
        else:
            seconds = priced.estimate.iteration_s
            print(f"  {name:<18} {seconds:8.2f} s  ratio baseline/searched {seconds / best:.3f}")
    for name, ex in outcome.best.executions.items():
        print(f"    {name:<14} devices {ex.devices[0]:>3}-{ex.devices[-1]:<3} {ex.layout_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["1", "2", "both"], default="both")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--only-async", action="store_true",
                        help="part 1: only the spaces at staleness >= 1")
    args = parser.parse_args()
    if args.part in ("1", "both"):
        part_one(args.seeds, args.only_async)
    if args.part in ("2", "both"):
        part_two(args.time_limit)


if __name__ == "__main__":
    main()
