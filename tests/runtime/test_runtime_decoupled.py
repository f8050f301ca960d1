"""The decoupled objective of stale samples (runtime/algorithms/common.py), pure tensors.

Without proximal logprobs every actor loss is today's clipped surrogate; with prox = behav it
is the same bits (the behaviour weight is exactly 1); with prox != behav its value and
gradient are the hand-written decoupled loss of AReaL (Fu et al. 2025, eq. 5), the behaviour
weight capped at BEHAVIOUR_WEIGHT_CAP with no gradient through it.
"""

from __future__ import annotations

import pytest
import torch

from runtime.algorithms import ALGORITHMS, AlgoConfig, Rollout
from runtime.algorithms.common import BEHAVIOUR_WEIGHT_CAP, k3_kl
from runtime.batch import MicroBatch, ModelOutputs

N, GROUP, PROMPT, GEN = 8, 4, 3, 5
CONFIG = AlgoConfig()
POLICY_ALGORITHMS = ("ppo", "grpo", "rloo", "remax")


def _rollout(prox: torch.Tensor | None, generator: torch.Generator) -> Rollout:
    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    mask = torch.ones(N, GEN)
    mask[1, 3:] = 0
    mask[5, 1:] = 0
    behav = -rand(N, GEN).abs()
    ref = behav + 0.1 * rand(N, GEN)
    keys = {"logprobs": behav, "ref_logprobs": ref, "values": rand(N, GEN),
            "rewards": rand(N), "greedy_rewards": rand(N)}
    if prox is not None:
        keys["prox_logprobs"] = prox
    seq_kl = ((behav - ref) * mask).sum(-1)
    return Rollout(first=0, response_mask=mask, keys=keys, group_size=GROUP,
                   global_keys={"rewards": keys["rewards"], "sequence_kl": seq_kl})


def _loss_and_grad(algorithm: str, rollout: Rollout, current: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    algo = ALGORITHMS[algorithm]
    extras = algo.actor_extras(rollout, CONFIG)
    logprobs = torch.cat([torch.zeros(N, PROMPT - 1), current], 1).requires_grad_(True)
    mb = MicroBatch(torch.zeros(N, PROMPT + GEN, dtype=torch.long),
                    torch.ones(N, PROMPT + GEN, dtype=torch.long),
                    loss_mask=rollout.response_mask, extras=extras)
    loss = algo.actor_loss(ModelOutputs(logprobs=logprobs), mb, CONFIG)
    loss.backward()
    return loss.detach(), logprobs.grad


@pytest.mark.parametrize("algorithm", POLICY_ALGORITHMS)
def test_prox_equal_to_behaviour_is_todays_loss_bit_for_bit(algorithm):
    generator = torch.Generator().manual_seed(1)
    today = _rollout(None, generator)
    same = _rollout(today.keys["logprobs"].clone(), torch.Generator().manual_seed(1))
    current = today.keys["logprobs"] + 0.3 * torch.randn(N, GEN, generator=generator)
    loss_today, grad_today = _loss_and_grad(algorithm, today, current)
    loss_same, grad_same = _loss_and_grad(algorithm, same, current)
    assert torch.equal(loss_today, loss_same)
    assert torch.equal(grad_today, grad_same)
    assert grad_today.abs().sum() > 0


def _hand_decoupled(rollout: Rollout, current: torch.Tensor, advantages: torch.Tensor,
                    with_k3: bool) -> torch.Tensor:
    """-min(r A, clip(r) A) w + (GRPO) beta k3, summed over the mask: written out here."""
    behav, prox = rollout.keys["logprobs"], rollout.keys["prox_logprobs"]
    ratio = torch.exp(current - prox)
    clipped = torch.clamp(ratio, 1 - CONFIG.clip_eps, 1 + CONFIG.clip_eps)
    weight = torch.minimum(torch.exp(prox - behav),
                           torch.full_like(prox, BEHAVIOUR_WEIGHT_CAP)).detach()
    per_token = -torch.minimum(ratio * advantages, clipped * advantages) * weight
    if with_k3:
        per_token = per_token + CONFIG.grpo_kl_beta * k3_kl(current, rollout.keys["ref_logprobs"])
    return (per_token * rollout.response_mask).sum()


@pytest.mark.parametrize("algorithm", POLICY_ALGORITHMS)
def test_stale_samples_use_the_hand_written_decoupled_loss(algorithm):
    generator = torch.Generator().manual_seed(2)
    base = _rollout(None, generator)
    behav = base.keys["logprobs"]
    # proximal policy far enough from the behaviour one that some weights hit the cap
    prox = behav + 1.2 * torch.randn(N, GEN, generator=generator)
    stale = _rollout(prox, torch.Generator().manual_seed(2))
    assert (torch.exp(prox - behav) > BEHAVIOUR_WEIGHT_CAP).any()
    current = prox + 0.3 * torch.randn(N, GEN, generator=generator)
    loss, grad = _loss_and_grad(algorithm, stale, current)
    advantages = ALGORITHMS[algorithm].actor_extras(stale, CONFIG)["advantages"]
    leaf = current.clone().requires_grad_(True)
    expected = _hand_decoupled(stale, leaf, advantages, algorithm == "grpo")
    expected.backward()
    assert loss == pytest.approx(float(expected.detach()), rel=1e-6, abs=1e-6)
    torch.testing.assert_close(grad[:, PROMPT - 1:], leaf.grad, rtol=1e-6, atol=1e-7)
    # not the synchronous loss: the proximal logprobs and the weights change it
    today, _ = _loss_and_grad(algorithm, base, current)
    assert abs(float(today) - float(loss)) > 1e-3
