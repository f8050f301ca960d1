"""Data-parallel gradient reduction, global-norm clipping and Adam(W), optionally ZeRO-1.

Memory is what the cost model prices (costmodel/memory.py): weights and gradients in the
compute dtype, plus Adam's states. The optimizer moves one rank's parameter shards into one
flat buffer (each parameter becomes a view of it) and preallocates one flat gradient buffer
the same way (each parameter's `.grad` is a view; backward accumulates into it in place), as
Megatron's distributed optimizer does, so the DP reduction and the update need no flat
copies. Adam keeps an fp32 master copy only where the weights are not fp32 themselves
(12 bytes per parameter with bf16 weights: master + two moments; 8 with fp32: the moments,
the weights being the master), of this rank's part. Elementwise Adam means every layout
computes the same update from the same gradients; layouts differ only by the order of float
sums in gradients and norm.

ZeRO-1 (`shard_over_dp=True`): the gradient buffer is reduce-scattered instead of
all-reduced, each DP rank keeps the master weights and moments of its 1/dp chunk only,
updates it, and the chunks are all-gathered, in the compute dtype, back into every replica's
parameter buffer.

Gradient norm: TP-sharded parameters contribute their shard's squares on every TP rank;
TP-replicated ones (norm weights, value head) only on TP rank 0, so they count once (the
`counted` spans of this rank's part). The sum is all-reduced over the TP and PP groups (and
over DP for ZeRO-1, whose ranks each hold a different chunk); replicas hold equal reduced
gradients otherwise, so DP is not summed then.
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
    """Adam(W) over one rank's parameter shards, with the DP gradient reduction built in
    (module docstring). Takes over the storage of `params` and their gradients."""

    def __init__(self, params: dict[str, torch.Tensor], config: AdamConfig,
                 ctx: ParallelContext, shard_over_dp: bool = False):
        self.params, self.config, self.ctx = params, config, ctx
        self.zero1 = shard_over_dp and ctx.dp > 1
        self.step_count = 0
        tensors = list(params.values())
        self.numel = sum(p.numel() for p in tensors)
        shards = ctx.dp if self.zero1 else 1
        chunk = -(-self.numel // shards)
        self.padded = chunk * shards
        first = ctx.coord.dp_rank * chunk if self.zero1 else 0
        self.mine = slice(first, first + chunk)
        self.flat_params, self.flat_grads = self._flat_buffers(tensors)
        self.counted = self._counted_spans(params, first, chunk)
        own = self.flat_params[self.mine]
        # fp32 weights are their own master (updated in place); others get an fp32 copy
        self.master = own if own.dtype == torch.float32 else own.float()
        self.m = torch.zeros_like(self.master)
        self.v = torch.zeros_like(self.master)

    def _flat_buffers(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameter and gradient buffers (padded to dp chunks), every parameter and its
        `.grad` made views of them."""
        dtype, device = tensors[0].dtype, tensors[0].device
        flat_params = torch.zeros(self.padded, dtype=dtype, device=device)
        flat_grads = torch.zeros(self.padded, dtype=dtype, device=device)
        offset = 0
        for p in tensors:
            n = p.numel()
            view = flat_params[offset:offset + n].view_as(p)
            view.copy_(p.detach())
            p.data = view
            p.grad = flat_grads[offset:offset + n].view_as(p)
            offset += n
        return flat_params, flat_grads

    def _counted_spans(self, params: dict[str, torch.Tensor], first: int, chunk: int
                       ) -> list[tuple[int, int]]:
        """(start, stop) within this rank's part of the parameters whose squares it adds to
        the gradient norm (module docstring)."""
        spans, offset = [], 0
        for name, p in params.items():
            lo, hi = offset, offset + p.numel()
            offset = hi
            if self.ctx.coord.tp_rank != 0 and is_tp_replicated(name):
                continue
            lo, hi = max(lo, first), min(hi, first + chunk)
            if lo < hi:
                spans.append((lo - first, hi - first))
        return spans

    @torch.no_grad()
    def step(self) -> float:
        """Reduce gradients over DP, clip by global norm, update; returns the norm."""
        grad = self._reduced_gradient()
        squares = sum((grad[lo:hi].float().pow(2).sum() for lo, hi in self.counted),
                      torch.zeros((), device=grad.device))
        if self.zero1:
            all_reduce(squares, self.ctx.dp_group)
        all_reduce(squares, self.ctx.tp_group)
        all_reduce(squares, self.ctx.pp_group)
        norm = math.sqrt(float(squares))
        self._adam(grad.float() * clip_factor(norm, self.config.max_grad_norm))
        self._write_back()
        return norm

    def zero_grad(self) -> None:
        """Zero the gradient buffer; the parameters' `.grad` views stay."""
        self.flat_grads.zero_()

    def _reduced_gradient(self) -> torch.Tensor:
        """This rank's part of the DP-summed gradients, in the compute dtype."""
        if not self.zero1:
            return all_reduce(self.flat_grads, self.ctx.dp_group)
        mine = torch.empty(self.padded // self.ctx.dp, dtype=self.flat_grads.dtype,
                           device=self.flat_grads.device)
        dist.reduce_scatter_single(mine, self.flat_grads, group=self.ctx.dp_group.handle)
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
        """The updated part into the parameter buffer (a no-op for fp32 weights, their own
        master), then, under ZeRO-1, every replica's parts gathered into it."""
        own = self.flat_params[self.mine]
        if self.master.data_ptr() != own.data_ptr():
            own.copy_(self.master)
        if self.zero1:
            dist.all_gather_single(self.flat_params, own.clone(),
                                   group=self.ctx.dp_group.handle)
