"""One entry point for the plan pictures of `plan viz`: estimate once, draw one kind."""

from __future__ import annotations

from pathlib import Path

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import simulate, simulated_iterations
from planner.domain.augment import augmented_graph
from planner.domain.plan import Plan

# Iterations the graph figure draws: two, or as many as a weight push needs to show
# (staleness s: its push of iteration 0 feeds iteration s + 1).
GRAPH_ITERATIONS = 2


def plan_heading(plan: Plan, label: str) -> str:
    """`ppo on h100x8 (...)`, prefixed by the plan's file name."""
    return f"{label}: {plan.workflow.algorithm} on {plan.cluster.describe()}"


def draw_plan_figure(plan: Plan, kind: str, out: Path, label: str,
                     trace: Path | None = None) -> None:
    """Draw `kind` (timeline, placement, memory, graph) of `plan` to `out`."""
    costs = PlanCosts(plan.workflow, plan.cluster)
    iterations = simulated_iterations(plan.staleness)
    est = simulate(plan.workflow, plan.cluster, plan.executions, iterations, costs,
                   staleness=plan.staleness)
    if kind == "graph":
        from planner.figures.augmented import draw_augmented_graph
        graph = augmented_graph(plan.workflow, plan.executions,
                                max(GRAPH_ITERATIONS, plan.staleness + 2), plan.staleness)
        draw_augmented_graph(plan, graph, est, out, plan_heading(plan, label))
        return
    heading = plan_heading(plan, label)
    if kind == "timeline":
        from planner.figures.timeline import draw_timeline
        from planner.figures.trace import load_trace
        measured = load_trace(trace, plan) if trace else None
        graph = augmented_graph(plan.workflow, plan.executions, iterations, plan.staleness)
        what = "estimated (filled) and measured (hatched) timeline" if measured else \
            "estimated timeline"
        title = (f"{heading}\n{what} per device, steady-state iterations "
                 f"{plan.staleness + 1}-{iterations - 1} of a {iterations}-iteration "
                 f"simulation; "
                 f"{est.iteration_s:.1f} s per iteration")
        draw_timeline(plan, est, graph, out, title, measured)
    elif kind == "placement":
        from planner.figures.placement import draw_placement
        draw_placement(plan, est, out, heading)
    elif kind == "memory":
        from planner.figures.memory import draw_memory
        draw_memory(plan, est, out, heading)
    else:
        raise AssertionError(kind)
