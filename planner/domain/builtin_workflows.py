"""The built-in workflows' calls: PPO, GRPO, ReMax, DPO and RLOO.

Each entry gives the calls of one iteration and the dataset inputs; the model roles and
their default heads (critic and reward models carry a scalar value head) follow from them.
"""

from __future__ import annotations

from planner.domain.workflow import ModelFunctionCall as Call

_ROLLOUT = ("seqs", "logprobs", "masks")

PPO_CALLS = (
    Call(name="actor_gen", model="actor", kind="generate", inputs=("prompts",), outputs=_ROLLOUT),
    Call(name="rew_inf", model="reward", kind="inference", inputs=("seqs", "masks"),
         outputs=("rewards",)),
    Call(name="ref_inf", model="ref", kind="inference", inputs=("seqs", "masks"),
         outputs=("ref_logprobs",)),
    Call(name="critic_inf", model="critic", kind="inference", inputs=("seqs", "masks"),
         outputs=("values",)),
    Call(name="actor_train", model="actor", kind="train",
         inputs=_ROLLOUT + ("rewards", "ref_logprobs", "values")),
    Call(name="critic_train", model="critic", kind="train",
         inputs=_ROLLOUT + ("rewards", "ref_logprobs", "values")),
)

# GRPO: a group of samples per prompt, group-normalised rewards as advantages, no critic.
GRPO_CALLS = (
    PPO_CALLS[0], PPO_CALLS[1], PPO_CALLS[2],
    Call(name="actor_train", model="actor", kind="train",
         inputs=_ROLLOUT + ("rewards", "ref_logprobs")),
)

# RLOO: like GRPO, with a leave-one-out baseline inside each group.
RLOO_CALLS = GRPO_CALLS

# ReMax: the reward of a greedy rollout is the baseline of the sampled one.
REMAX_CALLS = (
    PPO_CALLS[0],
    Call(name="actor_greedy_gen", model="actor", kind="generate", inputs=("prompts",),
         outputs=("greedy_seqs", "greedy_masks"), greedy=True),
    PPO_CALLS[1],
    Call(name="rew_greedy_inf", model="reward", kind="inference",
         inputs=("greedy_seqs", "greedy_masks"), outputs=("greedy_rewards",)),
    PPO_CALLS[2],
    Call(name="actor_train", model="actor", kind="train",
         inputs=_ROLLOUT + ("rewards", "greedy_rewards", "ref_logprobs")),
)

# DPO: reference log-probabilities of the chosen/rejected pairs, then the actor trains.
DPO_CALLS = (
    Call(name="ref_inf", model="ref", kind="inference", inputs=("pairs",),
         outputs=("ref_logprobs",)),
    Call(name="actor_train", model="actor", kind="train", inputs=("pairs", "ref_logprobs")),
)

BUILTIN_CALLS: dict[str, tuple[Call, ...]] = {
    "ppo": PPO_CALLS, "grpo": GRPO_CALLS, "remax": REMAX_CALLS, "dpo": DPO_CALLS,
    "rloo": RLOO_CALLS,
}
BUILTIN_INPUTS: dict[str, tuple[str, ...]] = {
    "ppo": ("prompts",), "grpo": ("prompts",), "remax": ("prompts",), "dpo": ("pairs",),
    "rloo": ("prompts",),
}
VALUE_HEAD_ROLES = frozenset({"critic", "reward"})

# Defaults for `--workflow NAME` without a file: LLaMA-7B-class models, as in design.md.
DEFAULT_MODEL = "llama-7b"
DEFAULT_BATCH: dict[str, dict] = {
    "ppo": {"n_seqs": 512, "prompt_len": 1024, "gen_len": 1024, "ppo_minibatches": 4},
    "grpo": {"n_seqs": 512, "prompt_len": 1024, "gen_len": 1024, "ppo_minibatches": 4,
             "group_size": 8},
    "rloo": {"n_seqs": 512, "prompt_len": 1024, "gen_len": 1024, "ppo_minibatches": 4,
             "group_size": 4},
    "remax": {"n_seqs": 512, "prompt_len": 1024, "gen_len": 1024, "ppo_minibatches": 4},
    "dpo": {"n_seqs": 512, "prompt_len": 1024, "gen_len": 1024, "ppo_minibatches": 4},
}


def builtin_calls_without(algorithm: str, dropped: set[str] | frozenset[str]
                          ) -> tuple[Call, ...]:
    """The built-in calls of `algorithm` less the calls named in `dropped`, the dropped
    calls' outputs removed from the remaining calls' inputs (a framework that leaves out
    the reference without a KL term, or the reward model with rule-based rewards, runs
    the rest on what is left)."""
    calls = BUILTIN_CALLS[algorithm]
    gone = {key for c in calls if c.name in dropped for key in c.outputs}
    return tuple(c.model_copy(update={"inputs": tuple(k for k in c.inputs if k not in gone)})
                 for c in calls if c.name not in dropped)
