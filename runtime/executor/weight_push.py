"""Weight pushes of an asynchronous plan (staleness s >= 1) on this rank.

push(j) copies a rollout model's training-copy weights of version j + 1 (those right after
train(j)) into its rollout copy (planner.domain.augment.WeightPush). It is a reallocation
from the train call's placement to the generate calls' placement, by the schedule the cost
model prices (planner.sharding.transfer_schedule.param_schedule, run with the machinery of
runtime/executor/realloc.py); with equal placements that schedule is empty and every rank
copies its training shards into its rollout shards (a local copy, zero link cost).

Every rank posts its steps in the priority order, where push(j) sits right after the last
generate call of iteration j + s (planner.domain.augment.scheduled_nodes), before that
iteration's train call: there the training copy holds version j + s, which is j + 1 for
s = 1, so the push runs at its node as a reallocation does (`push_now`: step by step, each
step's outgoing pieces packed into one buffer and its incoming message staged in another,
the message buffers the cost model prices). For s >= 2 train(j + 1) ..
train(j + s - 1) have changed the weights by then, so the senders take version j + 1 when
it exists: right after train(j) (`post_push`) each packs its outgoing messages and posts
them as non-blocking sends on PUSH_TAG, and keeps a copy of the pieces it copies locally
(memory: those pieces, at most its training shards, from train(j) to push(j)). At the push
node (`finish_push`) the receivers receive step by step into the rollout copy (each device
receives at most one message per step) and the senders wait for their sends. Sends on
their own tag never match a receive of a reallocation (tag 0) or a data transfer (its own
tag, runtime/executor/steps.py) posted in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from planner.domain.modelspec import HeadKind, ModelSpec
from planner.domain.placement import Placement
from planner.sharding.transfer_schedule import Piece, Schedule
from runtime.executor.realloc import ShardViews, holding, reallocate

# Any tag but 0, the one reallocations use (realloc.py), and below the data transfers'
# (steps.TRANSFER_TAG_OFFSET and up); 14 for the issue that added pushes.
PUSH_TAG = 14

Shards = tuple[Placement, dict[str, torch.Tensor]]


@dataclass
class PostedPush:
    """A sender's part of one push between train(j) and push(j): local pieces with a copy
    of their version j + 1 values, and the posted sends with their buffers."""

    local: list[tuple[Piece, torch.Tensor]] = field(default_factory=list)
    sends: list[tuple[dist.Work, torch.Tensor]] = field(default_factory=list)
    bytes_sent: int = 0


def _local_pieces(schedule: Schedule, src_views: ShardViews, me: int,
                  equal_placements: bool) -> list[Piece]:
    """The pieces this rank copies into its own rollout shards: the schedule's, or with
    equal placements every shard it holds whole."""
    if not equal_placements:
        return [p for p in schedule.local if p.dst == me]
    return [Piece(name, me, me, src_views.start[name], t.numel())
            for name, t in src_views.params.items()]


@torch.no_grad()
def push_now(schedule: Schedule, spec: ModelSpec, head: HeadKind, me: int,
             src: Shards | None, dst: Shards | None) -> int:
    """A push of staleness 1 at its node (module docstring): the training shards `src` (None
    off the train placement) into the rollout shards `dst` (None off the generate
    placement); equal placements copy shard by shard. Returns the bytes this rank sent."""
    if src is not None and dst is not None and src[0] == dst[0]:
        for name, tensor in src[1].items():
            dst[1][name].copy_(tensor)
        return 0
    return reallocate(schedule, spec, head, me, src, dst)


@torch.no_grad()
def post_push(schedule: Schedule, spec: ModelSpec, head: HeadKind, me: int, src: Shards,
              dst_placement: Placement) -> PostedPush:
    """Right after train(j) on a rank of the train placement: copy what it copies locally
    and post what it sends (module docstring)."""
    views = ShardViews(spec, head, src[0], holding(src[0], me), src[1])
    posted = PostedPush()
    for piece in _local_pieces(schedule, views, me, src[0] == dst_placement):
        posted.local.append((piece, views.view(piece).clone()))
    for step in schedule.steps:
        outgoing = [p for p in step if p.src == me]
        if outgoing:
            send = torch.cat([views.view(p).reshape(-1) for p in outgoing])
            posted.sends.append((dist.isend(send, dst=outgoing[0].dst, tag=PUSH_TAG), send))
            posted.bytes_sent += send.numel() * send.element_size()
    return posted


@torch.no_grad()
def finish_push(schedule: Schedule, spec: ModelSpec, head: HeadKind, me: int,
                posted: PostedPush | None, dst: Shards | None) -> int:
    """At the push node: write the local pieces and receive this rank's messages into its
    rollout shards (`dst`, None off the generate placement), then wait for its own sends
    (`posted`, None off the train placement). Returns the bytes this rank sent."""
    target = (ShardViews(spec, head, dst[0], holding(dst[0], me), dst[1])
              if dst is not None else None)
    if posted is not None:
        for piece, values in posted.local:
            target.view(piece).copy_(values)
    for step in schedule.steps:
        incoming = [p for p in step if p.dst == me]
        if not incoming:
            continue
        any_shard = next(iter(target.params.values()))
        buffer = torch.empty(sum(p.num_elements for p in incoming), dtype=any_shard.dtype,
                             device=any_shard.device)
        dist.irecv(buffer, src=incoming[0].src, tag=PUSH_TAG).wait()
        offset = 0
        for p in incoming:
            view = target.view(p)
            view.copy_(buffer[offset:offset + p.num_elements].view(view.shape))
            offset += p.num_elements
    if posted is None:
        return 0
    for work, _ in posted.sends:
        work.wait()
    return posted.bytes_sent
