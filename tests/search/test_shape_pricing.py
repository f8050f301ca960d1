"""Pricing mesh shapes in several processes (planner/search/shape_pricing.py): the tables
are those of one process, the stopping rule holds over what all workers priced, and a
worker's failure reaches the caller."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from planner.domain.cluster import cluster_preset
from planner.domain.workflow import BatchSpec
from planner.domain.workflow_file import WorkflowFile, build_workflow
from planner.search.builder import full_tables
from planner.search import shape_pricing
from planner.search.deadline import Deadline
from planner.search.shape_pricing import MIN_SHAPES_PER_WORKER, price_shapes, worker_count

NUM_SHAPES = 4 * MIN_SHAPES_PER_WORKER
forks = pytest.mark.skipif(worker_count(NUM_SHAPES, 2) < 2,
                           reason="this platform prices shapes in one process")


def square(shape: int) -> list[int]:
    return [shape * shape]


@forks
def test_every_shape_is_priced_once_by_some_worker():
    order = list(range(NUM_SHAPES))[::-1]
    priced = price_shapes(order, square, lambda p: [True], 1, workers=2)
    assert priced == {s: [s * s] for s in order}


@forks
def test_an_expired_deadline_stops_once_every_call_fits_somewhere():
    # call 0 fits from the first shape on, call 1 only on shapes >= 20: pricing goes on
    # past the deadline until some worker has priced a shape where call 1 fits, then stops
    order = list(range(NUM_SHAPES))
    fits = lambda prices: [True, prices[0] >= 20 * 20]      # noqa: E731
    priced = price_shapes(order, square, fits, 2, deadline=Deadline(0.0), workers=2)
    assert 0 in priced
    assert any(s >= 20 for s in priced)
    # each worker takes at most one shape after the fit was recorded
    assert len(priced) <= 21 + 2
    assert set(priced) <= set(order)


def fail_on_seven(shape: int) -> list[int]:
    if shape == 7:
        raise ValueError("shape 7 cannot be priced")
    return [shape]


@forks
@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_in_any_worker_is_raised_here(workers):
    with pytest.raises(ValueError, match="shape 7"):
        price_shapes(list(range(NUM_SHAPES)), fail_on_seven, lambda p: [True], 1,
                     workers=workers)


@forks
def test_a_worker_that_dies_is_an_error_naming_its_exit_code(tmp_path):
    # the child exits on the first shape it takes; this process holds its first shape until
    # then, so the child surely takes one
    parent, died = os.getpid(), tmp_path / "died"

    def exit_in_child(shape: int) -> list[int]:
        if os.getpid() != parent:
            died.touch()
            os._exit(3)
        for _ in range(3000):
            if died.exists():
                break
            time.sleep(0.01)
        return [shape]

    with pytest.raises(RuntimeError, match="died \\(exit code 3\\)"):
        price_shapes(list(range(NUM_SHAPES)), exit_in_child, lambda p: [True], 1, workers=2)


def test_one_process_below_the_fork_threshold():
    assert worker_count(MIN_SHAPES_PER_WORKER - 1, 8) == 1


@forks
def test_tables_priced_by_two_processes_are_those_of_one(monkeypatch):
    monkeypatch.setattr(shape_pricing, "MIN_SHAPES_PER_WORKER", 1)    # 5 shapes, 2 workers
    batch = BatchSpec(n_seqs=64, prompt_len=128, gen_len=128, ppo_minibatches=2)
    models = {"actor": "llama-7b", "ref": "llama-7b", "critic": "llama-tiny",
              "reward": "llama-tiny"}
    workflow = build_workflow(WorkflowFile(algorithm="ppo", models=models, batch=batch),
                              "ppo")
    cluster = cluster_preset("h100x16")
    one = full_tables(workflow, cluster, price_unfit=False, workers=1)
    assert worker_count(one.shapes_total, 2) == 2
    two = full_tables(workflow, cluster, price_unfit=False, workers=2)
    assert (two.shapes_priced, two.complete) == (one.shapes_priced, True)
    for a, b in zip(one.calls, two.calls):
        assert list(a.executions) == list(b.executions)
        for column in ("time_s", "alone_peak_bytes", "activation_bytes", "state_bytes",
                       "weights_bytes", "capacity_bytes", "proximal_s", "placement"):
            assert np.array_equal(getattr(a, column), getattr(b, column)), column
