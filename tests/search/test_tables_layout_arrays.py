"""Array code the search tables price with (issue 13): memory of many layouts at once
(costmodel.memory.layout_memory_parts) is each layout's call_memory_parts bit for bit, and
stage maxima over one stage per class of alike stages (Geometry.stage_classes) are the
maxima over every stage."""

from __future__ import annotations

import itertools

import numpy as np

from costmodel import comm, stage_timer, train_cost
from costmodel.call_geometry import geometry, placement_geometry
from costmodel.memory import (
    PART_KINDS,
    call_memory_parts,
    layout_memory_parts,
    micro_batch_seqs,
)
from costmodel.stage_timer import StageTimer
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import BatchSpec
from planner.domain.workflow_file import WorkflowFile, build_workflow
from planner.sharding.param_shards import shard_elements
from planner.sharding.rank_groups import rank_groups

BATCH = BatchSpec(n_seqs=64, prompt_len=256, gen_len=256, ppo_minibatches=2)


def workflow():
    models = {"actor": "llama-7b", "ref": "llama-7b", "critic": "llama-small",
              "reward": "llama-small"}
    return build_workflow(WorkflowFile(algorithm="ppo", models=models, batch=BATCH), "ppo")


def variants(devices, dp, tp, pp):
    for m, mode, zero1, fsdp in itertools.product((1, 2, 8), ("none", "selective", "full"),
                                                  (False, True), (False, True)):
        if fsdp and pp > 1:
            continue
        yield Execution(devices=devices, dp=dp, tp=tp, pp=pp, micro_batches=m,
                        recompute=mode, shard_optimizer_over_dp=zero1 or fsdp,
                        shard_parameters_over_dp=fsdp)


def test_layout_memory_is_each_layouts_memory_bit_for_bit():
    wf, devices = workflow(), tuple(range(16))
    for name, (dp, tp, pp) in itertools.product(wf.call_order, [(4, 4, 1), (2, 2, 4),
                                                                  (8, 2, 1)]):
        call = wf.call_by_name[name]
        role = wf.models[call.model]
        layouts = list(variants(devices, dp, tp, pp))
        for dtype_bytes, kind in ((2, "cuda"), (4, "cpu")):
            together = layout_memory_parts(call, role.spec, role.head, layouts, wf.batch,
                                           dtype_bytes, kind)
            for i, ex in enumerate(layouts):
                alone = call_memory_parts(call, role.spec, role.head, ex, wf.batch,
                                          dtype_bytes, kind)
                for part in PART_KINDS:
                    grid = getattr(together, part)[i]
                    assert grid.shape == (pp, tp)
                    positions = getattr(alone, part)
                    assert positions.shape == (dp * tp * pp,)
                    assert np.array_equal(positions.reshape(pp, dp, tp),
                                          np.broadcast_to(grid[:, None, :], (pp, dp, tp))), \
                        (name, ex, part)


def every_stage_train_phases_s(st: StageTimer, b: int, batch: BatchSpec, elements):
    """train_cost.train_phases_s as a maximum over every stage (its definition)."""
    ex, s = st.ex, batch.seq_len
    backward = [float(st.stage_s(i, "backward", b, s) + st.recompute_s(i, b, s))
                for i in range(ex.pp)]
    steps = [float(st.stage_s(i, "forward", b, s)) + backward[i] for i in range(ex.pp)]
    send = float(st.send_s(b, s))
    pipeline = (ex.pp + ex.micro_batches - 1) * (max(steps) + 2 * send)
    sync = gather = optimizer = kv_sync = 0.0
    for i in range(ex.pp):
        ready, reduce_s, gather_s = train_cost._stage_buckets(st, i, int(elements[i].max()))
        drain = i * (max(backward) + send)
        sync = max(sync, train_cost.exposed_sync_s(ready * backward[i], reduce_s,
                                                   backward[i] + drain))
        gather = max(gather, float(gather_s.sum()))
        optimizer = max(optimizer, train_cost._stage_optimizer_s(st, i))
        kv_sync = max(kv_sync, train_cost.kv_sync_s(st, i))
    k = batch.ppo_minibatches
    return {"forward_backward": float(k * pipeline), "dp_sync": k * sync,
            "dp_gather": k * gather, "kv_sync": k * kv_sync, "optimizer": k * optimizer}


def test_stage_maxima_over_classes_are_maxima_over_every_stage():
    wf, cluster = workflow(), cluster_preset("h100x16")
    train = next(wf.call_by_name[n] for n in wf.call_order
                 if wf.call_by_name[n].kind == "train")
    role = wf.models[train.model]
    checked = 0
    for dp, tp, pp in [(1, 2, 8), (2, 1, 8), (1, 1, 16), (4, 1, 4)]:
        for ex in variants(tuple(range(16)), dp, tp, pp):
            geo = geometry(ex, role.spec.num_layers, cluster)
            assert len(geo.stage_classes) < pp and geo.stage_classes[0] == 0
            st = StageTimer(role, ex, geo, PROFILES_DIR)
            b = micro_batch_seqs(train, wf.batch, ex)
            elements = shard_elements(role.spec, role.head, tp, pp)
            assert train_cost.train_phases_s(st, b, wf.batch, elements) == \
                every_stage_train_phases_s(st, b, wf.batch, elements)
            lengths = np.arange(1.0, 40.0)
            every = np.max([st.stage_s(i, "decode", b, lengths) + (0.5 if i == pp - 1 else 0)
                            for i in range(pp)], axis=0)
            assert np.array_equal(st.max_stage_s("decode", b, lengths, 0.5), every)
            checked += 1
    assert checked


def test_memoised_stage_times_match_fresh_ones_in_any_order():
    """StageTimer shares its part timers and stage keys across the layouts of one placement
    (stage_timer._TIMER_PARTS), memoises recompute_s beside stage_s and its TP all-reduces
    across stages (_ALLREDUCE_MEMO): each layout's train phases, priced after the others in
    reverse order, equal those priced with empty memos."""
    wf, cluster = workflow(), cluster_preset("h100x16")
    train = next(wf.call_by_name[n] for n in wf.call_order
                 if wf.call_by_name[n].kind == "train")
    role = wf.models[train.model]
    elements = shard_elements(role.spec, role.head, 2, 4)

    def phases(ex):
        st = StageTimer(role, ex, geometry(ex, role.spec.num_layers, cluster), PROFILES_DIR)
        return train_cost.train_phases_s(st, micro_batch_seqs(train, wf.batch, ex), wf.batch,
                                         elements)

    layouts = list(variants(tuple(range(16)), 2, 2, 4))
    fresh = []
    for ex in layouts:
        stage_timer._STAGE_MEMO.clear()
        stage_timer._TIMER_PARTS.clear()
        stage_timer._ALLREDUCE_MEMO.clear()
        fresh.append(phases(ex))
    assert len({str(p) for p in fresh}) > len(layouts) // 2   # the variants do differ
    assert [phases(ex) for ex in reversed(layouts)] == fresh[::-1]


def test_models_of_other_depths_on_one_placement_share_its_links():
    """call_geometry memoises a placement's links apart from its layer counts: a 32- and an
    80-layer model on one placement get their own stage layers and the links of its groups
    (comm.slowest_link over the rank groups of each stage)."""
    cluster = cluster_preset("h100x16")
    devices, dp, tp, pp = tuple(range(16)), 2, 4, 2
    shallow = placement_geometry(devices, dp, tp, pp, 32, cluster)
    deep = placement_geometry(devices, dp, tp, pp, 80, cluster)
    assert shallow.stage_layers == (16, 16) and deep.stage_layers == (40, 40)
    groups = rank_groups(devices, dp, tp, pp)
    for geo in (shallow, deep):
        assert geo.tp_link == tuple(comm.slowest_link(groups.tp_groups[s * dp:(s + 1) * dp],
                                                      cluster) for s in range(pp))
        assert geo.dp_link == tuple(comm.slowest_link(groups.dp_groups[s * tp:(s + 1) * tp],
                                                      cluster) for s in range(pp))
        assert geo.pp_link == comm.slowest_link(groups.pp_groups, cluster)
