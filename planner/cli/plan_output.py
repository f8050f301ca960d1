"""Turning a priced plan into a saved Plan with its estimate (shared by search and baseline)."""

from __future__ import annotations

from costmodel.simulator import Estimate
from planner.domain.hardware import GIB
from planner.domain.plan import Plan, Provenance


def estimate_summary(estimate: Estimate) -> dict:
    """The estimate as stored in a plan file: iteration, per-call seconds, peak memory; for
    a plan of staleness s >= 1 also the staleness reached and each weight push's seconds
    (a synchronous plan's summary is as it always was)."""
    summary = {"iteration_s": round(estimate.iteration_s, 4),
               "call_s": {k: round(v, 4) for k, v in estimate.call_times_s.items()},
               "peak_memory_gib": round(max(estimate.peak_memory_bytes.values()) / GIB, 2),
               "feasible": estimate.feasible}
    if estimate.staleness:
        summary["staleness_reached"] = estimate.staleness_reached
        summary["push_s"] = {k: round(v, 4) for k, v in estimate.push_times_s.items()}
    return summary


def priced_plan(workflow, cluster, executions, estimate: Estimate, created_by: str,
                seed: int | None = None, search: dict | None = None) -> Plan:
    """The Plan of `executions` at the staleness `estimate` was priced at (its
    Estimate.staleness, 0 for a synchronous plan)."""
    return Plan(workflow=workflow, cluster=cluster, executions=executions,
                estimate=estimate_summary(estimate),
                provenance=Provenance(created_by=created_by,
                                      profile_source=estimate.compute_source, seed=seed,
                                      search=search),
                staleness=estimate.staleness)
