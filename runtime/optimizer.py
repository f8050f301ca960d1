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

The DP reduction runs in buckets (runtime/grad_buckets.py), launched from backward hooks
while `reduce_during_backward()` is entered (train.py: the last micro-batch's backward) and
waited for in `step`. Without ZeRO-1 every bucket is all-reduced and every replica updates
the whole buffer. ZeRO-1 (`shard_over_dp=True`): each bucket is reduce-scattered instead,
each DP rank keeps the master weights and moments of its 1/dp piece of every bucket only,
updates them, and the pieces are all-gathered, in the compute dtype, back into every
replica's parameter buffer.

Mixture-of-experts models (spec.moe; ep = the placement's expert-parallel degree): the
routed experts' stacked tensors (`*.mlp.experts.*`, ParamInfo.is_expert) differ between the
ep ranks of an expert-parallel group (each holds E / ep experts), so they live in a second
flat weight / gradient buffer with its own buckets (the same bucket rule, over that buffer)
and its own Adam state, reduced over the expert-data-parallel group
(ParallelContext.expert_dp_group: the dp / ep ranks of equal expert rank) instead of the DP
group: all-reduced, or under ZeRO-1 reduce-scattered there, each rank owning its 1 / (dp /
ep) piece of every expert bucket, and all-gathered over that group after the update. Every
other parameter (router, shared expert, attention, ...) stays in the dense buffer exactly
as for a dense model; a dense model has no expert buffer, and its collectives and results
are the ones it had before.
Gradient scale: the engine divides the loss by the token weight of the whole minibatch over
all DP replicas (runtime/train.py), so the dense reduction is a plain SUM over dp. An
expert's gradient on its rank already sums the contributions of every token routed to it
from the ep ranks of its group (the all-to-all's backward brings them back), so summing it
over the expert-dp group covers every replica once: the expert reduction is a plain sum
too (the "dp mean = expert-dp sum / full dp" rule, with the 1 / dp inside the loss).

Replicated kv heads (tp above the model's kv heads, `num_kv_heads`): the tp / kv ranks
sharing a kv head (ParallelContext.kv_share_group) each hold a copy of its k/v projection
rows (weights and biases, planner.sharding.param_shards), and each copy's gradient holds
only the contributions of that rank's query heads; the head's gradient is their sum. After
the DP reduction the step all-reduces those gradients over the sharing ranks, one
collective of this rank's part of them packed together (under ZeRO-1 only its 1/dp piece:
the sharing ranks have the same dp rank and identical flat layouts, so their pieces cover
the same elements). Summing after the DP sum is the same sum as before it (both are sums
over the copies and the replicas), and 1/dp of the bytes under ZeRO-1. The copies then get
identical gradients and identical Adam updates, so they stay equal.
costmodel/train_cost.py prices this collective ("kv_sync").

Gradient norm: TP-sharded parameters contribute their shard's squares on every TP rank;
TP-replicated ones (norm weights, value head, the MoE router and shared-expert gate) only
on TP rank 0, and a replicated kv head only on the first rank sharing it, so each counts
once (the `counted` spans of this rank's part). Dense squares: replicas hold equal reduced
gradients, so DP is not summed, except under ZeRO-1, whose DP ranks each hold different
pieces. Expert squares: the ep ranks hold different experts, so they are summed over the
ep group; under ZeRO-1 the expert-dp ranks hold different pieces of them too, and the
dense and expert squares of a rank are added first and summed over the DP group once
(its dp ranks hold every dense piece once and, being ep x (dp / ep) ranks of distinct
expert ranks and pieces, every expert piece once). Then the total is all-reduced over the
TP and PP groups. Collectives of the norm: without ZeRO-1 one scalar all-reduce over the
ep group (MoE, ep > 1) plus TP and PP; under ZeRO-1 over DP, TP and PP, as for dense.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from planner.sharding.grad_buckets import GRAD_BUCKET_BYTES, OPTIMIZER_CHUNK_ELEMENTS
from runtime.comm import all_reduce
from runtime.grad_buckets import GradBuckets
from runtime.parallel_context import Group, ParallelContext
from runtime.params import is_tp_replicated

NORM_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_
# Parameters split by whole kv heads (planner.sharding.param_shards split "kv")
KV_PROJECTIONS = (".self_attn.k_proj.", ".self_attn.v_proj.")
# The routed experts' stacked tensors (planner.sharding.param_shards, ParamInfo.is_expert)
EXPERTS = ".mlp.experts."


def is_kv_projection(name: str) -> bool:
    return any(part in name for part in KV_PROJECTIONS)


def is_expert_param(name: str) -> bool:
    """Whether `name` is a routed experts' tensor, split over the ep ranks (module
    docstring; a test checks it against ParamInfo.is_expert)."""
    return EXPERTS in name


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


class FlatPart:
    """One flat weight buffer and its gradient buffer (every parameter and its `.grad` made
    views of them), reduced in buckets over `group` (sharded over it under ZeRO-1,
    `shard`), with this rank's Adam state (master where the weights are not fp32, moments)
    and the spans of its part that count in the norm (`counted`) or are kv copies."""

    def __init__(self, params: dict[str, torch.Tensor], group: Group, group_rank: int,
                 shard: bool, bucket_bytes: int, counts: Callable[[str], bool],
                 kv_copy: Callable[[str], bool] | None):
        tensors = list(params.values())
        self.group, self.shard = group, shard
        self.numel = sum(p.numel() for p in tensors)
        shards = group.size if shard else 1
        self.padded = -(-self.numel // shards) * shards
        self.flat_params, self.flat_grads = self._flat_buffers(tensors)
        self.buckets = GradBuckets(tensors, self.flat_grads, group, group_rank, shard,
                                   bucket_bytes)
        self.counted = self._part_spans(params, counts)
        self.kv_spans = self._part_spans(params, kv_copy) if kv_copy else []
        pieces = self.buckets.pieces
        if self.flat_params.dtype == torch.float32:  # the weights are their own master
            self.master = self.flat_params
            self.master_pieces = [(p.offset, self.flat_params[p.start:p.stop]) for p in pieces]
        else:
            self.master = torch.empty(self.buckets.owned_numel, dtype=torch.float32,
                                      device=self.flat_params.device)
            for p in pieces:
                self.master[p.offset:p.offset + p.numel].copy_(self.flat_params[p.start:p.stop])
            self.master_pieces = [(0, self.master)]
        self.m = torch.zeros(self.buckets.owned_numel, dtype=torch.float32,
                             device=self.flat_params.device)
        self.v = torch.zeros_like(self.m)

    def _flat_buffers(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameter and gradient buffers (padded to `group` chunks), every parameter
        and its `.grad` made views of them."""
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

    def _part_spans(self, params: dict[str, torch.Tensor], select) -> list[tuple[int, int]]:
        """(start, stop) within this rank's part of the parameters whose name `select`
        accepts."""
        spans, offset = [], 0
        for name, p in params.items():
            lo, hi = offset, offset + p.numel()
            offset = hi
            if not select(name):
                continue
            for piece in self.buckets.pieces:
                start, stop = max(lo, piece.start), min(hi, piece.stop)
                if start < stop:
                    spans.append((piece.offset + start - piece.start,
                                  piece.offset + stop - piece.start))
        return spans

    def squares(self, grad: torch.Tensor) -> torch.Tensor:
        """Sum of the squares of the counted spans of this rank's part `grad` (fp32), chunk
        by chunk (OPTIMIZER_CHUNK_ELEMENTS: the fp32 squares of one chunk at a time)."""
        total = torch.zeros((), dtype=torch.float32, device=grad.device)
        for lo, hi in self.counted:
            for start in range(lo, hi, OPTIMIZER_CHUNK_ELEMENTS):
                stop = min(hi, start + OPTIMIZER_CHUNK_ELEMENTS)
                squared = grad[start:stop].to(torch.float32, copy=True)
                total += squared.mul_(squared).sum()
                del squared   # before the next chunk's copy is made
        return total

    def adam(self, grad: torch.Tensor, clip: float, config: AdamConfig, step_count: int
             ) -> None:
        """Adam(W) on this rank's part, gradients `grad` (compute dtype) times `clip`, chunk
        by chunk (OPTIMIZER_CHUNK_ELEMENTS): one fp32 tensor of one chunk alive at a time,
        the clipped gradient (a copy, scaled in place), then Adam's denominator; every
        element's arithmetic is the unchunked one's."""
        c = config
        step_size = -c.lr / (1 - c.beta1 ** step_count)
        for lo in range(0, grad.numel(), OPTIMIZER_CHUNK_ELEMENTS):
            hi = min(grad.numel(), lo + OPTIMIZER_CHUNK_ELEMENTS)
            g = grad[lo:hi].to(torch.float32, copy=True).mul_(clip)
            m, v = self.m[lo:hi], self.v[lo:hi]
            m.mul_(c.beta1).add_(g, alpha=1 - c.beta1)
            v.mul_(c.beta2).addcmul_(g, g, value=1 - c.beta2)
            del g
            denom = (v / (1 - c.beta2 ** step_count)).sqrt_().add_(c.eps)
            for offset, weights in self.master_pieces:
                start, stop = max(lo, offset), min(hi, offset + weights.numel())
                if start >= stop:
                    continue
                w = weights[start - offset:stop - offset]
                if c.weight_decay:
                    w.mul_(1 - c.lr * c.weight_decay)
                w.addcdiv_(m[start - lo:stop - lo], denom[start - lo:stop - lo],
                           value=step_size)
            del denom   # before the next chunk's gradient copy is made

    def write_back(self) -> None:
        """The updated part into the parameter buffer (a no-op for fp32 weights, their own
        master), then, under ZeRO-1, every rank's pieces gathered into it."""
        if self.master.data_ptr() != self.flat_params.data_ptr():
            for p in self.buckets.pieces:
                self.flat_params[p.start:p.stop].copy_(
                    self.master[p.offset:p.offset + p.numel])
        if self.shard:
            self.buckets.all_gather(self.flat_params)


class Adam:
    """Adam(W) over one rank's parameter shards, with the DP gradient reduction built in
    (module docstring). Takes over the storage of `params` and their gradients.
    `grad_bucket_bytes`: the size of the DP reduction's buckets. `num_kv_heads`: the
    model's kv heads, which say whether its k/v rows are copies to sum (module docstring);
    None when tp divides them (runtime/train.py checks it against the model)."""

    def __init__(self, params: dict[str, torch.Tensor], config: AdamConfig,
                 ctx: ParallelContext, shard_over_dp: bool = False,
                 grad_bucket_bytes: int = GRAD_BUCKET_BYTES, num_kv_heads: int | None = None):
        self.params, self.config, self.ctx = params, config, ctx
        self.kv_replicas = max(1, ctx.tp // num_kv_heads) if num_kv_heads else 1
        self.kv_group = ctx.kv_share_group(num_kv_heads) if self.kv_replicas > 1 else None
        self.zero1 = shard_over_dp and ctx.dp > 1
        self.step_count = 0
        dense = {n: p for n, p in params.items() if not is_expert_param(n)}
        experts = {n: p for n, p in params.items() if is_expert_param(n)}
        self.numel = sum(p.numel() for p in params.values())
        self.dense = FlatPart(dense, ctx.dp_group, ctx.coord.dp_rank, self.zero1,
                              grad_bucket_bytes, self._counts_in_norm,
                              is_kv_projection if self.kv_replicas > 1 else None)
        self.experts = None
        if experts:
            group = ctx.expert_dp_group
            self.experts = FlatPart(experts, group, group.ranks.index(ctx.global_rank),
                                    shard_over_dp and group.size > 1, grad_bucket_bytes,
                                    lambda name: True, None)
        # the dense part under the names the rest of the runtime and its tests read
        self.flat_params, self.flat_grads = self.dense.flat_params, self.dense.flat_grads
        self.buckets, self.master = self.dense.buckets, self.dense.master
        self.m, self.v = self.dense.m, self.dense.v

    @property
    def parts(self) -> list[FlatPart]:
        return [self.dense] + ([self.experts] if self.experts is not None else [])

    def _counts_in_norm(self, name: str) -> bool:
        """Whether this rank adds the squares of `name` to the gradient norm: not for a
        copy another TP rank counts (module docstring)."""
        tp_rank = self.ctx.coord.tp_rank
        if is_tp_replicated(name):
            return tp_rank == 0
        return not is_kv_projection(name) or tp_rank % self.kv_replicas == 0

    @contextmanager
    def reduce_during_backward(self) -> Iterator[None]:
        """Context manager: the backward run inside launches the DP reduction of each bucket
        (of each buffer) as soon as its gradients are final (runtime/grad_buckets.py);
        `step` waits."""
        with ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.buckets.overlapped())
            yield

    @torch.no_grad()
    def step(self) -> float:
        """Reduce gradients over DP (experts over expert-DP), clip by global norm, update;
        returns the norm."""
        grad = self.dense.buckets.reduced_gradient()
        expert_grad = (self.experts.buckets.reduced_gradient()
                       if self.experts is not None else None)
        self._sum_kv_copies(grad)
        squares = self.dense.squares(grad)
        if expert_grad is not None:
            expert_squares = self.experts.squares(expert_grad)
            if not self.zero1:
                all_reduce(expert_squares, self.ctx.ep_group)
            squares = squares + expert_squares
        if self.zero1:
            all_reduce(squares, self.ctx.dp_group)
        all_reduce(squares, self.ctx.tp_group)
        all_reduce(squares, self.ctx.pp_group)
        norm = math.sqrt(float(squares))
        factor = clip_factor(norm, self.config.max_grad_norm)
        self.step_count += 1
        self.dense.adam(grad, factor, self.config, self.step_count)
        self.dense.write_back()
        if expert_grad is not None:
            self.experts.adam(expert_grad, factor, self.config, self.step_count)
            self.experts.write_back()
        return norm

    def _sum_kv_copies(self, grad: torch.Tensor) -> None:
        """Replicated kv heads' gradients summed in `grad` (this rank's part) over the ranks
        sharing each head, packed into one all-reduce (module docstring)."""
        spans = self.dense.kv_spans
        if not spans:
            return
        packed = torch.cat([grad[lo:hi] for lo, hi in spans])
        all_reduce(packed, self.kv_group)
        offset = 0
        for lo, hi in spans:
            grad[lo:hi].copy_(packed[offset:offset + hi - lo])
            offset += hi - lo

    def zero_grad(self) -> None:
        """Zero the gradient buffers; the parameters' `.grad` views stay."""
        for part in self.parts:
            part.flat_grads.zero_()
