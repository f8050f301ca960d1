"""Run settings of `plan run`, and the programmatic reward."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import torch

from planner.domain.errors import InputError
from runtime.algorithms.common import AlgoConfig
from runtime.executor.options import REWARD_HELP


@dataclass(frozen=True)
class ProgrammaticReward:
    """Reward = fraction of a sequence's generated tokens equal to `target_token`."""

    target_token: int

    def __call__(self, response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        hits = ((response_ids == self.target_token) & (response_mask > 0)).sum(-1)
        return hits.float() / response_mask.sum(-1).clamp(min=1).float()


def parse_reward(text: str) -> ProgrammaticReward | None:
    """None for 'model'; InputError for anything else than the two forms of REWARD_HELP."""
    if text == "model":
        return None
    match = re.fullmatch(r"programmatic:target_token=(\d+)", text)
    if not match:
        raise InputError(f"--reward: got {text!r}; valid: {REWARD_HELP}")
    return ProgrammaticReward(int(match.group(1)))


# Bounds of the run options: beyond them a value is a typo, not a run to start.
MAX_ITERATIONS = 1_000_000
MAX_SEED = 2**32 - 1          # torch's CPU generator keeps 32 bits of a seed (runtime/params.py)
MAX_LEARNING_RATE = 1.0       # Adam steps of a whole unit per parameter already diverge
MAX_TEMPERATURE = 100.0       # sampling is uniform long before this


@dataclass(frozen=True)
class RunConfig:
    """What `plan run` needs besides the plan. lr applies to every trained model."""

    iterations: int = 2
    seed: int = 0
    prompts: str | None = None
    reward: str = "model"
    lr: float = 1e-5
    temperature: float = 1.0
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    load: tuple[tuple[str, str], ...] = ()  # (role, absolute checkpoint directory)
    save: str | None = None                 # absolute directory of the saved checkpoints
    save_every: int | None = None           # also save after every N iterations
    return_weights: bool = False  # tests: return the trained models' full weights

    def __post_init__(self):
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            raise InputError(f"--iterations: got {self.iterations}; give 1 to "
                             f"{MAX_ITERATIONS:,}")
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"--seed: got {self.seed}; give a whole number from 0 to "
                             f"{MAX_SEED:,}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LEARNING_RATE):
            raise InputError(f"--lr: got {self.lr}; give a learning rate above 0 and at most "
                             f"{MAX_LEARNING_RATE:g}")
        if not (math.isfinite(self.temperature) and 0 < self.temperature <= MAX_TEMPERATURE):
            raise InputError(f"--temperature: got {self.temperature}; give a value above 0 "
                             f"and at most {MAX_TEMPERATURE:g}")
        parse_reward(self.reward)
        if self.save_every is not None:
            if self.save is None:
                raise InputError("--save-every: give --save DIR too (where to save)")
            if not 1 <= self.save_every <= MAX_ITERATIONS:
                raise InputError(f"--save-every: got {self.save_every}; give 1 to "
                                 f"{MAX_ITERATIONS:,} iterations")

    def saves_after(self, iteration: int) -> bool:
        """Whether the trained models are saved after `iteration` (0-based): the last one,
        and every save_every-th."""
        if self.save is None:
            return False
        last = iteration == self.iterations - 1
        return last or (self.save_every is not None and (iteration + 1) % self.save_every == 0)


def parse_load(text: str) -> tuple[str, str]:
    """(role, absolute directory) of one `--load ROLE=DIR`; InputError when it is not."""
    role, equals, directory = text.partition("=")
    if not (equals and role and directory):
        raise InputError(f"--load: got {text!r}; give ROLE=DIR, e.g. actor=./checkpoint")
    return role, os.path.abspath(directory)


def config_from_args(args) -> RunConfig:
    return RunConfig(iterations=args.iterations, seed=args.seed, prompts=args.prompts,
                     reward=args.reward, lr=args.lr, temperature=args.temperature,
                     load=tuple(parse_load(t) for t in args.load or ()),
                     save=args.save and os.path.abspath(args.save),
                     save_every=args.save_every)
