"""Data-parallel gradient reduction, global-norm clipping and Adam(W), optionally ZeRO-1.

The optimizer sees one rank's parameter shards as one flat fp32 vector (in `params` order):
gradients are flattened into one bucket, reduced over the DP group, clipped and applied by an
elementwise Adam to an fp32 master copy, which is then copied back into the (possibly bf16)
parameters. Elementwise Adam means every layout computes the same update from the same
gradients; layouts differ only by the order of float sums in gradients and norm.

ZeRO-1 (`shard_over_dp=True`): the gradient bucket is reduce-scattered instead of
all-reduced, each DP rank keeps master weights and Adam moments of its 1/dp chunk only,
updates it, and the chunks are all-gathered back into every replica's parameters.

Gradient norm: TP-sharded parameters contribute their shard's squares on every TP rank;
TP-replicated ones (norm weights, value head) only on TP rank 0, so they count once. The sum
is all-reduced over the TP and PP groups (and over DP for ZeRO-1, whose ranks each hold a
different chunk); replicas hold equal reduced gradients otherwise, so DP is not summed then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from runtime.comm import all_reduce
from runtime.parallel_context import ParallelContext
from runtime.params import is_tp_replicated

NORM_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_


@dataclass(frozen=True)
class AdamConfig:
    """Adam with decoupled weight decay; max_grad_norm None disables clipping."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0


def clip_factor(norm: float, max_norm: float | None) -> float:
    """Gradient multiplier that brings the global norm down to `max_norm`."""
    if max_norm is None:
        return 1.0
    return min(1.0, max_norm / (norm + NORM_EPS))


class Adam:
    """Adam(W) over one rank's parameter shards, with the DP gradient reduction built in."""

    def __init__(self, params: dict[str, torch.Tensor], config: AdamConfig,
                 ctx: ParallelContext, shard_over_dp: bool = False):
        self.params, self.config, self.ctx = params, config, ctx
        self.zero1 = shard_over_dp and ctx.dp > 1
        self.step_count = 0
        flat = torch.cat([p.detach().reshape(-1).float() for p in params.values()])
        counted = torch.cat([torch.full((p.numel(),), float(
            ctx.coord.tp_rank == 0 or not is_tp_replicated(n)), device=flat.device)
            for n, p in params.items()])
        self.numel = flat.numel()
        if self.zero1:
            chunk = -(-self.numel // ctx.dp)
            self.padded = chunk * ctx.dp
            mine = slice(ctx.coord.dp_rank * chunk, (ctx.coord.dp_rank + 1) * chunk)
            flat = torch.nn.functional.pad(flat, (0, self.padded - self.numel))[mine].clone()
            counted = torch.nn.functional.pad(counted, (0, self.padded - self.numel))[mine]
        self.master, self.counted = flat, counted
        self.m = torch.zeros_like(flat)
        self.v = torch.zeros_like(flat)

    @torch.no_grad()
    def step(self) -> float:
        """Reduce gradients over DP, clip by global norm, update; returns the norm."""
        grad = self._reduced_gradient()
        squares = (grad.pow(2) * self.counted).sum()
        if self.zero1:
            all_reduce(squares, self.ctx.dp_group)
        all_reduce(squares, self.ctx.tp_group)
        all_reduce(squares, self.ctx.pp_group)
        norm = math.sqrt(float(squares))
        self._adam(grad * clip_factor(norm, self.config.max_grad_norm))
        self._write_back()
        return norm

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def _reduced_gradient(self) -> torch.Tensor:
        flat = torch.cat([p.grad.reshape(-1).float() for p in self.params.values()])
        if not self.zero1:
            return all_reduce(flat, self.ctx.dp_group)
        flat = torch.nn.functional.pad(flat, (0, self.padded - self.numel))
        mine = torch.empty(self.padded // self.ctx.dp, device=flat.device)
        dist.reduce_scatter_single(mine, flat, group=self.ctx.dp_group.handle)
        return mine

    def _adam(self, grad: torch.Tensor) -> None:
        c = self.config
        self.step_count += 1
        self.m.mul_(c.beta1).add_(grad, alpha=1 - c.beta1)
        self.v.mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
        if c.weight_decay:
            self.master.mul_(1 - c.lr * c.weight_decay)
        denom = (self.v / (1 - c.beta2 ** self.step_count)).sqrt_().add_(c.eps)
        self.master.addcdiv_(self.m, denom, value=-c.lr / (1 - c.beta1 ** self.step_count))

    def _write_back(self) -> None:
        flat = self.master
        if self.zero1:
            flat = torch.empty(self.padded, device=flat.device)
            dist.all_gather_single(flat, self.master, group=self.ctx.dp_group.handle)
        offset = 0
        for p in self.params.values():
            p.data.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
