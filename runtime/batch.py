"""Micro-batches going into the engine and the model outputs coming out of it.

Every rank of a data-parallel replica (all its TP ranks and pipeline stages) is called with
the same micro-batches; different replicas get different data. Padding may be on the left or
the right: `attention_mask` marks real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MicroBatch:
    """Token sequences for inference or training.

    input_ids, attention_mask: [batch, seq]. loss_mask: weights of the items the loss sums
    over ([batch, seq - 1] for token losses on the LM head, [batch, seq] on values, or any
    shape the loss function agrees with); the engine divides the loss by the sum of loss_mask
    over the whole minibatch and all replicas. extras: anything the loss function needs
    (old logprobs, advantages, returns, ...).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)


@dataclass
class ModelOutputs:
    """Per-token outputs of one micro-batch.

    LM head: logprobs[b, t] = log p(input_ids[b, t + 1] | tokens <= t), [batch, seq - 1], and
    entropy of the same distributions when asked for. Value head: values [batch, seq].
    """

    logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None
