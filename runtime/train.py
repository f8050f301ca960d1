"""Training: 1F1B pipeline schedule over micro-batches, DP gradient reduction, clipping, Adam.

A train step runs `num_minibatches` optimizer updates, each over a contiguous group of the
given micro-batches (PPO-style several minibatches per step). Within a minibatch, stage s of
pp runs min(pp - s - 1, M) warm-up forwards, then alternates one forward and one backward,
then drains the remaining backwards (Megatron's non-interleaved 1F1B), so at most pp - s
micro-batches' activations are alive. `recompute` (the train call's Execution.recompute,
which the cost model prices) says what the decoder blocks rerun in backward instead of
keeping: the whole block ("full"), its attention sub-layer ("selective") or nothing
("none"), runtime/model.py.

The loss: `loss_fn(outputs, micro_batch)` returns the SUM of the loss over the items weighted
by `micro_batch.loss_mask`; the engine divides by the total loss_mask weight of the minibatch
over all DP replicas, so the update is the same whatever the split into replicas and
micro-batches.

The optimizer reduces the gradients over DP (all-reduce, or reduce-scatter for ZeRO-1; a
mixture-of-experts model's routed experts over their expert-DP group, runtime/optimizer.py)
in buckets, each launched while the backward of the minibatch's last micro-batch still runs, as
soon as backward has finished its gradients (runtime/grad_buckets.py, Megatron-LM's
overlap_grad_reduce); earlier micro-batches only accumulate. The step waits for them, then
sums the gradients of replicated kv heads (tp above the model's kv heads) over the ranks
sharing each (runtime/optimizer.py), before the norm and the update.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from planner.domain.layout import RecomputeMode
from planner.sharding.param_shards import kv_replicas
from runtime.batch import MicroBatch, ModelOutputs
from runtime.comm import all_reduce
from runtime.inference import outputs_from_head
from runtime.model import ParallelModel
from runtime.optimizer import Adam
from runtime.pipeline import StageLink

LossFn = Callable[[ModelOutputs, MicroBatch], torch.Tensor]


@dataclass(frozen=True)
class TrainStats:
    """Per minibatch: the normalised loss and the gradient norm before clipping."""

    loss: float
    grad_norm: float


def _minibatches(micro_batches: list[MicroBatch], count: int) -> list[list[MicroBatch]]:
    if not 1 <= count <= len(micro_batches):
        raise ValueError(f"num_minibatches {count} must be between 1 and the number of "
                         f"micro-batches {len(micro_batches)}")
    bounds = [round(i * len(micro_batches) / count) for i in range(count + 1)]
    return [micro_batches[a:b] for a, b in zip(bounds, bounds[1:])]


class _Schedule:
    """Forward and backward of each micro-batch of one minibatch on this stage; the last
    backward launches the optimizer's DP reduction (module docstring)."""

    def __init__(self, model: ParallelModel, optimizer: Adam, micro_batches: list[MicroBatch],
                 loss_fn: LossFn, normaliser: float, with_entropy: bool,
                 recompute: RecomputeMode):
        self.model, self.optimizer = model, optimizer
        self.micro_batches, self.loss_fn = micro_batches, loss_fn
        self.normaliser, self.with_entropy = normaliser, with_entropy
        self.recompute = recompute
        self.link = StageLink(model.ctx, model.device.device)
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.loss_sum = 0.0

    def forward(self, i: int) -> None:
        model, ctx, dev = self.model, self.model.ctx, self.model.device
        mb = self.micro_batches[i]
        ids = mb.input_ids.to(dev.device)
        batch, seq = ids.shape
        if ctx.is_first_stage:
            x = ids
        else:
            x = self.link.recv_prev((batch, seq, model.spec.hidden_size), dev.dtype)
            x.requires_grad_(True)
        out = model.forward_sequences(x, mb.attention_mask.to(dev.device),
                                      recompute=self.recompute)
        if ctx.is_last_stage:
            outputs = outputs_from_head(model, out, ids, self.with_entropy)
            out = self.loss_fn(outputs, mb) / self.normaliser
            self.loss_sum += float(out.detach())
        else:
            self.link.send_next(out)
        self.saved[i] = (x, out)

    def backward(self, i: int) -> None:
        ctx = self.model.ctx
        x, out = self.saved.pop(i)
        grad = None if ctx.is_last_stage else self.link.recv_next(tuple(out.shape), out.dtype)
        last = i == len(self.micro_batches) - 1
        with self.optimizer.reduce_during_backward() if last else nullcontext():
            torch.autograd.backward(out, grad)
        if not ctx.is_first_stage:
            self.link.send_prev(x.grad)

    def run(self) -> float:
        """1F1B over all micro-batches; returns this stage's share of the loss."""
        ctx = self.model.ctx
        count = len(self.micro_batches)
        warmup = min(ctx.pp - ctx.coord.pp_rank - 1, count)
        for i in range(warmup):
            self.forward(i)
        for i in range(count - warmup):
            self.forward(warmup + i)
            self.backward(i)
        for i in range(count - warmup, count):
            self.backward(i)
        self.link.wait_sends()
        return self.loss_sum


def _loss_normaliser(model: ParallelModel, micro_batches: list[MicroBatch]) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for mb in micro_batches:
        if mb.loss_mask is None:
            raise ValueError("training micro-batches need a loss_mask")
        total += mb.loss_mask.double().sum()
    total = all_reduce(total.to(model.device.device), model.ctx.dp_group)
    if float(total) <= 0:
        raise ValueError("the loss_mask of a minibatch sums to 0 over all replicas")
    return float(total)


def train_step(model: ParallelModel, optimizer: Adam, micro_batches: list[MicroBatch],
               loss_fn: LossFn, num_minibatches: int = 1, with_entropy: bool = False,
               recompute: RecomputeMode = "full") -> list[TrainStats]:
    """Run `num_minibatches` updates; every rank of the layout returns the same stats.

    `recompute`: the train call's Execution.recompute (whose default
    this mirrors); the result is the same either way, only memory and time differ."""
    if optimizer.kv_replicas != kv_replicas(model.spec, model.ctx.tp):
        raise ValueError(f"{model.spec.name} at tp {model.ctx.tp} keeps each kv head on "
                         f"{kv_replicas(model.spec, model.ctx.tp)} ranks; build its Adam with "
                         f"num_kv_heads={model.spec.num_kv_heads} so their gradients are summed")
    for p in model.params.values():
        p.requires_grad_(True)
    ctx = model.ctx
    stats = []
    for minibatch in _minibatches(micro_batches, num_minibatches):
        normaliser = _loss_normaliser(model, minibatch)
        loss = _Schedule(model, optimizer, minibatch, loss_fn, normaliser, with_entropy,
                         recompute).run()
        norm = optimizer.step()
        optimizer.zero_grad()
        total = torch.tensor(loss, dtype=torch.float64, device=model.device.device)
        all_reduce(total, ctx.pp_group)  # only the last stage has a non-zero share
        all_reduce(total, ctx.dp_group)
        stats.append(TrainStats(loss=float(total), grad_norm=norm))
    return stats
