"""Gradient synchronisation, global-norm clipping and Adam(W) on parameter shards.

Adam is elementwise, so given the same gradients every layout computes the same update;
differences between layouts come only from the order of float sums in the gradients and the
norm. State (m, v and, for low-precision weights, an fp32 master copy) is fp32.

Gradient norm: TP-sharded parameters contribute their shard's squares on every TP rank;
TP-replicated ones (norm weights, value head) only on TP rank 0, so they are counted once.
The sum is all-reduced over the TP group, then over the PP group. Gradients are already
equal across DP replicas (all-reduced before), so DP is not summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from runtime.comm import all_reduce
from runtime.layout import ParallelContext
from runtime.shard_spec import is_tp_replicated

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


def all_reduce_gradients(params: dict[str, torch.Tensor], ctx: ParallelContext) -> None:
    """Sum gradients over the DP group in one flat bucket (the loss is already normalised)."""
    if ctx.dp_group.handle is None:
        return
    grads = [p.grad for p in params.values()]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce(flat, ctx.dp_group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def global_grad_norm(params: dict[str, torch.Tensor], ctx: ParallelContext) -> float:
    """L2 norm of the whole model's gradient, counting every element once."""
    device = next(iter(params.values())).device
    squares = torch.zeros((), dtype=torch.float32, device=device)
    for name, p in params.items():
        if ctx.coord.tp_rank == 0 or not is_tp_replicated(name):
            squares += p.grad.float().pow(2).sum()
    all_reduce(squares, ctx.tp_group)
    all_reduce(squares, ctx.pp_group)
    return math.sqrt(float(squares))


class Adam:
    """Adam(W) over one rank's parameter shards (in place)."""

    def __init__(self, params: dict[str, torch.Tensor], config: AdamConfig):
        self.params = params
        self.config = config
        self.step_count = 0
        self.master = {n: p.detach().float().clone() for n, p in params.items()
                       if p.dtype != torch.float32}
        self.m = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}

    @torch.no_grad()
    def step(self, grad_scale: float = 1.0) -> None:
        """One update with gradients multiplied by `grad_scale` (the clipping factor)."""
        c = self.config
        self.step_count += 1
        bias1 = 1 - c.beta1 ** self.step_count
        bias2 = 1 - c.beta2 ** self.step_count
        for name, p in self.params.items():
            weight = self.master.get(name, p)
            grad = p.grad.float() * grad_scale
            self.m[name].mul_(c.beta1).add_(grad, alpha=1 - c.beta1)
            self.v[name].mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
            if c.weight_decay:
                weight.mul_(1 - c.lr * c.weight_decay)
            denom = (self.v[name] / bias2).sqrt_().add_(c.eps)
            weight.addcdiv_(self.m[name], denom, value=-c.lr / bias1)
            if weight is not p:
                p.copy_(weight)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None


def clip_factor(norm: float, max_norm: float | None) -> float:
    """Gradient multiplier that brings the global norm down to `max_norm`."""
    if max_norm is None:
        return 1.0
    return min(1.0, max_norm / (norm + NORM_EPS))
