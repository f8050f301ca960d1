"""The baselines' exact memory check at scale (issue 13): the reallocation schedules it
prices follow the documented greedy rule (planner/sharding/transfer_schedule.py, here
rewritten naively), a priced move is shared by executions with equal placements, a
candidate is found by its execution, and `build_baselines` with a deadline stops after the
first baseline with a plan and names what it left out, as `search` does."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.realloc_cost import realloc_cost, schedule_cost
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.modelspec import ModelSpec
from planner.domain.placement import Placement
from planner.domain.workflow import BatchSpec
from planner.domain.workflow_file import WorkflowFile, build_workflow
from planner.search.baselines import BASELINES, BaselineJudge, build_baselines
from planner.search.builder import full_tables
from planner.search.deadline import Deadline
from planner.search.fast_evaluator import FastEvaluator
from planner.search.mcmc import MCMCSettings
from planner.search.pipeline import BASELINES as BASELINES_PHASE
from planner.search.pipeline import PRICING, search
from planner.sharding.param_shards import model_params, slice_elements
from planner.sharding.rank_groups import placement_device
from planner.sharding.transfer_schedule import (
    _tp_pieces,
    data_schedule,
    param_schedule,
    replica_devices,
    sequence_range,
)

# 4 nodes of 4 devices, so that pieces come from the same device, the same node or another.
CLUSTER = cluster_preset("h100x16")
NODE = CLUSTER.device_node
SPEC = ModelSpec(name="micro", num_layers=4, hidden_size=32, num_heads=8, num_kv_heads=2,
                 intermediate_size=48, vocab_size=64, max_positions=64, attention_bias=True)


@st.composite
def placements(draw):
    size = draw(st.sampled_from([2, 4, 8, 16]))
    start = draw(st.sampled_from([s for s in range(0, 16, size)]))
    tp = draw(st.sampled_from([t for t in (1, 2, 4, 8) if size % t == 0]))
    pp = draw(st.sampled_from([p for p in (1, 2, 4) if size % (tp * p) == 0]))
    devices = list(range(start, start + size))
    if draw(st.booleans()):
        devices.reverse()             # a mesh order that is not ascending
    return Placement(tuple(devices), size // (tp * pp), tp, pp)


def naive_pick(load: dict, candidates: list[int], dst: int, size: int) -> int:
    """The docstring's rule, as plainly as it reads."""
    if dst in candidates:
        return dst
    pool = [c for c in candidates if NODE[c] == NODE[dst]] or candidates
    best = min(pool, key=lambda c: (load[c], c))
    load[best] += size
    return best


def naive_steps(pieces: list[tuple]) -> list[list[tuple]]:
    messages = defaultdict(list)
    for piece in pieces:
        messages[(piece[1], piece[2])].append(piece)
    order = sorted(messages, key=lambda m: (-sum(p[4] for p in messages[m]), m))
    steps: list[list[tuple]] = []
    for src, dst in order:
        for step in steps + [None]:
            if step is None:
                steps.append(step := [])
            if all(p[1] != src and p[2] != dst for p in step):
                step.extend(messages[(src, dst)])
                break
    return steps


def naive_param_schedule(src: Placement, dst: Placement):
    src_stage = {p.name: p.stage for p in model_params(SPEC, "lm", src.pp)}
    load, local, remote = defaultdict(int), [], []
    for param in model_params(SPEC, "lm", dst.pp):
        stage = src_stage[param.name]
        per_rank = _tp_pieces(SPEC, param.split, param.shape, src.tp, dst.tp)
        for tp_rank in range(dst.tp):
            for dp_rank in range(dst.dp):
                target = placement_device(dst, dp_rank, tp_rank, param.stage)
                for piece, ranks in per_rank[tp_rank]:
                    holders = [placement_device(src, d, r, stage) for _, r in ranks
                               for d in range(src.dp)]
                    size = slice_elements(piece)
                    source = naive_pick(load, holders, target, size)
                    item = (param.name, source, target, piece, size)
                    (local if source == target else remote).append(item)
    return local, naive_steps(remote)


def as_tuples(schedule):
    row = lambda p: (p.name, p.src, p.dst, p.ranges, p.num_elements)
    return [row(p) for p in schedule.local], [[row(p) for p in step]
                                             for step in schedule.steps]


@settings(max_examples=40, deadline=None)
@given(placements(), placements())
def test_param_schedule_is_the_documented_greedy_rule(src, dst):
    if src == dst:
        assert param_schedule(SPEC, "lm", src, dst, NODE).is_empty
        return
    assert as_tuples(param_schedule(SPEC, "lm", src, dst, NODE)) == naive_param_schedule(src,
                                                                                         dst)


@settings(max_examples=40, deadline=None)
@given(placements(), placements(), st.sampled_from([7, 16, 64]))
def test_data_schedule_is_the_documented_greedy_rule(src, dst, n_seqs):
    if src == dst:
        return
    load, local, remote = defaultdict(int), [], []
    for dst_rank in range(dst.dp):
        want = sequence_range(n_seqs, dst.dp, dst_rank)
        for src_rank in range(src.dp):
            have = sequence_range(n_seqs, src.dp, src_rank)
            lo, hi = max(want[0], have[0]), min(want[1], have[1])
            if lo < hi:
                for target in replica_devices(dst, dst_rank):
                    source = naive_pick(load, replica_devices(src, src_rank), target, hi - lo)
                    item = ("sequences", source, target, ((lo, hi),), hi - lo)
                    (local if source == target else remote).append(item)
    assert as_tuples(data_schedule(src, dst, n_seqs, NODE)) == (local, naive_steps(remote))


def test_a_priced_move_depends_on_the_placements_only():
    src = Execution(devices=tuple(range(8)), dp=2, tp=4, pp=1, micro_batches=2)
    dst = Execution(devices=tuple(range(8, 16)), dp=4, tp=2, pp=1, micro_batches=1)
    cost = realloc_cost(SPEC, "lm", src, dst, CLUSTER)
    again = realloc_cost(SPEC, "lm", src.model_copy(update={"micro_batches": 4}),
                         dst.model_copy(update={"recompute": "none"}), CLUSTER)
    assert again is cost
    assert cost == schedule_cost(param_schedule(SPEC, "lm", src.placement, dst.placement,
                                                NODE), 2, CLUSTER)
    assert cost.time_s > 0 and set(cost.receive_buffer_bytes) <= set(range(8, 16))
    # the senders hold their packed messages too
    assert set(cost.message_buffer_bytes) == set(range(16))
    assert all(cost.message_buffer_bytes[d] >= cost.receive_buffer_bytes[d]
               for d in range(8, 16))


def tiny_ppo_tables():
    batch = BatchSpec(n_seqs=64, prompt_len=128, gen_len=128, ppo_minibatches=2)
    models = {"actor": "llama-tiny", "ref": "llama-tiny", "critic": "llama-tiny",
              "reward": "llama-tiny"}
    workflow = build_workflow(WorkflowFile(algorithm="ppo", models=models, batch=batch), "ppo")
    cluster = cluster_preset("cpu4")
    return workflow, cluster, full_tables(workflow, cluster, price_unfit=False)


def test_index_of_finds_every_candidate_at_its_row():
    _, _, tables = tiny_ppo_tables()
    for table in tables.calls:
        rows = np.random.default_rng(0).choice(len(table), min(50, len(table)), replace=False)
        for row in rows:
            execution = table.executions[int(row)]
            first = next(i for i in range(len(table)) if table.executions[i] == execution)
            assert table.index_of(execution) == first


def test_an_expired_deadline_keeps_the_first_plan_and_names_the_baselines_left_out():
    workflow, cluster, tables = tiny_ppo_tables()
    judge = BaselineJudge(FastEvaluator(tables), lambda choice: True)
    unbounded = build_baselines(tables, judge, cluster, workflow)
    assert judge.cut == [] and all(c is not None for c in unbounded.values())
    bounded = build_baselines(tables, judge, cluster, workflow, deadline=Deadline(0.0))
    first, *rest = BASELINES
    assert np.array_equal(bounded[first], unbounded[first])
    assert all(bounded[name] is None for name in rest)
    assert judge.cut == rest
    roomy = build_baselines(tables, judge, cluster, workflow, deadline=Deadline(600.0))
    assert judge.cut == []
    assert all(np.array_equal(roomy[n], unbounded[n]) for n in BASELINES)


def test_search_with_no_time_left_names_the_baselines_it_did_not_build():
    workflow, cluster, _ = tiny_ppo_tables()
    outcome = search(workflow, cluster, MCMCSettings(seed=0, time_limit_s=5.0),
                     deadline=Deadline(1e-6))
    first, *rest = BASELINES
    assert outcome.unbuilt_baselines == rest
    assert all(outcome.baselines[name] is None for name in rest)
    assert outcome.baselines[first] is not None and outcome.best is not None
    assert outcome.cut[BASELINES_PHASE] == (
        f"baselines not built by the time limit: {', '.join(rest)} (their plans were not "
        f"confirmed to fit in time)")
    found = outcome.cut[PRICING]
    assert found.startswith("tables cut by the time limit: ") and "mesh shapes priced" in found
