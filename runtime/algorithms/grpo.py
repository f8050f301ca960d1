"""GRPO (Shao et al. 2024): group-normalised sequence rewards as advantages, no critic.

A_i = (r_i - mean of its group) / (std of its group + eps) on every response token, the
clipped surrogate (decoupled with stale samples, runtime.algorithms.common), plus
grpo_kl_beta times the k3 KL estimate to the reference per token (not importance weighted:
the behaviour weight corrects the surrogate only; AReaL keeps its KL in the reward).
"""

from __future__ import annotations

import torch

from runtime.algorithms.common import (
    AlgoConfig,
    Rollout,
    group_view,
    k3_kl,
    local_rows,
    policy_extras,
    policy_loss,
    response,
)
from runtime.batch import MicroBatch, ModelOutputs

STD_EPS = 1e-6


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    groups = group_view(rewards, group_size)
    normed = (groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, unbiased=False,
                                                                   keepdim=True) + STD_EPS)
    return normed.reshape(-1)


def actor_extras(rollout: Rollout, config: AlgoConfig) -> dict[str, torch.Tensor]:
    advantages = local_rows(rollout, group_advantages(rollout.global_keys["rewards"],
                                                      rollout.group_size))
    mask = rollout.response_mask
    return {**policy_extras(rollout), "ref_logprobs": rollout.keys["ref_logprobs"],
            "advantages": advantages[:, None] * mask}


def actor_loss(outputs: ModelOutputs, mb: MicroBatch, config: AlgoConfig) -> torch.Tensor:
    e = mb.extras
    logprobs = response(outputs, e["advantages"].shape[1])
    loss = policy_loss(logprobs, e, config.clip_eps)
    loss = loss + config.grpo_kl_beta * k3_kl(logprobs, e["ref_logprobs"])
    return (loss * mb.loss_mask).sum()
