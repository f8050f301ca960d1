"""Asynchronous vs synchronous plans, as the planner searches them (issue 14).

Cases:
(a) long-tail reasoning: GRPO with Qwen2.5-7B as actor, reference and reward, 512 prompts x
    8 samples, prompts of 512 tokens, responses `gen_len: {mean: 2048, max: 16384}`
    (planner/domain/length_distribution.py), on 64 H100 (h100x64), max_staleness 2;
(b) PPO 70B actor / reference, 7B critic / reward (benchmarks/search_speed.py PPO_70B), fixed
    lengths 1,024 + 1,024, 1,024 sequences, on 128 H100 (h100x128), max_staleness 2.
For each case it runs `search` twice with the same settings: the workflow as given with
max_staleness 0 (the best synchronous plan) and with max_staleness 2 (every s in 0..2),
and prints both steady-state iterations, the speedup, the chosen staleness, the split
(devices of generation vs training) and each generate call's decode batching. Case (b)'s
claim: the asynchronous search's plan is never slower (s = 0 is in its space).

Where the speedup is below TARGET_SPEEDUP it prints where the devices of the asynchronous
plan sit idle in the steady state (from the estimate's per-device timeline, over the window
from the end of iteration s to the end of the last simulated iteration): the generation
devices waiting for training and the training devices waiting for generation, beside the
chains that set the period (generation G, the training chain T, the weight push P: with
disjoint meshes the period is about max(G, T) + P, tests/asyncrl/test_async_simulator.py),
and the same idle shares of the synchronous plan, so what asynchrony removed and what
remains can be read off.

Usage: python benchmarks/async_speedup.py [--time-limit S] [--case a|b]
(S: each search's --time-limit, default 600).
"""

from __future__ import annotations

import argparse
import time

from planner.domain.cluster import cluster_preset
from planner.domain.workflow import Workflow
from planner.domain.workflow_file import WorkflowFile, build_workflow
from planner.search.deadline import Deadline
from planner.search.mcmc import MCMCSettings
from planner.search.pipeline import PricedPlan, search

TARGET_SPEEDUP = 1.3          # the "at least 1.3x faster per iteration"
MAX_STALENESS = 2
QWEN = {"actor": "qwen2.5-7b", "ref": "qwen2.5-7b", "reward": "qwen2.5-7b"}
PPO_70B = {"actor": "llama-70b", "ref": "llama-70b", "critic": "llama-7b", "reward": "llama-7b"}
CASES = {
    "a": ("grpo", QWEN, {"n_seqs": 512 * 8, "group_size": 8, "prompt_len": 512,
                         "gen_len": {"mean": 2048, "max": 16384}, "ppo_minibatches": 4},
          "h100x64"),
    "b": ("ppo", PPO_70B, {"n_seqs": 1024, "prompt_len": 1024, "gen_len": 1024,
                           "ppo_minibatches": 4}, "h100x128"),
}


def workflow_of(case: str, max_staleness: int) -> Workflow:
    algorithm, models, batch, _ = CASES[case]
    return build_workflow(WorkflowFile(algorithm=algorithm, models=models, batch=batch,
                                       max_staleness=max_staleness), f"case {case}")


def searched(case: str, max_staleness: int, time_limit_s: float) -> PricedPlan:
    cluster = cluster_preset(CASES[case][3])
    began = time.perf_counter()
    outcome = search(workflow_of(case, max_staleness), cluster,
                     MCMCSettings(seed=0, time_limit_s=time_limit_s),
                     deadline=Deadline(time_limit_s))
    if outcome.best is None:
        raise SystemExit(f"case {case}, max_staleness {max_staleness}: no plan fits")
    per = {s: round(p.estimate.iteration_s, 2) for s, p in outcome.best_by_staleness.items()}
    print(f"  search max_staleness {max_staleness}: {time.perf_counter() - began:.0f} s, "
          f"stopped by {outcome.mcmc.stopped_by}" + (f", best per s {per}" if per else "")
          + (f", cut: {outcome.cut}" if outcome.cut else ""))
    return outcome.best


def split_text(plan: PricedPlan, workflow: Workflow) -> str:
    """Devices of each call kind of the rollout models (generation vs the rest)."""
    generation, training = set(), set()
    for name, execution in plan.executions.items():
        call = workflow.call_by_name[name]
        rollout = call.kind == "generate" and call.model in workflow.rollout_models()
        (generation if rollout else training).update(execution.devices)
    shared = len(generation & training)
    modes = ", ".join(f"{n} {plan.executions[n].decode_batching}"
                      for n in workflow.call_order
                      if workflow.call_by_name[n].kind == "generate")
    return (f"generation on {len(generation)} devices, the other calls on {len(training)}"
            f" ({shared} shared); decode batching: {modes}")


def idle_shares(plan: PricedPlan, workflow: Workflow) -> dict[str, float]:
    """Idle share of the generation devices and of the other devices over the steady-state
    window (module docstring); a shared device counts in both."""
    est = plan.estimate
    ends = {}
    for node, (_, end) in est.node_times.items():
        iteration = int(node.split("/", 1)[0])
        ends[iteration] = max(ends.get(iteration, 0.0), end)
    first, last = ends[est.staleness], max(ends.values())
    groups = {"generation": set(), "training": set()}
    for name, execution in plan.executions.items():
        call = workflow.call_by_name[name]
        rollout = call.kind == "generate" and call.model in workflow.rollout_models()
        groups["generation" if rollout else "training"].update(execution.devices)
    shares = {}
    for group, devices in groups.items():
        busy = sum(max(0.0, min(end, last) - max(start, first))
                   for d in devices for start, end, _ in est.timeline.get(d, []))
        shares[group] = 1.0 - busy / (len(devices) * (last - first))
    return shares


def chains_text(plan: PricedPlan, workflow: Workflow) -> str:
    """G (the rollout generate calls), T (every other call, summed) and P (the pushes)."""
    est = plan.estimate
    generation = sum(t for n, t in est.call_times_s.items()
                     if workflow.call_by_name[n].kind == "generate"
                     and workflow.call_by_name[n].model in workflow.rollout_models())
    training = sum(est.call_times_s.values()) - generation
    push = sum(est.push_times_s.values())
    return f"G {generation:.1f} s, T (other calls summed) {training:.1f} s, P {push:.1f} s"


def run_case(case: str, time_limit_s: float) -> None:
    print(f"case ({case}): {CASES[case][0]} {CASES[case][1]['actor']} on {CASES[case][3]}")
    sync = searched(case, 0, time_limit_s)
    asynchronous = searched(case, MAX_STALENESS, time_limit_s)
    workflow = workflow_of(case, MAX_STALENESS)
    speedup = sync.estimate.iteration_s / asynchronous.estimate.iteration_s
    print(f"  synchronous: {sync.estimate.iteration_s:.2f} s per iteration; "
          f"{split_text(sync, workflow)}")
    print(f"  asynchronous: {asynchronous.estimate.iteration_s:.2f} s per iteration "
          f"(staleness {asynchronous.staleness}, reached "
          f"{asynchronous.estimate.staleness_reached}); {split_text(asynchronous, workflow)}")
    print(f"  speedup {speedup:.2f}x; never slower: {speedup >= 1 - 1e-9}")
    if speedup < TARGET_SPEEDUP:
        for label, plan in (("synchronous", sync), ("asynchronous", asynchronous)):
            idle = idle_shares(plan, workflow)
            print(f"  idle in the steady state, {label}: generation devices "
                  f"{idle['generation']:.0%}, other devices {idle['training']:.0%}; "
                  f"{chains_text(plan, workflow)}")
        # idle slots inside a generate call (a batch's drain after its short rows end)
        # count as the call's busy time: the phases show how much of it is the drain
        for name in workflow.call_order:
            phases = asynchronous.estimate.call_phases_s.get(name, {})
            if workflow.call_by_name[name].kind == "generate":
                print(f"  {name} phases (asynchronous plan): "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time-limit", type=float, default=600.0, metavar="S",
                        help="each search's time limit in seconds (default 600)")
    parser.add_argument("--case", choices=sorted(CASES), action="append",
                        help="run only this case (repeatable; default all)")
    args = parser.parse_args()
    for case in args.case or sorted(CASES):
        run_case(case, args.time_limit)


if __name__ == "__main__":
    main()
