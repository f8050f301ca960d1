"""Gap between the best plan and the lower bound (planner.search.lower_bound), per benchmark case.

Part 1, the enumerable spaces of benchmarks/search_quality.py: the exhaustive optimum of the
pruned space (fast evaluator), the bound and the gap (optimum / bound - 1). Beside it, the
fastest plan of the space when memory is ignored (every plan, fitting or not): the bound
only knows that each candidate fits alone, so optimum / fastest-ignoring-memory - 1 is the
part of the gap that memory sharing makes, and fastest-ignoring-memory / bound - 1 the
part the time relaxation leaves (reallocations, transfers, device sharing it does not see).

Part 2, the cases of benchmarks/search_speed.py (PPO, four LLaMA-7B) and of
search_quality.py part 2 (PPO 70B actor/ref + 7B critic/reward on 128 H100): `plan search`'s
pipeline with a time limit; the exact iteration time of the plan it finds, the bound on its
space and the gap. A search on a loaded machine evaluates fewer plans in its limit, so each
line carries the 1-minute load average (os.getloadavg) and the CPU count.

Usage: python benchmarks/lower_bound_gaps.py [--part 1|2|both] [--time-limit 15]
           [--clusters h100x8,h100x128] [--max-plans 20000000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from search_quality import CPU_BATCH, ENUMERABLE, big_ppo_workflow

from planner.domain.cluster import cluster_preset
from planner.domain.workflow_file import builtin_workflow
from planner.search.builder import full_tables, pruned_tables
from planner.search.exhaustive import BLOCK_PLANS
from planner.search.fast_evaluator import FastEvaluator
from planner.search.lower_bound import gap_fraction, lower_bound
from planner.search.mcmc import MCMCSettings
from planner.search.pipeline import search


def load_text() -> str:
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def optimum_and_fastest(evaluator: FastEvaluator) -> tuple[float, float]:
    """(best feasible iteration time, best iteration time fitting or not) over every plan."""
    sizes = tuple(evaluator.tables.sizes)
    total = int(np.prod(np.array(sizes, dtype=object)))
    best_feasible = best_any = np.inf
    for start in range(0, total, BLOCK_PLANS):
        flat = np.arange(start, min(start + BLOCK_PLANS, total), dtype=np.int64)
        result = evaluator.evaluate(np.stack(np.unravel_index(flat, sizes), axis=1))
        best_any = min(best_any, float(result.iteration_s.min()))
        if result.feasible.any():
            best_feasible = min(best_feasible, float(result.iteration_s[result.feasible].min()))
    return best_feasible, best_any


def part_one(max_plans: int) -> None:
    print("part 1: exhaustive optimum vs lower bound (enumerable spaces)")
    for algorithm, model, cluster_name in ENUMERABLE:
        batch = CPU_BATCH if cluster_name.startswith("cpu") else None
        workflow = builtin_workflow(algorithm, model=model, batch=batch)
        tables, _ = pruned_tables(full_tables(workflow, cluster_preset(cluster_name)), {})
        bound = lower_bound(tables).iteration_s
        label = f"  {algorithm:>4} {model:<11} {cluster_name:<7}"
        if tables.space_size() > max_plans:
            print(f"{label} bound {bound:8.2f} s; {tables.space_size():.3g} plans, above "
                  f"--max-plans, not enumerated")
            continue
        start = time.perf_counter()
        optimum, fastest = optimum_and_fastest(FastEvaluator(tables))
        print(f"{label} optimum {optimum:8.2f} s, bound {bound:8.2f} s, gap "
              f"{gap_fraction(optimum, bound) * 100:5.1f}% | ignoring memory: fastest "
              f"{fastest:8.2f} s, {gap_fraction(fastest, bound) * 100:5.1f}% above the bound "
              f"| {time.perf_counter() - start:.0f} s, {load_text()}")


def part_two(clusters: list[str], time_limit_s: float) -> None:
    print(f"part 2: plan search ({time_limit_s:g} s limit) vs lower bound")
    cases = [(f"ppo 4x llama-7b {name}", builtin_workflow("ppo"), name) for name in clusters]
    cases.append(("ppo 70b/7b h100x128", big_ppo_workflow(), "h100x128"))
    for label, workflow, cluster_name in cases:
        load_before = load_text()
        outcome = search(workflow, cluster_preset(cluster_name),
                         MCMCSettings(seed=0, time_limit_s=time_limit_s, plateau_steps=10**9))
        best = outcome.best.estimate.iteration_s
        bound = lower_bound(outcome.tables).iteration_s
        mcmc = outcome.mcmc
        print(f"  {label:<24} best {best:8.2f} s, bound {bound:8.2f} s, gap "
              f"{gap_fraction(best, bound) * 100:5.1f}% | {mcmc.evaluations:,} evaluations "
              f"in {mcmc.wall_s:.1f} s; {load_before} before, {load_text()} after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["1", "2", "both"], default="both")
    parser.add_argument("--time-limit", type=float, default=15.0)
    parser.add_argument("--clusters", default="h100x8,h100x128")
    parser.add_argument("--max-plans", type=int, default=20_000_000)
    args = parser.parse_args()
    if args.part in ("1", "both"):
        part_one(args.max_plans)
    if args.part in ("2", "both"):
        part_two(args.clusters.split(","), args.time_limit)


if __name__ == "__main__":
    main()
