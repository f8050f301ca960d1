"""Activation recomputation as a searched choice: every train candidate comes in each mode,
other calls keep the default, and each baseline only uses the modes its framework offers."""

from __future__ import annotations

from collections import Counter

import numpy as np

from planner.domain.cluster import cluster_preset
from planner.domain.layout import DECODE_BATCHINGS, RECOMPUTE_MODES, Execution, layout_problem
from planner.domain.workflow_file import builtin_workflow
from planner.search.baselines import BASELINE_RECOMPUTE, BaselineJudge, build_baselines
from planner.search.builder import full_tables, pruned_tables
from planner.search.fast_evaluator import FastEvaluator
from planner.search.space import candidate_executions


def test_train_candidates_come_in_every_mode_and_others_in_the_default():
    workflow = builtin_workflow("ppo", model="llama-7b")
    cluster = cluster_preset("h100x4")
    default = Execution.model_fields["recompute"].default
    for name in workflow.call_order:
        call = workflow.call_by_name[name]
        candidates = candidate_executions(call, workflow.models[call.model].spec, cluster,
                                          workflow.batch)
        layouts = Counter(ex.model_copy(update={"recompute": default}) for ex in candidates)
        modes = {ex.recompute for ex in candidates}
        if call.kind == "train":
            assert modes == set(RECOMPUTE_MODES) and set(layouts.values()) == {3}, name
        else:
            assert modes == {default} and set(layouts.values()) == {1}, name


def test_every_mode_of_a_listed_layout_runs_and_no_runnable_mode_is_left_out():
    # candidate_executions checks layout_problem on a layout's first mode only
    workflow = builtin_workflow("ppo", model="llama-7b")
    cluster = cluster_preset("h100x16")
    for name in workflow.call_order:
        call = workflow.call_by_name[name]
        spec = workflow.models[call.model].spec
        candidates = candidate_executions(call, spec, cluster, workflow.batch,
                                          max_staleness=1)
        assert all(layout_problem(ex, spec, cluster, call, workflow.batch) is None
                   for ex in candidates), name
        listed = set(candidates)
        for ex in candidates:
            for recompute in RECOMPUTE_MODES:
                for decode in DECODE_BATCHINGS:
                    other = ex.model_copy(update={"recompute": recompute,
                                                  "decode_batching": decode})
                    if other.micro_batches > other.pp or decode == "static":
                        runs = layout_problem(other, spec, cluster, call, workflow.batch) is None
                        assert runs == (other in listed), (name, other)


def test_baselines_use_only_their_frameworks_recompute_modes():
    workflow = builtin_workflow("ppo", model="llama-7b")
    cluster = cluster_preset("h100x8")
    tables, _ = pruned_tables(full_tables(workflow, cluster), {})
    choices = build_baselines(tables, BaselineJudge(FastEvaluator(tables)), cluster, workflow)
    assert sum(c is not None for c in choices.values()) >= 3
    assert set(BASELINE_RECOMPUTE["separate"]) == set(BASELINE_RECOMPUTE["realhf-heuristic"]) \
        == {"none", "full"}
    for name, choice in choices.items():
        if choice is None:
            continue
        executions = tables.executions_of(np.asarray(choice))
        used = {ex.recompute for call, ex in executions.items()
                if workflow.call_by_name[call].kind == "train"}
        assert used and used <= set(BASELINE_RECOMPUTE[name]), (name, used)
        if name == "symmetric":   # one Megatron setting for the whole job
            assert len(used) == 1
