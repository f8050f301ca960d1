"""Communication helpers: Megatron's tensor-parallel autograd operators and plain wrappers.

`copy_to_tp` (identity forward, all-reduce backward) goes in front of every column-parallel
use of a TP-replicated activation; `reduce_from_tp` (all-reduce forward, identity backward)
sums partial results of row-parallel layers and vocab shards. Every TP rank computes the same
loss from the same replicated values, so gradients of replicated tensors stay identical
across TP ranks. All helpers are no-ops on single-rank groups (`Group.handle is None`).
"""

from __future__ import annotations

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
