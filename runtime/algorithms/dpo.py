"""DPO (Rafailov et al. 2023): -log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r))) per pair.

Sequences come in pairs (2j chosen, 2j + 1 rejected, never split across micro-batches);
pi and ref are sums of response-token logprobs. `loss_mask` has one weight per pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.algorithms.common import AlgoConfig, Rollout, response
from runtime.batch import MicroBatch, ModelOutputs

UNIT = 2  # sequences that must stay together


def actor_extras(rollout: Rollout, config: AlgoConfig) -> dict[str, torch.Tensor]:
    return {"ref_logprobs": rollout.keys["ref_logprobs"], "response_mask": rollout.response_mask}


def pair_margins(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
                 ) -> torch.Tensor:
    """(pi_c - ref_c) - (pi_r - ref_r) per pair, from per-token response logprobs."""
    diff = ((logprobs - ref_logprobs) * mask).sum(-1).view(-1, 2)
    return diff[:, 0] - diff[:, 1]


def actor_loss(outputs: ModelOutputs, mb: MicroBatch, config: AlgoConfig) -> torch.Tensor:
    e = mb.extras
    logprobs = response(outputs, e["ref_logprobs"].shape[1])
    margins = pair_margins(logprobs, e["ref_logprobs"], e["response_mask"])
    return (-F.logsigmoid(config.dpo_beta * margins) * mb.loss_mask).sum()
