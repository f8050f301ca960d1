"""PPO (Ouyang et al. 2022 style): KL-penalised token rewards, GAE, clipped policy and value loss.

Token reward r_t = -kl_coef (logp_old - logp_ref) on every response token, plus the
sequence reward on its last response token. Advantages and returns by GAE(gamma, lambda)
over the critic's values of the rollout (the KL in the reward is to the behaviour logprobs);
no advantage whitening (it would need batch-wide statistics and the same update under every
layout). The policy surrogate is decoupled for stale samples (runtime.algorithms.common).
"""

from __future__ import annotations

import torch

from runtime.algorithms.common import (
    AlgoConfig,
    Rollout,
    policy_extras,
    policy_loss,
    response,
)
from runtime.batch import MicroBatch, ModelOutputs


def token_rewards(rollout: Rollout, config: AlgoConfig) -> torch.Tensor:
    mask = rollout.response_mask
    kl = (rollout.keys["logprobs"] - rollout.keys["ref_logprobs"]) * mask
    rewards = -config.kl_coef * kl
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)
    return rewards + last * rollout.keys["rewards"][:, None]


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns [n, G]; values past the response end count as zero."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def actor_extras(rollout: Rollout, config: AlgoConfig) -> dict[str, torch.Tensor]:
    advantages, returns = gae(token_rewards(rollout, config), rollout.keys["values"],
                              rollout.response_mask, config.gamma, config.gae_lambda)
    return {**policy_extras(rollout), "advantages": advantages,
            "returns": returns, "old_values": rollout.keys["values"]}


critic_extras = actor_extras


def actor_loss(outputs: ModelOutputs, mb: MicroBatch, config: AlgoConfig) -> torch.Tensor:
    e = mb.extras
    logprobs = response(outputs, e["advantages"].shape[1])
    return (policy_loss(logprobs, e, config.clip_eps) * mb.loss_mask).sum()


def critic_loss(outputs: ModelOutputs, mb: MicroBatch, config: AlgoConfig) -> torch.Tensor:
    """0.5 max((V - R)^2, (V_old + clip(V - V_old) - R)^2) over response tokens."""
    e = mb.extras
    gen_len = e["returns"].shape[1]
    values = outputs.values[:, -gen_len - 1:-1]  # V of the state before each response token
    clipped = e["old_values"] + (values - e["old_values"]).clamp(-config.value_clip_eps,
                                                                 config.value_clip_eps)
    loss = 0.5 * torch.maximum((values - e["returns"]) ** 2, (clipped - e["returns"]) ** 2)
    return (loss * mb.loss_mask).sum()
