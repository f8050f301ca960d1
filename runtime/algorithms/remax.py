"""ReMax (Li et al. 2023): REINFORCE with the reward of a greedy rollout as the baseline.

A_i = r_i - kl_coef * sum_t (logp_old - logp_ref) - r_greedy_i on every response token, with
the clipped surrogate (ratio 1 on the first step, so it is plain REINFORCE there).
"""

from __future__ import annotations

import torch

from runtime.algorithms.common import AlgoConfig, Rollout, policy_extras, sequence_kl
from runtime.algorithms.ppo import actor_loss

__all__ = ["actor_extras", "actor_loss"]


def actor_extras(rollout: Rollout, config: AlgoConfig) -> dict[str, torch.Tensor]:
    advantages = (rollout.keys["rewards"] - config.kl_coef * sequence_kl(rollout)
                  - rollout.keys["greedy_rewards"])
    return {**policy_extras(rollout),
            "advantages": advantages[:, None] * rollout.response_mask}
