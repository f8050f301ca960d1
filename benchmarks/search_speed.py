"""Plan evaluations per second of the search, for PPO (four LLaMA-7B) on 8, 128, 512 H100.

Prints, per cluster: the time to build the search tables (price every candidate), the raw
evaluator throughput on batches of random plans, and the throughput inside a real MCMC run
(proposals, acceptance and bookkeeping included). Usage:
    python benchmarks/search_speed.py [--clusters h100x8,h100x128] [--mcmc-seconds 10]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from planner.domain.cluster import cluster_preset
from planner.domain.workflow_file import builtin_workflow
from planner.search.builder import full_tables, pruned_tables
from planner.search.fast_evaluator import FastEvaluator
from planner.search.mcmc import MCMCSettings, run_mcmc

BATCH_PLANS = 1 << 16


def evaluator_rate(evaluator: FastEvaluator, rng: np.random.Generator, repeats: int = 5) -> float:
    sizes = evaluator.tables.sizes
    choices = np.stack([rng.integers(0, s, BATCH_PLANS) for s in sizes], axis=1)
    evaluator.evaluate(choices[:16])          # compile / load the kernel outside the timing
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        evaluator.evaluate(choices)
        best = min(best, time.perf_counter() - start)
    return BATCH_PLANS / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clusters", default="h100x8,h100x128,h100x512")
    parser.add_argument("--mcmc-seconds", type=float, default=10.0)
    args = parser.parse_args()
    workflow = builtin_workflow("ppo")
    print(f"PPO, four llama-7b; {os.cpu_count()} CPU cores")
    for name in args.clusters.split(","):
        cluster = cluster_preset(name)
        start = time.perf_counter()
        tables, _ = pruned_tables(full_tables(workflow, cluster), {})
        build_s = time.perf_counter() - start
        evaluator = FastEvaluator(tables)
        raw = evaluator_rate(evaluator, np.random.default_rng(0))
        settings = MCMCSettings(seed=0, time_limit_s=args.mcmc_seconds,
                                plateau_steps=10**9)
        result = run_mcmc(evaluator, [], settings)
        in_search = result.evaluations / result.wall_s
        print(f"{name:>9}: {cluster.num_devices:4d} devices, candidates per call "
              f"{list(map(int, tables.sizes))}, tables built in {build_s:.1f} s; evaluator "
              f"{raw:,.0f} plans/s; inside MCMC {in_search:,.0f} plans/s "
              f"({result.evaluations:,} in {result.wall_s:.1f} s)")


if __name__ == "__main__":
    main()
