"""Asynchronous (staleness 1) GRPO plans for the executor tests (module-level, picklable)."""

from __future__ import annotations

import executor_workers as W

from planner.domain.cluster import cluster_preset
from planner.domain.plan import Plan, Provenance
from planner.domain.workflow import Workflow
from planner.domain.workflow_file import builtin_workflow

GRPO_BATCH = {"n_seqs": 8, "prompt_len": 8, "gen_len": 8, "ppo_minibatches": 1,
              "group_size": 4}


def grpo_plan(cluster: str, executions: dict, staleness: int) -> Plan:
    wf = builtin_workflow("grpo", "llama-tiny", GRPO_BATCH)
    wf = Workflow.model_validate({**wf.model_dump(), "max_staleness": 1})
    return Plan(workflow=wf, cluster=cluster_preset(cluster), executions=executions,
                provenance=Provenance(created_by="tests/executor: async"), staleness=staleness)


def disjoint_plan() -> Plan:
    """Generation dp2 on {2, 3}; reference, reward and training (tp2) on {0, 1}."""
    return grpo_plan("cpu4", {"actor_gen": W.ex([2, 3], dp=2), "rew_inf": W.ex([0, 1], dp=2),
                              "ref_inf": W.ex([0, 1], dp=2), "actor_train": W.ex([0, 1], tp=2)},
                     staleness=1)


def single_process_plan(staleness: int) -> Plan:
    return grpo_plan("cpu1", {c: W.ex([0]) for c in
                              ("actor_gen", "rew_inf", "ref_inf", "actor_train")}, staleness)
