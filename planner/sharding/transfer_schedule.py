"""Transfer schedules of a reallocation and of a data transfer: a shared pure function.

The cost model prices these schedules and the runtime executes exactly them.

**Parameter reallocation** from a source layout on a mesh to a destination layout (for one
model): every destination device (dp_rank, tp_rank, stage) needs, for each parameter of its
stage, the slice `planner.sharding.param_shards.shard_slice` gives it. That slice is cut where it
meets the source TP shards; each piece comes from one source replica holding it, chosen in
this order (routed experts' weights of a mixture-of-experts model are held by the source
devices of matching expert rank only, and wanted per destination expert rank:
rank_groups.expert_rank):
1. the destination device itself (a local copy, zero link cost);
2. a replica on the destination's node, the least loaded one (bytes assigned so far);
3. otherwise the least loaded replica (ties, here and in 2: lowest device id).
Pieces between one (sender, receiver) pair form one *message*. Messages are put into
*steps* greedily, largest first (ties: the lower (sender, receiver)): a message goes to the first step in which its sender sends
nothing and its receiver receives nothing yet, so within a step no device sends twice or
receives twice (a device may send one message and receive another). Steps run one after
another. Identical source and destination give the empty schedule.

**Data transfer** of a call's outputs to a consumer on another mesh: with `n` sequences and
`dp` replicas, replica r holds sequences [r*n//dp, (r+1)*n//dp) on every one of its devices
(every rank of a replica sees the same micro-batches). Each destination device needs its
replica's range; each piece comes from a device of the source replica holding it, chosen
like parameters (same device, same node, least loaded). Pieces name the sequence range.

Both rules are sequential (a choice depends on the loads, or the steps, the earlier ones
left); planner.sharding.schedule_kernels runs them compiled over arrays, and a `Schedule`
holds its pieces as arrays, which the cost model prices without building a `Piece` each.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Sequence

import numpy as np

from planner.domain.modelspec import HeadKind, ModelSpec
from planner.domain.placement import Placement
from planner.sharding.param_shards import (
    ParamInfo,
    ShardSlice,
    model_params,
    shard_slice,
    slice_elements,
)
from planner.sharding.rank_groups import placement_device
from planner.sharding.schedule_kernels import first_fit_steps, pick_sources


@dataclass(frozen=True)
class Piece:
    """`num_elements` of tensor `name` (slice `ranges` of the full tensor) from src to dst.

    For data transfers `name` is "sequences" and `ranges` is ((first, stop),).
    """

    name: str
    src: int
    dst: int
    ranges: ShardSlice
    num_elements: int


# What a piece carries, without its ends: (tensor name, ranges, elements).
PieceKind = tuple[str, ShardSlice, int]


class Schedule:
    """Local copies (src == dst) and the steps of messages between devices.

    Held as arrays, so that the cost model prices a schedule of a million pieces without
    building them: per piece (local copies first, in the order they were chosen, then the
    sends, step by step, a step's messages in the order they were placed, a message's pieces
    in the order they were chosen) its `piece_kind` (an index into `kinds`), `piece_src`,
    `piece_dst`, `piece_elements` and `piece_step` (-1 for a local copy); per message (all
    pieces between one sender and one receiver, in the order they were placed)
    `message_src`, `message_dst`, `message_elements`, `message_step`. `local`, `steps` and
    `sends()` give the pieces as `Piece`s, built on first use (the runtime's view)."""

    def __init__(self, kinds: Sequence[PieceKind], piece_kind: np.ndarray,
                 piece_src: np.ndarray, piece_dst: np.ndarray, piece_step: np.ndarray,
                 num_steps: int):
        self.kinds = tuple(kinds)
        self.piece_kind = piece_kind
        self.piece_src = piece_src
        self.piece_dst = piece_dst
        self.piece_step = piece_step
        self.num_steps = num_steps
        kind_elements = np.array([k[2] for k in self.kinds] or [0], dtype=np.int64)
        self.piece_elements = kind_elements[piece_kind]
        sends = np.flatnonzero(piece_step >= 0)
        # A message's pieces are adjacent in the sends' order.
        first = sends[np.r_[True, (np.diff(piece_src[sends]) != 0)
                            | (np.diff(piece_dst[sends]) != 0)
                            | (np.diff(piece_step[sends]) != 0)]] if len(sends) else sends
        self.message_src = piece_src[first]
        self.message_dst = piece_dst[first]
        self.message_step = piece_step[first]
        self.message_elements = np.add.reduceat(self.piece_elements[sends],
                                                first - len(piece_step) + len(sends)) \
            if len(sends) else np.zeros(0, np.int64)

    @classmethod
    def of_pieces(cls, local: Sequence[Piece], steps: Sequence[Sequence[Piece]]
                  ) -> "Schedule":
        """A schedule given as pieces (each step's pieces of one message adjacent)."""
        pieces = list(local) + [p for step in steps for p in step]
        kinds = [(p.name, p.ranges, p.num_elements) for p in pieces]
        step_of = [-1] * len(local) + [i for i, step in enumerate(steps) for _ in step]
        return cls(kinds, np.arange(len(pieces)),
                   np.array([p.src for p in pieces], dtype=np.int64),
                   np.array([p.dst for p in pieces], dtype=np.int64),
                   np.array(step_of, dtype=np.int64), len(steps))

    @property
    def is_empty(self) -> bool:
        return len(self.piece_kind) == 0

    def _piece(self, i: int) -> Piece:
        name, ranges, elements = self.kinds[self.piece_kind[i]]
        return Piece(name, int(self.piece_src[i]), int(self.piece_dst[i]), ranges, elements)

    @cached_property
    def local(self) -> tuple[Piece, ...]:
        return tuple(self._piece(i) for i in np.flatnonzero(self.piece_step < 0))

    @cached_property
    def steps(self) -> tuple[tuple[Piece, ...], ...]:
        steps: list[list[Piece]] = [[] for _ in range(self.num_steps)]
        for i in np.flatnonzero(self.piece_step >= 0):
            steps[self.piece_step[i]].append(self._piece(i))
        return tuple(tuple(step) for step in steps)

    def sends(self) -> tuple[Piece, ...]:
        return tuple(p for step in self.steps for p in step)


def _empty_schedule() -> Schedule:
    none = np.zeros(0, dtype=np.int64)
    return Schedule((), none, none, none, none, 0)


EMPTY_SCHEDULE = _empty_schedule()


def _intersect(a: ShardSlice, b: ShardSlice) -> ShardSlice | None:
    out = tuple((max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b))
    return None if any(lo >= hi for lo, hi in out) else out


class _Requests:
    """The pieces wanted, in the order their sources are chosen: per request the piece kind,
    the destination device and the replica group that may serve it. Replica groups are
    numbered as they are first named (`group_id`)."""

    def __init__(self):
        self.kinds: list[PieceKind] = []
        self.kind: list[np.ndarray] = []
        self.target: list[np.ndarray] = []
        self.group: list[np.ndarray] = []
        self.groups: list[tuple[int, ...]] = []
        self._group_ids: dict[object, int] = {}

    def group_id(self, key: object, devices) -> int:
        """The id of replica group `key`, its devices computed (`devices()`) once."""
        if key not in self._group_ids:
            self._group_ids[key] = len(self.groups)
            self.groups.append(tuple(devices()))
        return self._group_ids[key]

    def add(self, kinds: Sequence[PieceKind], groups: Sequence[int],
            targets: np.ndarray) -> None:
        """Every target wants each of `kinds` (from the group beside it), target by target."""
        first = len(self.kinds)
        self.kinds.extend(kinds)
        self.kind.append(np.tile(np.arange(first, first + len(kinds)), len(targets)))
        self.group.append(np.tile(np.asarray(groups, dtype=np.int64), len(targets)))
        self.target.append(np.repeat(targets, len(kinds)))

    def schedule(self, device_node: Sequence[int]) -> Schedule:
        """Choose each request's source (`pick_sources`), then place the messages into steps
        largest first, ties by (sender, receiver) (`first_fit_steps`)."""
        if not self.kind:
            return EMPTY_SCHEDULE
        kind = np.concatenate(self.kind)
        target = np.concatenate(self.target)
        node = np.asarray(device_node, dtype=np.int64)
        elements = np.array([k[2] for k in self.kinds], dtype=np.int64)[kind]
        source = pick_sources(target, elements, np.concatenate(self.group),
                              *_group_arrays(self.groups, node), node, len(node))
        local = np.flatnonzero(source == target)
        remote = np.flatnonzero(source != target)
        pair = source[remote] * len(node) + target[remote]
        pairs, message_of = np.unique(pair, return_inverse=True)
        size = np.bincount(message_of, weights=elements[remote], minlength=len(pairs))
        order = np.lexsort((pairs, -size))
        senders, sender = np.unique(pairs[order] // len(node), return_inverse=True)
        receivers, receiver = np.unique(pairs[order] % len(node), return_inverse=True)
        placed = first_fit_steps(sender, receiver, len(senders), len(receivers))
        step_of_pair = np.empty(len(pairs), dtype=np.int64)
        step_of_pair[order] = placed
        rank_of_pair = np.empty(len(pairs), dtype=np.int64)
        rank_of_pair[order] = np.arange(len(pairs))
        # sends by (step, message's place in the step order), each message's pieces in order
        position = step_of_pair * len(pairs) + rank_of_pair
        sent = remote[np.argsort(position[message_of], kind="stable")]
        pieces = np.concatenate([local, sent])
        step = np.full(len(target), -1, dtype=np.int64)
        step[remote] = step_of_pair[message_of]
        return Schedule(self.kinds, kind[pieces], source[pieces], target[pieces],
                        step[pieces], int(placed.max()) + 1 if len(placed) else 0)


def _group_arrays(groups: Sequence[tuple[int, ...]], node: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group_start, node_start, members) as schedule_kernels.pick_sources reads them."""
    num_nodes = int(node.max()) + 1
    group_start = np.zeros(len(groups) + 1, dtype=np.int64)
    node_start = np.zeros((len(groups), num_nodes + 1), dtype=np.int64)
    ordered = []
    for g, devices in enumerate(groups):
        devices = np.asarray(devices, dtype=np.int64)
        devices = devices[np.lexsort((devices, node[devices]))]
        ordered.append(devices)
        group_start[g + 1] = group_start[g] + len(devices)
        node_start[g] = group_start[g] + np.searchsorted(node[devices], np.arange(num_nodes + 1))
    return group_start, node_start, np.concatenate(ordered)


# A shard rank of a parameter: (expert rank, tp rank); the expert rank is 0 for tensors
# every data-parallel rank holds alike.
ShardRank = tuple[int, int]


@lru_cache(maxsize=4096)
def _tp_pieces(spec: ModelSpec, split: str, shape: tuple[int, ...], src_tp: int, dst_tp: int,
               src_ep: int = 1, dst_ep: int = 1
               ) -> tuple[tuple[tuple[ShardSlice, tuple[ShardRank, ...]], ...], ...]:
    """Per destination shard rank (ep rank major, then tp rank): each piece it needs and the
    source shard ranks holding it. `src_ep` / `dst_ep` split expert tensors only (1 for the
    others).

    Several source ranks hold the identical piece for replicated tensors and replicated kv
    heads; any of their devices may serve it, and it is delivered once.
    """
    template = ParamInfo("", shape, 0, split)
    src_slices = {(e, r): shard_slice(spec, template, r, src_tp, e, src_ep)
                  for e in range(src_ep) for r in range(src_tp)}
    per_dst = []
    for dst_ep_rank in range(dst_ep):
        for dst_rank in range(dst_tp):
            wanted = shard_slice(spec, template, dst_rank, dst_tp, dst_ep_rank, dst_ep)
            holders: dict[ShardSlice, list[ShardRank]] = defaultdict(list)
            for src_rank, held in src_slices.items():
                piece = _intersect(wanted, held)
                if piece is not None:
                    holders[piece].append(src_rank)
            per_dst.append(tuple((piece, tuple(ranks)) for piece, ranks in holders.items()))
    return tuple(per_dst)


def param_schedule(spec: ModelSpec, head: HeadKind, src: Placement, dst: Placement,
                   device_node: Sequence[int]) -> Schedule:
    """The reallocation schedule of model (spec, head) from `src` to `dst` (module docstring)."""
    if src == dst:
        return EMPTY_SCHEDULE
    src_stage = {p.name: p.stage for p in model_params(spec, head, src.pp)}
    requests = _Requests()

    def holders(stage: int, ranks: tuple[ShardRank, ...], ep: int) -> int:
        """The replica group of a piece: it depends only on the source stage and the shard
        ranks holding it."""
        return requests.group_id((stage, ranks, ep), lambda: (
            placement_device(src, d, r, stage) for e, r in ranks for d in range(e, src.dp, ep)))

    targets: dict[tuple[int, int, int, int], np.ndarray] = {}

    def receivers(tp_rank: int, ep_rank: int, ep: int, stage: int) -> np.ndarray:
        """The destination devices of one shard rank: dp ranks of that expert rank."""
        key = (tp_rank, ep_rank, ep, stage)
        if key not in targets:
            targets[key] = np.array([placement_device(dst, d, tp_rank, stage)
                                     for d in range(ep_rank, dst.dp, ep)], dtype=np.int64)
        return targets[key]

    for param in model_params(spec, head, dst.pp):
        stage = src_stage[param.name]
        src_ep, dst_ep = (src.ep, dst.ep) if param.is_expert else (1, 1)
        tp_pieces = _tp_pieces(spec, param.split, param.shape, src.tp, dst.tp, src_ep, dst_ep)
        for index, pieces in enumerate(tp_pieces):
            dst_ep_rank, dst_tp_rank = divmod(index, dst.tp)
            requests.add([(param.name, piece, slice_elements(piece)) for piece, _ in pieces],
                         [holders(stage, ranks, src_ep) for _, ranks in pieces],
                         receivers(dst_tp_rank, dst_ep_rank, dst_ep, param.stage))
    return requests.schedule(device_node)


def sequence_range(n_seqs: int, dp: int, dp_rank: int) -> tuple[int, int]:
    """Sequences [first, stop) of data-parallel replica `dp_rank` out of `dp`."""
    return dp_rank * n_seqs // dp, (dp_rank + 1) * n_seqs // dp


def replica_devices(layout: Placement, dp_rank: int) -> list[int]:
    return [placement_device(layout, dp_rank, t, p) for p in range(layout.pp) for t in range(layout.tp)]


def data_schedule(src: Placement, dst: Placement, n_seqs: int,
                  device_node: Sequence[int]) -> Schedule:
    """Which device sends which sequence range to which device (module docstring)."""
    if src == dst:
        return EMPTY_SCHEDULE
    requests = _Requests()
    for dst_rank in range(dst.dp):
        want_lo, want_hi = sequence_range(n_seqs, dst.dp, dst_rank)
        targets = np.array(replica_devices(dst, dst_rank), dtype=np.int64)
        for src_rank in range(src.dp):
            have_lo, have_hi = sequence_range(n_seqs, src.dp, src_rank)
            lo, hi = max(want_lo, have_lo), min(want_hi, have_hi)
            if lo < hi:
                group = requests.group_id(src_rank, lambda: replica_devices(src, src_rank))
                requests.add([("sequences", ((lo, hi),), hi - lo)], [group], targets)
    return requests.schedule(device_node)
