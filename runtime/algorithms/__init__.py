"""RL algorithms of the built-in workflows: advantages and losses, one small module each.

Every module exposes `actor_extras(rollout, config)` (per-sequence tensors the actor loss
needs, computed once per train call from the rollout) and `actor_loss(outputs, mb, config)`
(the SUM of the loss over `mb.loss_mask`, as runtime.train expects). PPO adds the critic's
`critic_extras` / `critic_loss`. Shapes: n local sequences, G = gen_len response tokens;
`outputs.logprobs` [b, S - 1] covers the whole sequence, the response is its last G columns.
"""

from __future__ import annotations

from types import ModuleType

from runtime.algorithms import dpo, grpo, ppo, remax, rloo
from runtime.algorithms.common import AlgoConfig, Rollout

ALGORITHMS: dict[str, ModuleType] = {"ppo": ppo, "grpo": grpo, "remax": remax, "rloo": rloo,
                                     "dpo": dpo}

__all__ = ["ALGORITHMS", "AlgoConfig", "Rollout"]
