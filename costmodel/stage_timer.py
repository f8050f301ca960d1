"""Stage times of one (role, execution): compute of the stage's parts plus its TP
all-reduces, the recomputed forward of a train step, and the pipeline sends. A
mixture-of-experts block's routed experts count in its compute; its all-to-alls are timed
apart (all_to_all_s), for the calls' "all_to_all" phase (costmodel/moe_cost.py).

A stage's time is the slowest hardware among its devices: its blocks (+ the embedding on
stage 0, the head on the last) plus the TP all-reduces of its blocks; pipeline sends (p2p of
b x tokens x h) go over the slowest pp link. TP all-reduces per block: 2 forward (attention
and MLP outputs), 2 backward, and those the recomputation mode reruns (recompute.py:
1 for "full", 0 for "selective" and "none"); 1 for the vocab-parallel embedding; the head's
softmax reductions are 3 small all-reduces of tokens x 4 bytes. Replicated-norm gradient
all-reduces are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from costmodel import comm, moe_cost, recompute
from costmodel.call_geometry import NEUTRAL_KNOBS, CostKnobs, Geometry
from costmodel.compute import part_timer
from planner.domain.layout import Execution
from planner.domain.workflow import ModelRole


# Memoised stage times (StageTimer.stage_s): the search prices thousands of layouts whose
# stages repeat (the same tp, layers, micro-batch and link under other dp, micro-batch
# counts or meshes). Bounded like compute.MEMO_ENTRIES: a decode point holds an array.
STAGE_MEMO_ENTRIES = 100_000
_STAGE_MEMO: dict[tuple, tuple] = {}
# Ids of the (model, stage, hardware, link, knobs) parts of _STAGE_MEMO's keys (equal parts,
# one id; never cleared, so an id always names the same part; a few per layout shape).
_STAGE_KEYS: dict[tuple, int] = {}
# Per (role, tp, geometry, profiles, knobs): each stage's part timers and the id of its
# _STAGE_KEYS part (_timer_parts). Looked up by the identity of the role and the geometry
# (call_geometry.placement_geometry returns one object per placement, the workflow one role
# per model), each entry holding both so that their ids name them while it lives: the model
# spec, hardware and links are hashed once per (role, placement), not once per priced layout.
TIMER_PARTS_ENTRIES = 100_000
_TIMER_PARTS: dict[tuple, tuple] = {}
# Memoised TP all-reduces (StageTimer.tp_allreduce_s): a stage's all-reduce depends on its
# tp link, the knobs, tp and the message only, not on its layers or which stage it is, so
# stages of other pipeline depths share it (an all-reduce is a third of a stage's cold
# time, PPO 70B/7B on 128 H100). Keyed by the id of the (link, knobs) part in _LINK_KEYS
# (never cleared, as _STAGE_KEYS), tp and the message bytes; bounded like _STAGE_MEMO.
ALLREDUCE_MEMO_ENTRIES = 100_000
_ALLREDUCE_MEMO: dict[tuple, object] = {}
_LINK_KEYS: dict[tuple, int] = {}


def _timer_parts(role: ModelRole, tp: int, geo: Geometry, profiles_dir: Path,
                 knobs: CostKnobs, ep: int = 1) -> tuple[list, list[int], list[int]]:
    """(per stage its part timers, per stage the id of its stage key, per stage the id of
    its (tp link, knobs) in _LINK_KEYS), memoised (_TIMER_PARTS). Alike stages
    (Geometry.stage_class) share their hardware, so their timers. A stage's key is what
    stage_s reads of the role, execution and geometry for it: the model spec and head, the
    profiles, tp, its layers, whether it is the first or the last, its hardware and tp
    link, the knobs, and ep with the stage's ep link (a mixture-of-experts block's routed
    experts and all-to-alls)."""
    key = (id(role), id(geo), tp, profiles_dir, knobs, ep)
    hit = _TIMER_PARTS.get(key)
    if hit is not None:
        return hit[2], hit[3], hit[4]
    if len(_TIMER_PARTS) >= TIMER_PARTS_ENTRIES:
        _TIMER_PARTS.clear()
    by_class = [[part_timer(role.spec, hw, profiles_dir) for hw in geo.stage_hardware[s]]
                for s in geo.stage_classes]
    timers = [by_class[c] for c in geo.stage_class]
    last = len(geo.stage_layers) - 1
    ids = [_STAGE_KEYS.setdefault(part, len(_STAGE_KEYS)) for part in
           ((role.spec, role.head, str(profiles_dir), tp, geo.stage_layers[stage], stage == 0,
             stage == last, geo.stage_hardware[stage], geo.tp_link[stage], knobs, ep,
             geo.expert_links(stage))
            for stage in range(last + 1))]
    link_ids = [_LINK_KEYS.setdefault((link, knobs), len(_LINK_KEYS)) for link in geo.tp_link]
    _TIMER_PARTS[key] = (role, geo, timers, ids, link_ids)
    return timers, ids, link_ids


class StageTimer:
    """Stage times of one (role, execution) for one op over a micro-batch."""

    def __init__(self, role: ModelRole, execution: Execution, geo: Geometry, profiles_dir: Path,
                 knobs: CostKnobs = NEUTRAL_KNOBS, call_outputs: tuple[str, ...] = ()):
        self.role, self.ex, self.geo, self.knobs = role, execution, geo, knobs
        self.call_outputs = call_outputs
        self.head_part = "lm_head" if role.head == "lm" else "value_head"
        self.profiles_dir = profiles_dir
        self.timers, self._stage_ids, self._tp_link_ids = _timer_parts(
            role, execution.tp, geo, profiles_dir, knobs, execution.ep)
        self.sources: set[str] = set()

    def tp_allreduces_s(self, stage: int, count: float, message_bytes) -> np.ndarray:
        return count * self.tp_allreduce_s(stage, message_bytes)

    def tp_allreduce_s(self, stage: int, message_bytes) -> np.ndarray:
        """One TP all-reduce of `message_bytes` on the stage's tp link (comm.allreduce_time_s
        with the knobs' link), memoised (_ALLREDUCE_MEMO); arrays come back read-only."""
        message = np.asarray(message_bytes, dtype=float)
        key = (self._tp_link_ids[stage], self.ex.tp, message.shape, message.tobytes())
        seconds = _ALLREDUCE_MEMO.get(key)
        if seconds is None:
            if len(_ALLREDUCE_MEMO) >= ALLREDUCE_MEMO_ENTRIES:
                _ALLREDUCE_MEMO.clear()
            link = self.knobs.link(self.geo.tp_link[stage])
            seconds = comm.allreduce_time_s(message_bytes, self.ex.tp, link)
            if isinstance(seconds, np.ndarray):
                seconds.setflags(write=False)
            _ALLREDUCE_MEMO[key] = seconds
        return seconds

    def stage_s(self, stage: int, op: str, b: int, length) -> np.ndarray:
        """Seconds of `op` on `stage` for a micro-batch of `b` sequences at `length`.
        Memoised (_STAGE_MEMO) on everything it reads: the model and head, the profiles,
        tp, the stage's layers, whether it is the first or the last, its hardware and tp
        link, the knobs (the stage's key id, _timer_parts), op, b and the lengths; arrays
        come back read-only."""
        return self._memoised(stage, op, b, length, self._stage_s)

    def _memoised(self, stage: int, what, b: int, length, compute) -> np.ndarray:
        """compute(stage, what, b, length, sources) memoised in _STAGE_MEMO on the stage's
        key id, `what`, b and the lengths; the sources it adds are kept with it and added
        to self.sources on every hit."""
        lengths = np.asarray(length, dtype=float)
        key = (self._stage_ids[stage], what, float(b), lengths.shape, lengths.tobytes())
        hit = _STAGE_MEMO.get(key)
        if hit is None:
            if len(_STAGE_MEMO) >= STAGE_MEMO_ENTRIES:
                _STAGE_MEMO.clear()
            sources: set[str] = set()
            seconds = compute(stage, what, b, length, sources)
            if isinstance(seconds, np.ndarray):
                seconds.setflags(write=False)
            hit = _STAGE_MEMO[key] = (seconds, frozenset(sources))
        self.sources |= hit[1]
        return hit[0]

    def _stage_s(self, stage: int, op: str, b: int, length, sources: set[str]) -> np.ndarray:
        tp, spec = self.ex.tp, self.role.spec
        last = stage == self.ex.pp - 1
        worst = None
        for timer in self.timers[stage]:
            parts = [("block", self.geo.stage_layers[stage])]
            if stage == 0:
                parts.append(("embedding", 1))
            if last:
                parts.append((self.head_part, 1))
            total = 0.0
            for part, count in parts:
                sources.add(timer.source_for(op, part, tp))
                total = total + count * timer.time_s(op, part, tp, b, length)
            if spec.moe is not None:
                total = total + self.geo.stage_layers[stage] * moe_cost.routed_experts_time_s(
                    spec, timer.hardware, op, tp, self.ex.ep, b, length)
            worst = total if worst is None else np.maximum(worst, total)
        tokens = b * (1 if op == "decode" else np.asarray(length, dtype=float))
        dtype = self.timers[stage][0].hardware.compute_dtype_bytes
        act_bytes = tokens * spec.hidden_size * dtype
        per_block = {"forward": 2, "prefill": 2, "decode": 2, "backward": 2}[op]
        count = per_block * self.geo.stage_layers[stage] + (1 if stage == 0 else 0)
        comm_s = self.tp_allreduces_s(stage, count, act_bytes)
        if last and self.role.head == "lm" and op != "backward":
            comm_s = comm_s + self.tp_allreduces_s(stage, 3, tokens * 4.0)
        return worst * self.knobs.compute_scale + comm_s

    def recompute_s(self, stage: int, b: int, length) -> np.ndarray:
        """What a train step's backward reruns on the stage under the execution's
        recomputation mode (recompute.py): that share of its blocks' forward time and the
        rerun TP all-reduces; 0 for "none". The embedding and head are never rerun.
        Memoised like stage_s (it reads what stage_s reads, and the mode); arrays come
        back read-only."""
        return self._memoised(stage, ("recompute", self.ex.recompute), b, length,
                              self._recompute_s)

    def _recompute_s(self, stage: int, what: tuple[str, str], b: int, length,
                     sources: set[str]) -> np.ndarray:
        mode, layers = what[1], self.geo.stage_layers[stage]
        share = recompute.recomputed_forward_share(self.role.spec, mode, length)
        if mode == "none":
            return share
        worst = max(layers * self._block_forward_s(timer, b, length)
                    for timer in self.timers[stage])
        dtype = self.timers[stage][0].hardware.compute_dtype_bytes
        act_bytes = b * np.asarray(length, dtype=float) * self.role.spec.hidden_size * dtype
        count = recompute.RECOMPUTED_TP_ALLREDUCES[mode] * layers
        return share * worst * self.knobs.compute_scale + \
            self.tp_allreduces_s(stage, count, act_bytes)

    def _block_forward_s(self, timer, b: int, length):
        """One block's forward on `timer`'s hardware, a mixture-of-experts block's routed
        experts included."""
        seconds = timer.time_s("forward", "block", self.ex.tp, b, length)
        spec = self.role.spec
        if spec.moe is None:
            return seconds
        return seconds + moe_cost.routed_experts_time_s(spec, timer.hardware, "forward",
                                                        self.ex.tp, self.ex.ep, b, length)

    def all_to_all_s(self, stage: int, op: str, b: int, length) -> np.ndarray:
        """Seconds of the all-to-alls of the stage's mixture-of-experts blocks for one
        micro-batch (costmodel/moe_cost.py): `op` "forward", "prefill", "decode",
        "backward", or "recompute" (those the execution's recomputation mode reruns); 0 for
        a dense model or ep 1. Memoised like stage_s."""
        if self.role.spec.moe is None or self.ex.ep == 1:
            return np.asarray(length, dtype=float) * 0.0
        what = ("all_to_all", op, self.ex.recompute if op == "recompute" else "")
        return self._memoised(stage, what, b, length, self._all_to_all_s)

    def _all_to_all_s(self, stage: int, what: tuple[str, str, str], b: int, length,
                      sources: set[str]) -> np.ndarray:
        op, mode = what[1], what[2]
        recomputed = op == "recompute"
        calls = (moe_cost.RECOMPUTED_ALL_TO_ALLS_PER_BLOCK[mode] if recomputed
                 else moe_cost.ALL_TO_ALLS_PER_BLOCK[op])
        counts = (moe_cost.RECOMPUTED_COUNT_EXCHANGES_PER_BLOCK[mode] if recomputed
                  else moe_cost.COUNT_EXCHANGES_PER_BLOCK[op])
        tokens = b * (1 if op == "decode" else np.asarray(length, dtype=float))
        dtype = self.timers[stage][0].hardware.compute_dtype_bytes
        link = self.knobs.link(self.geo.ep_link[stage])
        spec, ep = self.role.spec, self.ex.ep
        one = moe_cost.all_to_all_s(spec, ep, link, tokens, dtype)
        return self.geo.stage_layers[stage] * (calls * one
                                               + counts * moe_cost.count_exchange_s(spec, ep,
                                                                                    link))

    def max_all_to_all_s(self, ops: tuple[str, ...], b: int, length) -> np.ndarray:
        """The largest over the stages of the summed all-to-alls of `ops` (all_to_all_s) of
        one micro-batch."""
        return np.max([sum(self.all_to_all_s(s, op, b, length) for op in ops)
                       for s in self.geo.stage_classes], axis=0)

    def max_stage_s(self, op: str, b: int, length, last_stage_extra_s: float = 0.0
                    ) -> np.ndarray:
        """The slowest stage of `op`, the last stage doing `last_stage_extra_s` more (a
        sampled step's noise, costmodel/generate_cost.py); one stage of each class of alike
        stages is timed (Geometry.stage_classes: the last stage is a class of its own)."""
        last = self.ex.pp - 1
        return np.max([self.stage_s(s, op, b, length)
                       + (last_stage_extra_s if s == last else 0.0)
                       for s in self.geo.stage_classes], axis=0)

    def send_s(self, b: int, tokens_per_seq) -> np.ndarray:
        if self.geo.pp_link is None:
            return 0.0
        dtype = self.timers[0][0].hardware.compute_dtype_bytes
        message = b * np.asarray(tokens_per_seq, dtype=float) * self.role.spec.hidden_size * dtype
        return comm.p2p_time_s(message, self.knobs.link(self.geo.pp_link))
