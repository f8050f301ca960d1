"""Forward-only passes over micro-batches: token logprobs (and entropy), or values / rewards.

Micro-batches flow through the pipeline in order; with non-blocking sends, stage s works on
micro-batch i while stage s + 1 works on i - 1. The last stage's results are then broadcast
over the pipeline group, so every rank of the replica returns them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from runtime.batch import MicroBatch, ModelOutputs
from runtime.comm import broadcast, gather_last_dim
from runtime.model import ParallelModel
from runtime.pipeline import StageLink
from runtime.vocab_parallel import token_logprobs


def outputs_from_head(model: ParallelModel, head_out: torch.Tensor, input_ids: torch.Tensor,
                      with_entropy: bool) -> ModelOutputs:
    """Turn the last stage's head output into per-token outputs (differentiable)."""
    if model.head == "value":
        return ModelOutputs(values=head_out.float())
    logprobs, entropy = token_logprobs(head_out[:, :-1], input_ids[:, 1:], model.vocab_start,
                                       model.ctx.tp_group, with_entropy)
    return ModelOutputs(logprobs=logprobs, entropy=entropy)


def run_stages(model: ParallelModel, micro_batches: list[MicroBatch],
               reduce: Callable[[torch.Tensor, MicroBatch], Any]) -> list[Any]:
    """Forward every micro-batch through the pipeline; on the last stage, `reduce(head
    output, micro-batch)` of each, taken as soon as the micro-batch is through, so only one
    micro-batch's logits are alive at a time (what the cost model prices)."""
    ctx, dev = model.ctx, model.device
    link = StageLink(ctx, dev.device)
    reduced = []
    for mb in micro_batches:
        ids = mb.input_ids.to(dev.device)
        batch, seq = ids.shape
        x = ids if ctx.is_first_stage else link.recv_prev(
            (batch, seq, model.spec.hidden_size), dev.dtype)
        out = model.forward_sequences(x, mb.attention_mask.to(dev.device))
        if ctx.is_last_stage:
            reduced.append(reduce(out, mb))
        else:
            link.send_next(out)
    link.wait_sends()
    return reduced


def _from_last_stage(model: ParallelModel, tensor: torch.Tensor | None, shape: tuple[int, ...]
                     ) -> torch.Tensor:
    if tensor is None:
        tensor = torch.empty(shape, dtype=torch.float32, device=model.device.device)
    return broadcast(tensor.contiguous(), model.ctx.pp_group, model.ctx.pp - 1)


@torch.no_grad()
def inference(model: ParallelModel, micro_batches: list[MicroBatch],
              with_entropy: bool = False) -> list[ModelOutputs]:
    """Token logprobs (LM head; entropy too if asked) or values (value head), per micro-batch."""
    outputs = run_stages(model, micro_batches, lambda out, mb: outputs_from_head(
        model, out, mb.input_ids.to(model.device.device), with_entropy))
    results = []
    for i, mb in enumerate(micro_batches):
        batch, seq = mb.shape
        mine = outputs[i] if model.ctx.is_last_stage else ModelOutputs()
        if model.head == "value":
            results.append(ModelOutputs(values=_from_last_stage(model, mine.values, (batch, seq))))
            continue
        logprobs = _from_last_stage(model, mine.logprobs, (batch, seq - 1))
        entropy = (_from_last_stage(model, mine.entropy, (batch, seq - 1))
                   if with_entropy else None)
        results.append(ModelOutputs(logprobs=logprobs, entropy=entropy))
    return results


@torch.no_grad()
def full_logits(model: ParallelModel, micro_batches: list[MicroBatch]) -> list[torch.Tensor]:
    """Full-vocabulary fp32 logits [batch, seq, vocab] on every rank (tests and debugging:
    this gathers the vocabulary, which the engine's own operations never do)."""
    gathered = run_stages(model, micro_batches,
                          lambda out, mb: gather_last_dim(out.float(), model.ctx.tp_group))
    results = []
    for i, mb in enumerate(micro_batches):
        batch, seq = mb.shape
        mine = gathered[i] if model.ctx.is_last_stage else None
        results.append(_from_last_stage(model, mine, (batch, seq, model.spec.vocab_size)))
    return results
