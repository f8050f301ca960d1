"""full_tables under a deadline (issue 13): an expired deadline stops pricing after the
first mesh shapes and marks the tables incomplete, yet every call keeps a candidate that
fits and each kept row is priced as in the complete tables; without a deadline (or with
one that does not expire) the tables are complete and the same as without one."""

from __future__ import annotations

import numpy as np

from planner.domain.cluster import cluster_preset
from planner.domain.mesh import allowed_meshes
from planner.domain.workflow import BatchSpec
from planner.domain.workflow_file import WorkflowFile, build_workflow
from planner.search.baselines import baseline_meshes
from planner.search.builder import CallPricer, full_tables, mesh_classes, pruned_tables, \
    shape_order
from planner.search.deadline import Deadline

BATCH = BatchSpec(n_seqs=64, prompt_len=128, gen_len=128, ppo_minibatches=2)
COLUMNS = ("time_s", "weights_bytes", "state_bytes", "activation_bytes", "alone_peak_bytes",
           "capacity_bytes")


def ppo():
    models = {"actor": "llama-small", "ref": "llama-small", "critic": "llama-tiny",
              "reward": "llama-tiny"}
    return build_workflow(WorkflowFile(algorithm="ppo", models=models, batch=BATCH), "ppo")


def test_expired_deadline_gives_incomplete_valid_tables():
    workflow, cluster = ppo(), cluster_preset("h100x64")
    full = full_tables(workflow, cluster, price_unfit=False)
    cut = full_tables(workflow, cluster, price_unfit=False, deadline=Deadline(budget_s=0.0))
    assert full.complete and not cut.complete
    everything = tuple(range(cluster.num_devices))
    for whole, part in zip(full.calls, cut.calls):
        assert 0 < len(part) < len(whole)
        assert part.fits_alone().any()
        assert len(part.executions.rows_on(everything)) == len(
            whole.executions.rows_on(everything))
        rows = [whole.index_of(e) for e in part.executions]
        assert rows == sorted(rows)              # the complete tables' order, a subset
        for name in COLUMNS:
            assert np.array_equal(getattr(part, name), getattr(whole, name)[rows]), name
        # only the first shape was priced: the all-devices mesh's
        assert {e.devices for e in part.executions} == {everything}
    pruned, _ = pruned_tables(cut, {})
    assert not pruned.complete and all(len(t) for t in pruned.calls)


def test_unexpired_deadline_gives_the_tables_without_one():
    workflow, cluster = ppo(), cluster_preset("h100x64")
    plain = full_tables(workflow, cluster)
    timed = full_tables(workflow, cluster, deadline=Deadline(budget_s=1e9))
    assert plain.complete and timed.complete
    for a, b in zip(plain.calls, timed.calls):
        assert list(a.executions) == list(b.executions)
        for name in COLUMNS + ("placement",):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_shapes_are_priced_all_devices_then_baseline_meshes_then_largest_first():
    workflow, cluster = ppo(), cluster_preset("h100x64")
    meshes = allowed_meshes(cluster)
    representatives, of_mesh = mesh_classes(meshes, CallPricer(workflow, cluster))
    first = baseline_meshes(workflow, cluster)
    assert first[0] == tuple(range(64)) and len(first) > 1
    order = shape_order(representatives, of_mesh, meshes, first)
    assert sorted(order) == list(range(len(representatives)))
    shape_of = {m: int(c) for m, c in zip(meshes, of_mesh)}
    leading = list(dict.fromkeys(shape_of[m] for m in first))
    assert order[:len(leading)] == leading
    sizes = [len(representatives[c]) for c in order[len(leading):]]
    assert sizes == sorted(sizes, reverse=True)
