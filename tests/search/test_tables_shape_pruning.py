"""Search tables pruned per mesh shape (issue 13): full_tables(price_unfit=False) keeps on
each mesh what pruning would keep there (every candidate that fits on the baselines'
meshes), so pruning them gives the tables of pruning every candidate, the baselines choose
the same plans, and a call that fits nowhere still tells by how much it misses."""

from __future__ import annotations

import numpy as np
import pytest

from planner.domain.cluster import NodeGroupFile, build_cluster, cluster_preset
from planner.domain.workflow import BatchSpec
from planner.domain.workflow_file import WorkflowFile, build_workflow
from planner.search.baselines import BaselineJudge, baseline_meshes, build_baselines
from planner.search.builder import full_tables, pruned_tables, undominated
from planner.search.fast_evaluator import FastEvaluator

COLUMNS = ("time_s", "weights_bytes", "state_bytes", "activation_bytes", "alone_peak_bytes",
           "capacity_bytes", "placement")


def ppo(actor: str, other: str, batch: BatchSpec):
    models = {"actor": actor, "ref": actor, "critic": other, "reward": other}
    return build_workflow(WorkflowFile(algorithm="ppo", models=models, batch=batch), "ppo")


def mixed_cluster():
    return build_cluster("mixed", [NodeGroupFile(nodes=2, devices_per_node=4,
                                                 device="h100-sxm-80gb"),
                                   NodeGroupFile(nodes=2, devices_per_node=4,
                                                 device="a100-sxm-80gb")])


SMALL = BatchSpec(n_seqs=64, prompt_len=128, gen_len=128, ppo_minibatches=2)
LARGE = BatchSpec(n_seqs=256, prompt_len=512, gen_len=512, ppo_minibatches=4)
CASES = {"mixed": (lambda: ppo("llama-small", "llama-tiny", SMALL), mixed_cluster),
         "h100x16": (lambda: ppo("llama-7b", "llama-7b", LARGE),
                     lambda: cluster_preset("h100x16"))}


def plans(tables, choices):
    return {name: None if c is None else tables.executions_of(c)
            for name, c in choices.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pruned_tables_and_baselines_are_those_of_every_candidate(case):
    workflow, cluster = CASES[case][0](), CASES[case][1]()
    every = full_tables(workflow, cluster)
    lazy = full_tables(workflow, cluster, price_unfit=False)
    assert sum(map(len, lazy.calls)) < sum(map(len, every.calls))
    chosen = [plans(t, build_baselines(t, BaselineJudge(FastEvaluator(t)), cluster, workflow))
              for t in (every, lazy)]
    assert chosen[0] == chosen[1]
    assert any(plan is not None for plan in chosen[0].values())
    pruned = []
    for tables, choice in zip((every, lazy), chosen):
        keep = {t.name: {t.index_of(plan[t.name]) for plan in choice.values() if plan}
                for t in tables.calls}
        pruned.append(pruned_tables(tables, keep)[0])
    for a, b in zip(pruned[0].calls, pruned[1].calls):
        assert list(a.executions) == list(b.executions), a.name
        for name in COLUMNS:
            assert np.array_equal(getattr(a, name), getattr(b, name)), (a.name, name)


def test_rows_are_what_pruning_keeps_but_on_the_baselines_meshes():
    workflow, cluster = CASES["mixed"][0](), CASES["mixed"][1]()
    every = full_tables(workflow, cluster)
    lazy = full_tables(workflow, cluster, price_unfit=False)
    firsts = set(baseline_meshes(workflow, cluster))
    for whole, part in zip(every.calls, lazy.calls):
        fits = whole.fits_alone()
        kept = fits & undominated(whole, set(), among=fits)
        on_baseline = np.array([whole.executions[i].devices in firsts
                                for i in range(len(whole))])
        expected = np.flatnonzero(np.where(on_baseline, fits, kept))
        assert [whole.executions[i] for i in expected] == list(part.executions), whole.name
        assert not kept[~on_baseline].all()        # pruning did drop something


def test_a_call_that_fits_nowhere_keeps_its_smallest_shortfall():
    workflow = ppo("llama-70b", "llama-7b", LARGE)
    cluster = cluster_preset("h100x4")
    every = full_tables(workflow, cluster)
    lazy = full_tables(workflow, cluster, price_unfit=False)
    missing = [t for t in every.calls if not t.fits_alone().any()]
    assert missing                   # a 70B train call does not fit on 4 devices
    for whole, part in zip(every.calls, lazy.calls):
        if not whole.fits_alone().any():
            assert 0 < len(part) and not part.fits_alone().any()
            assert np.min(part.alone_peak_bytes - part.capacity_bytes) == \
                np.min(whole.alone_peak_bytes - whole.capacity_bytes)
