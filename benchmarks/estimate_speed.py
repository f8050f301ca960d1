"""Single-plan estimates per second: PPO (llama-7b x 4 roles) on h100x8, h100x128, h100x512.

Each cluster gets a valid plan: every call on all devices with the first layout (tp 8,
pp 1 or 2, micro-batches 1..8) that fits in memory. Prints, per cluster, the cold estimate
time (empty caches: schedules and call costs computed) and warm estimates per second
(shared PlanCosts, as the search uses it), and the estimated iteration time.
"""

from __future__ import annotations

import time

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import memory_problem, simulate
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.plan import Plan, Provenance
from planner.domain.workflow_file import builtin_workflow


def fitting_plan(workflow, cluster) -> Plan:
    devices = tuple(range(cluster.num_devices))
    for pp in (1, 2):
        for m in (1, 2, 4, 8):
            for gen_m in (1, 2, 4, 8):
                dp = cluster.num_devices // (8 * pp)
                train = Execution(devices=devices, dp=dp, tp=8, pp=pp, micro_batches=m)
                gen = Execution(devices=devices, dp=dp, tp=8, pp=pp, micro_batches=gen_m)
                executions = {name: gen if workflow.call_by_name[name].kind != "train"
                              else train for name in workflow.call_order}
                plan = Plan(workflow=workflow, cluster=cluster, executions=executions,
                            provenance=Provenance(created_by="benchmarks/estimate_speed.py"))
                if not plan.problems() and memory_problem(plan) is None:
                    return plan
    raise SystemExit(f"no fitting layout for {cluster.name}")


def main() -> None:
    workflow = builtin_workflow("ppo")
    for name in ("h100x8", "h100x128", "h100x512"):
        cluster = cluster_preset(name)
        plan = fitting_plan(workflow, cluster)
        start = time.perf_counter()
        costs = PlanCosts(workflow, cluster)
        est = simulate(workflow, cluster, plan.executions, costs=costs)
        cold_s = time.perf_counter() - start
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < 2.0:
            simulate(workflow, cluster, plan.executions, costs=costs)
            runs += 1
        warm_rate = runs / (time.perf_counter() - start)
        layouts = sorted({ex.layout_text() for ex in plan.executions.values()})
        print(f"{name}: layouts {layouts}: cold {cold_s * 1e3:.0f} ms, warm "
              f"{warm_rate:.0f} estimates/s, iteration {est.iteration_s:.1f} s, "
              f"feasible {est.feasible}")


if __name__ == "__main__":
    main()
