"""Parameter reallocation: execute planner.sharding.transfer_schedule.param_schedule on this rank.

The schedule lists local copies and steps of messages; within a step a device sends at most
one message and receives at most one. A message is the pieces (slices of full parameters)
from one sender to one receiver, packed in schedule order into one flat buffer of the model
dtype. Steps run one after another (as the cost model prices them): each rank posts its send
and its receive of the step, waits for both, and unpacks.

Shard offsets: a piece names a slice of the full tensor; the sender's shard of that
parameter starts at its own `shard_slice` (of its tp rank and, for a mixture-of-experts
model's routed experts, its expert rank: rank_groups.expert_rank of its dp rank under the
layout's ep), the receiver's at its own, so indices are the piece's ranges minus the shard's
start on each side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from planner.domain.modelspec import HeadKind, ModelSpec
from planner.domain.placement import Placement
from planner.sharding.param_shards import ShardSlice, model_params, shard_slice
from planner.sharding.rank_groups import expert_rank, placement_coordinate
from planner.sharding.transfer_schedule import Piece, Schedule


@dataclass(frozen=True)
class Holding:
    """Where this rank sits in a layout: (tp_rank, stage, expert rank of its dp rank), or
    None when not a member."""

    tp_rank: int
    stage: int
    ep_rank: int = 0


def holding(layout: Placement, rank: int) -> Holding | None:
    if rank not in layout.devices:
        return None
    c = placement_coordinate(layout, rank)
    return Holding(c.tp_rank, c.pp_rank, expert_rank(c.dp_rank, layout.ep))


def _local_index(ranges: ShardSlice, shard: ShardSlice) -> tuple[slice, ...]:
    return tuple(slice(a - s, b - s) for (a, b), (s, _) in zip(ranges, shard))


class ShardViews:
    """Index pieces into one rank's shards of one layout."""

    def __init__(self, spec: ModelSpec, head: HeadKind, layout: Placement, where: Holding,
                 params: dict[str, torch.Tensor]):
        infos = {p.name: p for p in model_params(spec, head, layout.pp)}
        self.params = params
        self.start = {name: shard_slice(spec, infos[name], where.tp_rank, layout.tp,
                                        where.ep_rank, layout.ep)
                      for name in params}

    def view(self, piece: Piece) -> torch.Tensor:
        return self.params[piece.name][_local_index(piece.ranges, self.start[piece.name])]


def empty_shards(spec: ModelSpec, head: HeadKind, layout: Placement, where: Holding,
                 dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Uninitialised shards of this rank's stage under `layout` (in stage order)."""
    out = {}
    for p in model_params(spec, head, layout.pp):
        if p.stage == where.stage:
            ranges = shard_slice(spec, p, where.tp_rank, layout.tp, where.ep_rank, layout.ep)
            out[p.name] = torch.empty([b - a for a, b in ranges], dtype=dtype, device=device)
    return out


@torch.no_grad()
def reallocate(schedule: Schedule, spec: ModelSpec, head: HeadKind, me: int,
               src: tuple[Placement, dict[str, torch.Tensor]] | None,
               dst: tuple[Placement, dict[str, torch.Tensor]] | None) -> int:
    """Fill this rank's destination shards (`dst` params, written in place) from the source
    shards (`src` params) of every rank; None for a layout this rank is not in. Returns the
    bytes this rank sent to other ranks."""
    source = target = None
    if src is not None:
        source = ShardViews(spec, head, src[0], holding(src[0], me), src[1])
    if dst is not None:
        target = ShardViews(spec, head, dst[0], holding(dst[0], me), dst[1])
    for piece in schedule.local:
        if piece.dst == me:
            target.view(piece).copy_(source.view(piece))
    sent = 0
    for step in schedule.steps:
        outgoing = [p for p in step if p.src == me]
        incoming = [p for p in step if p.dst == me]
        works, buffer = [], None
        if outgoing:
            send = torch.cat([source.view(p).reshape(-1) for p in outgoing])
            works.append(dist.isend(send, dst=outgoing[0].dst))
            sent += send.numel() * send.element_size()
        if incoming:
            any_shard = next(iter(target.params.values()))
            buffer = torch.empty(sum(p.num_elements for p in incoming), dtype=any_shard.dtype,
                                 device=any_shard.device)
            works.append(dist.irecv(buffer, src=incoming[0].src))
        for work in works:
            work.wait()
        offset = 0
        for p in incoming:
            view = target.view(p)
            view.copy_(buffer[offset:offset + p.num_elements].view(view.shape))
            offset += p.num_elements
    return sent
