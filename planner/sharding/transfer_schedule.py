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
3. otherwise the least loaded replica (ties: lowest device id).
Pieces between one (sender, receiver) pair form one *message*. Messages are put into
*steps* greedily, largest first: a message goes to the first step in which its sender sends
nothing and its receiver receives nothing yet, so within a step no device sends twice or
receives twice (a device may send one message and receive another). Steps run one after
another. Identical source and destination give the empty schedule.

**Data transfer** of a call's outputs to a consumer on another mesh: with `n` sequences and
`dp` replicas, replica r holds sequences [r*n//dp, (r+1)*n//dp) on every one of its devices
(every rank of a replica sees the same micro-batches). Each destination device needs its
replica's range; each piece comes from a device of the source replica holding it, chosen
like parameters (same device, same node, least loaded). Pieces name the sequence range.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

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


@dataclass(frozen=True)
class Schedule:
    """Local copies (src == dst) and the steps of messages between devices."""

    local: tuple[Piece, ...]
    steps: tuple[tuple[Piece, ...], ...]

    @property
    def is_empty(self) -> bool:
        return not self.local and not self.steps

    def sends(self) -> tuple[Piece, ...]:
        return tuple(p for step in self.steps for p in step)


EMPTY_SCHEDULE = Schedule(local=(), steps=())


def _intersect(a: ShardSlice, b: ShardSlice) -> ShardSlice | None:
    out = tuple((max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b))
    return None if any(lo >= hi for lo, hi in out) else out


class _Replicas:
    """The devices holding one piece, arranged for `_SourcePicker`: as a set (is the
    destination one of them), per node, and as a heap of (load, device) over all of them.
    The heap is lazy: an entry whose load is stale is refreshed when it reaches the top,
    which is exact because loads only grow (the top entry with a current load is the least
    loaded device, ties to the lowest id)."""

    def __init__(self, devices: Sequence[int], device_node: Sequence[int]):
        self.devices = tuple(devices)
        self.members = frozenset(self.devices)
        self.by_node: dict[int, list[int]] = defaultdict(list)
        for device in self.devices:
            self.by_node[device_node[device]].append(device)
        self.heap: list[tuple[int, int]] | None = None


class _SourcePicker:
    """Chooses among replicas: same device, then same node, then least loaded (ties: the
    lowest device id), counting the bytes assigned to each device so far."""

    def __init__(self, device_node: Sequence[int]):
        self.node = device_node
        self.load = [0] * len(device_node)

    def replicas(self, devices: Sequence[int]) -> _Replicas:
        return _Replicas(devices, self.node)

    def pick(self, replicas: _Replicas, dst: int, size: int) -> int:
        if dst in replicas.members:
            return dst
        load = self.load
        same_node = replicas.by_node.get(self.node[dst])
        if same_node:
            best = same_node[0]
            for c in same_node[1:]:
                if load[c] < load[best] or (load[c] == load[best] and c < best):
                    best = c
            load[best] += size
            return best
        heap = replicas.heap
        if heap is None:
            heap = replicas.heap = sorted((load[c], c) for c in replicas.devices)
        while heap[0][0] != load[heap[0][1]]:
            heapq.heapreplace(heap, (load[heap[0][1]], heap[0][1]))
        best = heap[0][1]
        load[best] += size
        heapq.heapreplace(heap, (load[best], best))
        return best


def _group_into_steps(pieces: list[Piece], bytes_of) -> tuple[tuple[Piece, ...], ...]:
    messages: dict[tuple[int, int], list[Piece]] = defaultdict(list)
    sizes: dict[tuple[int, int], int] = defaultdict(int)
    for piece in pieces:
        pair = (piece.src, piece.dst)
        messages[pair].append(piece)
        sizes[pair] += bytes_of(piece)
    order = sorted(messages, key=lambda pair: (-sizes[pair], pair))
    # The steps each device already sends / receives in: a message goes to the first step
    # in neither of its ends' sets.
    sending: dict[int, set[int]] = defaultdict(set)
    receiving: dict[int, set[int]] = defaultdict(set)
    steps: list[list[Piece]] = []
    for src, dst in order:
        busy_send, busy_receive = sending[src], receiving[dst]
        index = 0
        while index in busy_send or index in busy_receive:
            index += 1
        if index == len(steps):
            steps.append([])
        busy_send.add(index)
        busy_receive.add(index)
        steps[index].extend(messages[(src, dst)])
    return tuple(tuple(step) for step in steps)


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
    picker = _SourcePicker(device_node)
    local: list[Piece] = []
    remote: list[Piece] = []
    # The replicas of a piece depend only on the source stage and shard ranks holding it.
    replicas: dict[tuple[int, tuple[ShardRank, ...], int], _Replicas] = {}

    def holders(stage: int, ranks: tuple[ShardRank, ...], ep: int) -> _Replicas:
        key = (stage, ranks, ep)
        if key not in replicas:
            replicas[key] = picker.replicas([placement_device(src, d, r, stage)
                                             for e, r in ranks for d in range(e, src.dp, ep)])
        return replicas[key]

    targets: dict[tuple[int, int, int, int], list[int]] = {}

    def receivers(tp_rank: int, ep_rank: int, ep: int, stage: int) -> list[int]:
        """The destination devices of one shard rank: dp ranks of that expert rank."""
        key = (tp_rank, ep_rank, ep, stage)
        if key not in targets:
            targets[key] = [placement_device(dst, d, tp_rank, stage)
                            for d in range(ep_rank, dst.dp, ep)]
        return targets[key]

    for param in model_params(spec, head, dst.pp):
        stage = src_stage[param.name]
        src_ep, dst_ep = (src.ep, dst.ep) if param.is_expert else (1, 1)
        tp_pieces = _tp_pieces(spec, param.split, param.shape, src.tp, dst.tp, src_ep, dst_ep)
        for index, pieces in enumerate(tp_pieces):
            dst_ep_rank, dst_tp_rank = divmod(index, dst.tp)
            wanted = [(piece, slice_elements(piece), holders(stage, ranks, src_ep))
                      for piece, ranks in pieces]
            for target in receivers(dst_tp_rank, dst_ep_rank, dst_ep, param.stage):
                for piece, size, candidates in wanted:
                    source = picker.pick(candidates, target, size)
                    item = Piece(param.name, source, target, piece, size)
                    (local if source == target else remote).append(item)
    return Schedule(local=tuple(local), steps=_group_into_steps(remote, lambda p: p.num_elements))


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
    picker = _SourcePicker(device_node)
    local: list[Piece] = []
    remote: list[Piece] = []
    for dst_rank in range(dst.dp):
        want_lo, want_hi = sequence_range(n_seqs, dst.dp, dst_rank)
        for src_rank in range(src.dp):
            have_lo, have_hi = sequence_range(n_seqs, src.dp, src_rank)
            lo, hi = max(want_lo, have_lo), min(want_hi, have_hi)
            if lo >= hi:
                continue
            candidates = picker.replicas(replica_devices(src, src_rank))
            for target in replica_devices(dst, dst_rank):
                source = picker.pick(candidates, target, hi - lo)
                item = Piece("sequences", source, target, ((lo, hi),), hi - lo)
                (local if source == target else remote).append(item)
    return Schedule(local=tuple(local), steps=_group_into_steps(remote, lambda p: p.num_elements))
