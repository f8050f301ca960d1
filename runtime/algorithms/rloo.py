"""RLOO (Ahmadian et al. 2024): REINFORCE with a leave-one-out baseline inside each group.

r'_i = r_i - kl_coef * sum_t (logp_old - logp_ref); A_i = r'_i - mean of r'_j over the other
members of its group, on every response token, with the clipped surrogate. The baseline needs
every member of a group, so r and the KL sums come from the global view (all replicas).
"""

from __future__ import annotations

import torch

from runtime.algorithms.common import (
    AlgoConfig,
    Rollout,
    group_view,
    local_rows,
    policy_extras,
)
from runtime.algorithms.ppo import actor_loss  # same surrogate on per-token advantages

__all__ = ["actor_extras", "actor_loss", "leave_one_out"]


def leave_one_out(values: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError(f"rloo needs group_size >= 2, got {group_size}")
    groups = group_view(values, group_size)
    baseline = (groups.sum(-1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


def actor_extras(rollout: Rollout, config: AlgoConfig) -> dict[str, torch.Tensor]:
    g = rollout.global_keys
    penalised = g["rewards"] - config.kl_coef * g["sequence_kl"]
    advantages = local_rows(rollout, leave_one_out(penalised, rollout.group_size))
    return {**policy_extras(rollout),
            "advantages": advantages[:, None] * rollout.response_mask}
