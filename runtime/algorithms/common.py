"""Shared pieces of the RL losses: the rollout a train call sees, masked sums, clipping, KL.

The policy surrogate is PPO's clipped one; with stale samples (a plan's staleness s >= 1)
it is the decoupled objective of AReaL (Fu et al. 2025, eq. 5): the ratio is taken to the
proximal policy (the training copy's logprobs recomputed at the start of the train call,
key `prox_logprobs`) and each token is weighted by the behaviour importance weight
min(pi_prox / pi_behav, BEHAVIOUR_WEIGHT_CAP), pi_behav being the generating version's
logprobs (key `logprobs`), with no gradient through the weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from planner.domain.workflow import BEHAVIOUR_WEIGHT_CAP
from runtime.batch import ModelOutputs


@dataclass(frozen=True)
class AlgoConfig:
    """Hyperparameters (defaults: common choices of the PPO / GRPO / DPO papers and TRL)."""

    clip_eps: float = 0.2          # PPO ratio clip (Schulman et al. 2017)
    value_clip_eps: float = 0.2    # clipped value loss
    kl_coef: float = 0.05          # KL penalty to the reference, in the reward (PPO, RLOO, ReMax)
    grpo_kl_beta: float = 0.04     # GRPO's k3 KL term in the loss (Shao et al. 2024)
    gamma: float = 1.0
    gae_lambda: float = 0.95
    dpo_beta: float = 0.1          # DPO temperature (Rafailov et al. 2023)


@dataclass
class Rollout:
    """A train call's view of its replica's sequences.

    Local per-sequence tensors have n rows (global sequences [first, first + n)); response
    tensors have G columns. `keys` holds the data keys read (logprobs, ref_logprobs,
    values, ...); per-sequence scalars of every replica (rewards, greedy_rewards) are also
    given whole in `global_keys` ([n_seqs]) for group baselines.
    """

    first: int
    response_mask: torch.Tensor                 # [n, G] float
    keys: dict[str, torch.Tensor]
    global_keys: dict[str, torch.Tensor] = field(default_factory=dict)
    group_size: int = 1


def response(outputs: ModelOutputs, gen_len: int) -> torch.Tensor:
    """Logprobs of the response tokens: the last gen_len columns, [b, G]."""
    return outputs.logprobs[:, -gen_len:]


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                        advantages: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """Per-token PPO surrogate max(-A r, -A clip(r, 1 - eps, 1 + eps))."""
    ratio = (logprobs - old_logprobs).exp()
    return torch.maximum(-advantages * ratio,
                         -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps))


def decoupled_policy_loss(logprobs: torch.Tensor, prox_logprobs: torch.Tensor,
                          behav_logprobs: torch.Tensor, advantages: torch.Tensor,
                          clip_eps: float) -> torch.Tensor:
    """Per-token decoupled surrogate (module docstring): the clipped surrogate of the ratio
    to the proximal policy, times w = min(exp(prox - behav), BEHAVIOUR_WEIGHT_CAP). With
    prox = behav, w is exactly 1 and the result is clipped_policy_loss's, bit for bit."""
    weight = (prox_logprobs - behav_logprobs).exp().clamp(max=BEHAVIOUR_WEIGHT_CAP)
    return clipped_policy_loss(logprobs, prox_logprobs, advantages, clip_eps) * weight.detach()


def policy_extras(rollout: Rollout) -> dict[str, torch.Tensor]:
    """The logprobs the surrogate compares with: the behaviour ones (`old_logprobs`, from
    the generate call) and, when the train call recomputed them, the proximal ones."""
    extras = {"old_logprobs": rollout.keys["logprobs"]}
    if "prox_logprobs" in rollout.keys:
        extras["prox_logprobs"] = rollout.keys["prox_logprobs"]
    return extras


def policy_loss(logprobs: torch.Tensor, extras: dict[str, torch.Tensor],
                clip_eps: float) -> torch.Tensor:
    """Per-token surrogate of a micro-batch: decoupled when `prox_logprobs` is given, else
    today's clipped surrogate to the behaviour logprobs."""
    if "prox_logprobs" in extras:
        return decoupled_policy_loss(logprobs, extras["prox_logprobs"], extras["old_logprobs"],
                                     extras["advantages"], clip_eps)
    return clipped_policy_loss(logprobs, extras["old_logprobs"], extras["advantages"],
                               clip_eps)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token unbiased, non-negative KL(pi || ref) estimate exp(d) - d - 1, d = ref - pi."""
    d = ref_logprobs - logprobs
    return d.exp() - d - 1


def sequence_kl(rollout: Rollout) -> torch.Tensor:
    """Sum over response tokens of old - ref logprobs, per sequence [n]."""
    kl = (rollout.keys["logprobs"] - rollout.keys["ref_logprobs"]) * rollout.response_mask
    return kl.sum(-1)


def local_rows(rollout: Rollout, per_sequence_global: torch.Tensor) -> torch.Tensor:
    n = rollout.response_mask.shape[0]
    return per_sequence_global[rollout.first:rollout.first + n]


def group_view(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """[n_seqs] -> [n_groups, group_size] (groups are consecutive sequences)."""
    return values.view(-1, group_size)
