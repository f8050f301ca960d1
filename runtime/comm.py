"""Communication helpers: Megatron's tensor-parallel autograd operators and plain wrappers.

`copy_to_tp` (identity forward, all-reduce backward) goes in front of every column-parallel
use of a TP-replicated activation; `reduce_from_tp` (all-reduce forward, identity backward)
sums partial results of row-parallel layers and vocab shards. Every TP rank computes the same
loss from the same replicated values, so gradients of replicated tensors stay identical
across TP ranks. All helpers are no-ops on single-rank groups (`Group.handle is None`).

`all_to_all_rows` (mixture-of-experts dispatch and combine) sends row blocks of variable
sizes to every member of a group; its backward is the reverse all-to-all of the gradient.
It uses `torch.distributed.all_to_all_single` with split sizes, which gloo runs on the
torch 2.13 CPU build (measured: 2 ranks, unequal splits, exact). Every call, forward or
backward, records its send buffer in an `AllToAllLedger` (the rule is in its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from runtime.parallel_context import Group


def all_reduce(tensor: torch.Tensor, group: Group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce of `tensor` over `group`; returns it."""
    if group.handle is not None:
        dist.all_reduce(tensor, op=op, group=group.handle)
    return tensor


def broadcast(tensor: torch.Tensor, group: Group, src_index: int) -> torch.Tensor:
    """In-place broadcast from the member at position `src_index` of `group`."""
    if group.handle is not None:
        dist.broadcast(tensor, src=group.ranks[src_index], group=group.handle)
    return tensor


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad.contiguous(), ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x.contiguous().clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tp(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Identity forward, gradient summed over the TP group in backward."""
    return x if group.handle is None else _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Sum over the TP group in forward, identity in backward."""
    return x if group.handle is None else _ReduceFromTP.apply(x, group)


def gather_last_dim(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Concatenate the TP shards of `x` along its last dim (no autograd; tests and tools)."""
    if group.handle is None:
        return x
    parts = [torch.empty_like(x) for _ in range(group.size)]
    dist.all_gather(parts, x.contiguous(), group=group.handle)
    return torch.cat(parts, dim=-1)


@dataclass
class AllToAllLedger:
    """The all-to-all traffic of one model on one rank (held by its ParallelModel).

    Rule: every `all_to_all_rows` call over a group of two or more ranks, in forward and in
    backward (and in a recomputation's rerun), adds its whole send buffer: rows x row width
    x element size, bytes, the rows this rank keeps for itself included (they are part of
    the buffer all_to_all_single is given). The exchange of row counts that precedes a
    dispatch (`exchange_counts`, int64 metadata) is not counted; nothing is counted on a
    single-rank group, where no all-to-all runs.
    """

    bytes: int = 0
    calls: int = 0

    def record(self, buffer: torch.Tensor) -> None:
        self.bytes += buffer.numel() * buffer.element_size()
        self.calls += 1


def _all_to_all(x: torch.Tensor, send_rows: list[int], recv_rows: list[int], group: Group,
                ledger: AllToAllLedger) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty((sum(recv_rows), *x.shape[1:]))
    ledger.record(x)
    dist.all_to_all_single(out, x, output_split_sizes=recv_rows, input_split_sizes=send_rows,
                           group=group.handle)
    return out


class _AllToAllRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, send_rows, recv_rows, group, ledger):
        ctx.args = (send_rows, recv_rows, group, ledger)
        return _all_to_all(x, send_rows, recv_rows, group, ledger)

    @staticmethod
    def backward(ctx, grad):
        send_rows, recv_rows, group, ledger = ctx.args
        return _all_to_all(grad, recv_rows, send_rows, group, ledger), None, None, None, None


def all_to_all_rows(x: torch.Tensor, send_rows: list[int], recv_rows: list[int], group: Group,
                    ledger: AllToAllLedger) -> torch.Tensor:
    """Rows [sum(send_rows), ...] of `x` sent in blocks: send_rows[i] consecutive rows to the
    group's member i; returns the blocks received, recv_rows[i] rows from member i, in member
    order. Differentiable (backward: the reverse all-to-all). Identity on one rank."""
    if group.handle is None:
        return x
    return _AllToAllRows.apply(x, send_rows, recv_rows, group, ledger)


def exchange_counts(counts: torch.Tensor, group: Group) -> torch.Tensor:
    """int64 counts [members x n]: row i goes to member i; returns [members x n], row i from
    member i (no autograd, not in the ledger). Identity on one rank."""
    if group.handle is None:
        return counts
    out = torch.empty_like(counts)
    dist.all_to_all_single(out, counts.contiguous(), group=group.handle)
    return out
