"""Helpers shared by the foundation tests (a plain module, imported by its unique name)."""

from __future__ import annotations

from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.plan import Plan, Provenance
from planner.domain.workflow_file import builtin_workflow

# Small enough that any dp x micro_batches up to 16 fits (train steps see 64 / 2 = 32).
SMALL_BATCH = {"n_seqs": 64, "prompt_len": 16, "gen_len": 16, "ppo_minibatches": 2}


def make_plan(algorithm: str = "ppo", model: str = "llama-tiny", cluster: str = "h100x8",
              executions: dict[str, Execution] | None = None, **plan_fields) -> Plan:
    """A valid plan: every call data-parallel over the whole cluster unless given."""
    workflow = builtin_workflow(algorithm, model=model, batch=dict(SMALL_BATCH))
    spec = cluster_preset(cluster)
    everywhere = Execution(devices=tuple(range(spec.num_devices)), dp=spec.num_devices,
                           tp=1, pp=1)
    chosen = {name: everywhere for name in workflow.call_order}
    chosen.update(executions or {})
    plan_fields.setdefault("provenance", Provenance(created_by="tests/foundation"))
    plan = Plan(workflow=workflow, cluster=spec, executions=chosen, **plan_fields)
    assert plan.problems() == [], plan.problems()
    return plan
