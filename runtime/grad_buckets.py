"""Data-parallel gradient reduction in buckets, overlapped with backward.

Megatron-LM (`overlap_grad_reduce`, megatron/core/distributed/param_and_grad_buffer.py) and
torch DDP reduce a bucket of gradients as soon as backward has finished all of them, so only
what is left after backward ends is exposed. Here the buckets are those of
planner.sharding.grad_buckets over the optimizer's flat gradient buffer (cut from its end,
which backward finishes first), the same ones the cost model prices.

While `overlapped()` is entered (runtime/train.py: around the backward of the last
micro-batch of a minibatch; earlier micro-batches only accumulate), a post-accumulate-grad
hook on every parameter marks its gradient final, and every bucket whose gradients are all
final is launched, in bucket order, as an asynchronous collective on the DP group: an
in-place all-reduce, or under ZeRO-1 a reduce-scatter that leaves this rank the piece of the
bucket it owns (on gloo an in-place all-reduce of which the rank keeps that piece:
uses_reduce_scatter). `reduced_gradient()` (the optimizer step) launches the buckets not launched
yet (all of them when nothing ran overlapped, e.g. a step after a hand-made backward), waits
for every one and returns this rank's part. Launching strictly in bucket order keeps the
collectives of all DP ranks in the same order whatever order the hooks fire in.

The reduction is elementwise, so the sums are those of one collective over the whole buffer;
only the order a backend adds the dp values of one element in may differ (none at dp 2).

This rank's part: the whole buffer without ZeRO-1; under ZeRO-1 its piece of every bucket,
held contiguously in address order (`pieces`). After the step, `all_gather` brings every
rank's updated pieces back into each replica's parameter buffer, one all-gather per bucket,
not overlapped with anything (Megatron's overlap_param_gather, with the next forward, is not
done here). With a single-rank DP group nothing is launched and no hook is registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from planner.sharding.grad_buckets import GRAD_BUCKET_BYTES, grad_bucket_bounds
from runtime.parallel_context import Group


def uses_reduce_scatter(group: Group) -> bool:
    """Whether ZeRO-1 reduces a bucket with a reduce-scatter (NCCL) or with an all-reduce of
    which this rank keeps its piece (gloo: its reduce_scatter is no ring and measured 1.6x
    its own all-reduce, 17.9 against 11.2 ms for 13.6 MiB over 2 ranks on the CI machine,
    while its all-gather runs at the ring's cost). costmodel/comm.py prices the same choice
    (zero1_gradient_reduce_time_s)."""
    return group.handle is not None and dist.get_backend(group.handle) != "gloo"


@dataclass(frozen=True)
class Piece:
    """Elements [start, stop) of the flat buffer held at `offset` of this rank's part."""

    start: int
    stop: int
    offset: int

    @property
    def numel(self) -> int:
        return self.stop - self.start


class GradBuckets:
    """Bucketed DP reduction of one flat gradient buffer whose views are `params`' grads."""

    def __init__(self, params: list[torch.Tensor], flat_grads: torch.Tensor, group: Group,
                 group_rank: int, shard: bool, bucket_bytes: int = GRAD_BUCKET_BYTES):
        self.params, self.flat_grads, self.group, self.shard = params, flat_grads, group, shard
        self.reduce_scatters = shard and uses_reduce_scatter(group)
        numel = flat_grads.numel()
        multiple = group.size if shard else 1
        self.bounds = [tuple(b) for b in grad_bucket_bounds(
            numel, flat_grads.element_size(), multiple, bucket_bytes).tolist()]
        self.pieces = self._pieces(group_rank, multiple)
        self.owned_numel = sum(p.numel for p in self.pieces)
        size = self.bounds[0][1] - self.bounds[0][0]
        self._param_buckets, offset = [], 0
        for p in params:  # bucket k holds elements [numel - (k + 1) size, numel - k size)
            first, last = (numel - offset - p.numel()) // size, (numel - 1 - offset) // size
            self._param_buckets.append(range(first, last + 1))
            offset += p.numel()
        self._counts = [0] * len(self.bounds)
        for buckets in self._param_buckets:
            for k in buckets:
                self._counts[k] += 1
        self._reset()

    def _pieces(self, group_rank: int, multiple: int) -> list[Piece]:
        """This rank's part: the whole buffer, or under ZeRO-1 its piece of every bucket in
        address order (the reverse of launch order)."""
        if not self.shard:
            return [Piece(0, self.flat_grads.numel(), 0)]
        pieces, offset = [], 0
        for lo, hi in reversed(self.bounds):
            share = (hi - lo) // multiple
            start = lo + group_rank * share
            pieces.append(Piece(start, start + share, offset))
            offset += share
        return pieces

    def _piece_of(self, bucket: int) -> Piece:
        return self.pieces[len(self.bounds) - 1 - bucket]

    def _reset(self) -> None:
        self._waiting = list(self._counts)
        self._next = 0
        self._works: list = []
        self._part: torch.Tensor | None = None

    @contextmanager
    def overlapped(self) -> Iterator[None]:
        """Launch each bucket from the backward run inside, once its gradients are final."""
        if self.group.handle is None:
            yield
            return
        assert self._next == 0, "the previous round of buckets was not waited for"
        handles = [p.register_post_accumulate_grad_hook(partial(self._on_final, i))
                   for i, p in enumerate(self.params)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _on_final(self, index: int, _param: torch.Tensor) -> None:
        for k in self._param_buckets[index]:
            self._waiting[k] -= 1
        while self._next < len(self.bounds) and self._waiting[self._next] == 0:
            self._launch_next()

    def _launch_next(self) -> None:
        lo, hi = self.bounds[self._next]
        bucket = self.flat_grads[lo:hi]
        if self.reduce_scatters:
            if self._part is None:
                self._part = torch.empty(self.owned_numel, dtype=bucket.dtype,
                                         device=bucket.device)
            piece = self._piece_of(self._next)
            out = self._part[piece.offset:piece.offset + piece.numel]
            work = dist.reduce_scatter_single(out, bucket, group=self.group.handle,
                                              async_op=True)
        else:
            work = dist.all_reduce(bucket, group=self.group.handle, async_op=True)
        self._works.append(work)
        self._next += 1

    @property
    def launched(self) -> int:
        """Buckets launched and not yet waited for."""
        return len(self._works)

    def reduced_gradient(self) -> torch.Tensor:
        """This rank's part of the DP-summed gradients (module docstring), in address order."""
        if self.group.handle is None:
            return self.flat_grads
        while self._next < len(self.bounds):
            self._launch_next()
        for work in self._works:
            work.wait()
        if self.reduce_scatters:
            part = self._part
        elif self.shard:   # all-reduced in place: this rank's pieces, in address order
            part = torch.cat([self.flat_grads[p.start:p.stop] for p in self.pieces])
        else:
            part = self.flat_grads
        self._reset()
        return part

    def all_gather(self, flat_params: torch.Tensor) -> None:
        """Every rank's pieces of `flat_params` into every rank's buffer, bucket by bucket,
        one at a time: each bucket's input is a copy of this rank's piece (it lies in the
        output), so only one bucket's piece is copied at once (costmodel/memory.py prices
        one)."""
        for k, (lo, hi) in enumerate(self.bounds):
            piece = self._piece_of(k)
            mine = flat_params[piece.start:piece.stop].clone()
            dist.all_gather_single(flat_params[lo:hi], mine, group=self.group.handle)
