"""Search speed: table building and plan evaluations per second, from 8 to 4,096 devices.

Cases (CASES): PPO on four llama-7b on h100x8 (the first figures of docs/benchmarks.md); the
scale cases of issue 13: PPO with a 70B actor and reference and a 7B critic and reward
(1,024 sequences of 1,024 + 1,024 tokens) on 128, 512, 1,024 and 4,096 H100 and on a
heterogeneous cluster of H100 and A100 node groups; GRPO and PPO with llama-3.1-405b actors
on 1,024 and 4,096 H100.

Prints, per case: the time to build the search tables (price every candidate and prune, as
`plan search` does; numba's start is paid first, apart: load_table_kernels), the raw
evaluator throughput on batches of random plans, and the throughput inside a real MCMC run
(proposals, acceptance and bookkeeping included; the shares of its plans whose time alone
or whose memory bounds decided the step without the memory rule,
planner/search/mcmc_kernel._take_step), each with the machine's load
average (os.getloadavg, 1 minute) when it was taken: on a shared machine the figures are
only comparable at a low load, so each rate is also given per CPU-second of this process
(time.process_time, all its threads): the work one evaluation costs, which the other
programs on the machine change less than the wall-clock rate.
Usage:
    python benchmarks/search_speed.py [--cases ppo-70b-h100x128,...] [--mcmc-seconds 10]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np

from planner.domain.cluster import cluster_preset
from planner.domain.workflow import BatchSpec
from planner.domain.workflow_file import WorkflowFile, build_workflow, builtin_workflow
from planner.search.builder import full_tables, pruned_tables
from planner.search.fast_evaluator import FastEvaluator
from planner.search.mcmc import MCMCSettings, run_mcmc, warm_up

BATCH_PLANS = 1 << 16
# The batch: 1,024 sequences of 1,024 prompt + 1,024 generated tokens.
SCALE_BATCH = {"n_seqs": 1024, "prompt_len": 1024, "gen_len": 1024, "ppo_minibatches": 4}


@dataclass(frozen=True)
class Case:
    algorithm: str
    models: dict[str, str] | None          # role -> preset; None: four llama-7b (built-in)
    cluster: str
    batch: dict | None = None

    def workflow(self):
        if self.models is None:
            return builtin_workflow(self.algorithm)
        batch = dict(self.batch or SCALE_BATCH)
        if self.algorithm == "grpo":
            batch.setdefault("group_size", 8)
        return build_workflow(WorkflowFile(algorithm=self.algorithm, models=self.models,
                                           batch=BatchSpec(**batch)), self.algorithm)


PPO_70B = {"actor": "llama-70b", "ref": "llama-70b", "critic": "llama-7b", "reward": "llama-7b"}
PPO_405B = {"actor": "llama-3.1-405b", "ref": "llama-3.1-405b", "critic": "llama-70b",
            "reward": "llama-70b"}
GRPO_405B = {"actor": "llama-3.1-405b", "ref": "llama-3.1-405b", "reward": "llama-70b"}

CASES: dict[str, Case] = {
    "ppo-7b-h100x8": Case("ppo", None, "h100x8"),
    "ppo-70b-h100x128": Case("ppo", PPO_70B, "h100x128"),
    "ppo-70b-h100x512": Case("ppo", PPO_70B, "h100x512"),
    "ppo-70b-h100x1024": Case("ppo", PPO_70B, "h100x1024"),
    "ppo-70b-h100x4096": Case("ppo", PPO_70B, "h100x4096"),
    "ppo-70b-h100x64+a100x64": Case("ppo", PPO_70B, "h100x64+a100x64"),
    "grpo-405b-h100x1024": Case("grpo", GRPO_405B, "h100x1024"),
    "ppo-405b-h100x1024": Case("ppo", PPO_405B, "h100x1024"),
    "grpo-405b-h100x4096": Case("grpo", GRPO_405B, "h100x4096"),
}
DEFAULT_CASES = "ppo-7b-h100x8,ppo-70b-h100x128,ppo-70b-h100x512,ppo-70b-h100x1024"


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def evaluator_rate(evaluator: FastEvaluator, rng: np.random.Generator,
                   repeats: int = 5) -> tuple[float, float]:
    """(plans per second, plans per CPU-second): the best of `repeats` batches."""
    sizes = evaluator.tables.sizes
    choices = np.stack([rng.integers(0, s, BATCH_PLANS) for s in sizes], axis=1)
    evaluator.evaluate(choices[:16])          # compile / load the kernel outside the timing
    best_s = best_cpu_s = np.inf
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        evaluator.evaluate(choices)
        best_s = min(best_s, time.perf_counter() - start)
        best_cpu_s = min(best_cpu_s, time.process_time() - start_cpu)
    return BATCH_PLANS / best_s, BATCH_PLANS / best_cpu_s


def load_table_kernels() -> float:
    """Seconds to build the smallest case's tables once, untimed in the figures: the first
    numba kernel a process runs pays numba's own start (~0.5 s, its registries and the
    on-disk cache), which `plan search` pays once however large the tables, and which
    would otherwise land in whichever case comes first."""
    start = time.perf_counter()
    pruned_tables(full_tables(builtin_workflow("ppo"), cluster_preset("h100x8"),
                              price_unfit=False), {})
    return time.perf_counter() - start


def run_case(name: str, case: Case, mcmc_seconds: float, early_rejection: bool) -> None:
    workflow, cluster = case.workflow(), cluster_preset(case.cluster)
    start = time.perf_counter()
    tables, _ = pruned_tables(full_tables(workflow, cluster, price_unfit=False), {})
    build_s = time.perf_counter() - start
    build_load = load()
    evaluator = FastEvaluator(tables)
    raw, raw_cpu = evaluator_rate(evaluator, np.random.default_rng(0))
    raw_load = load()
    moves = warm_up(evaluator)
    settings = MCMCSettings(seed=0, time_limit_s=mcmc_seconds, plateau_steps=10**9,
                            early_rejection=early_rejection)
    start_cpu = time.process_time()
    result = run_mcmc(evaluator, [], settings, moves=moves)
    in_search = result.evaluations / result.wall_s
    in_search_cpu = result.evaluations / (time.process_time() - start_cpu)
    decided = result.decided_on_time / result.evaluations
    on_bounds = result.decided_on_bounds / result.evaluations
    print(f"{name}: {cluster.num_devices} devices, candidates per call "
          f"{list(map(int, tables.sizes))}; tables built in {build_s:.1f} s ({build_load}); "
          f"evaluator {raw:,.0f} plans/s, {raw_cpu:,.0f}/CPU-s ({raw_load}); inside MCMC "
          f"{in_search:,.0f} plans/s, {in_search_cpu:,.0f}/CPU-s ({result.evaluations:,} in "
          f"{result.wall_s:.1f} s, {decided:.0%} decided on the time alone, {on_bounds:.0%} "
          f"on the memory bounds, {load()})",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT_CASES,
                        help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--mcmc-seconds", type=float, default=10.0)
    parser.add_argument("--no-early-rejection", action="store_true",
                        help="run the memory rule on every step (the same chains, slower)")
    args = parser.parse_args()
    names = args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; valid: {', '.join(CASES)}")
    print(f"{os.cpu_count()} CPU cores; table kernels loaded in {load_table_kernels():.1f} s "
          "(not counted below)")
    for name in names:
        run_case(name, CASES[name], args.mcmc_seconds, not args.no_early_rejection)


if __name__ == "__main__":
    main()
