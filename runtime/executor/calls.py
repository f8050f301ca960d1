"""One model function call on this rank: generate, inference or train, by data keys.

A call reads its replica's rows of each input key (dataset keys from the dataset, others from
the store, where transfers put them) and writes its replica's rows of each output key.
- generate: prompts -> sequences (prompt + response, each response as long as the batch's
  length distribution draws it: runtime/executor/lengths.py), masks, and the behaviour logprobs
  (recomputed by a forward pass of the generated sequences, the same computation training
  does); greedy calls decode greedily. Sampled sequences draw their noise from one
  generator per sequence seeded by (run seed, iteration, call, sequence index), so rollouts
  do not depend on the layout.
- inference: rewards (reward model value at the last token, or the programmatic reward),
  ref_logprobs / logprobs (response tokens), values (critic value before each response
  token).
- train: with staleness >= 1 a rollout model's train call first recomputes the logprobs of
  its batch with the training copy (no grad; the micro-batches and code path of an inference
  call in the train call's execution), the proximal logprobs `prox_logprobs` of the
  decoupled objective (runtime.algorithms.common). Then the algorithm's loss on minibatches
  that do not depend on the layout: global sequence i (pair i // 2 for dpo) belongs to
  minibatch (i // unit) mod ppo_minibatches, so every replica holds an equal share of every
  minibatch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.distributed as dist

from planner.domain.decode_policy import stop_check_interval_steps
from planner.domain.layout import Execution
from planner.domain.workflow import BatchSpec, ModelFunctionCall
from planner.sharding.transfer_schedule import sequence_range
from runtime.algorithms import AlgoConfig, Rollout
from runtime.batch import MicroBatch
from runtime.comm import all_reduce
from runtime.executor.config import ProgrammaticReward
from runtime.executor.data import DataStore, key_format
from runtime.executor.dataset import PAD_TOKEN_ID, Dataset
from runtime.executor.lengths import drawn_lengths
from runtime.generate import GenerationConfig, generate
from runtime.inference import inference
from runtime.model import ParallelModel
from runtime.optimizer import Adam
from runtime.parallel_context import ParallelContext
from runtime.train import train_step

REWARD_KEYS = ("rewards", "greedy_rewards")


@dataclass
class CallEnv:
    """Everything one call needs on this rank."""

    call: ModelFunctionCall
    execution: Execution
    ctx: ParallelContext
    model: ParallelModel | None  # None for the programmatic reward
    batch: BatchSpec
    iteration: int
    store: DataStore
    dataset: Dataset
    seed: int
    temperature: float
    reward: ProgrammaticReward | None
    algorithm: ModuleType
    algo_config: AlgoConfig
    optimizer: Adam | None
    group_size: int
    proximal: bool = False  # a rollout model's train call with staleness >= 1

    @property
    def rows(self) -> tuple[int, int]:
        return sequence_range(self.batch.n_seqs, self.ctx.dp, self.ctx.coord.dp_rank)

    def read(self, key: str) -> torch.Tensor:
        return self.store.rows(self.iteration, key, *self.rows)

    def write(self, key: str, value: torch.Tensor) -> None:
        dtype, _ = key_format(key, self.batch)
        self.store.put(self.iteration, key, self.rows[0], value.detach().cpu().to(dtype))


def sample_seed(seed: int, iteration: int, call: str, sequence: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{iteration}/{call}/{sequence}".encode(), digest_size=7)
    return int.from_bytes(digest.digest(), "little")


def split_rows(count: int, parts: int, unit: int = 1) -> list[torch.Tensor]:
    """Row indices 0..count-1 in `parts` contiguous chunks of whole units."""
    units = torch.arange(count // unit)
    return [(c[:, None] * unit + torch.arange(unit)).reshape(-1)
            for c in torch.tensor_split(units, parts)]


def sequences(env: CallEnv) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [n, seq_len] int64 of the sequences the call reads."""
    inputs = env.call.inputs
    if "pairs" in inputs:
        rows = env.dataset.pairs_rows(env.iteration)
        first, stop = env.rows
        return rows.ids[first:stop], rows.mask[first:stop]
    prefix = "greedy_" if "greedy_seqs" in inputs else ""
    return env.read(f"{prefix}seqs").long(), env.read(f"{prefix}masks").long()


def _micro_batches(ids: torch.Tensor, mask: torch.Tensor, parts: int) -> list[MicroBatch]:
    return [MicroBatch(ids[i], mask[i]) for i in split_rows(ids.shape[0], parts)]


def _replica_mean(env: CallEnv, total: torch.Tensor, count: float) -> float:
    """Mean over all replicas of a per-replica sum (every rank of a replica holds the same)."""
    both = torch.tensor([float(total), count], dtype=torch.float64,
                        device=env.model.device.device if env.model else "cpu")
    if env.model is not None:
        all_reduce(both, env.ctx.dp_group)
    elif env.ctx.dp_group.handle is not None:
        dist.all_reduce(both, group=env.ctx.dp_group.handle)
    return float(both[0] / both[1])


def longest_prompt_columns(ids: torch.Tensor, mask: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """A micro-batch of left-padded prompts without the columns that are padding in every
    row: the prefill runs at the micro-batch's longest prompt, as the cost model prices it
    (costmodel/generate_cost.py)."""
    width = max(int(mask.sum(-1).max()), 1)
    return ids[:, -width:], mask[:, -width:]


def run_generate(env: CallEnv) -> dict[str, float]:
    b, first = env.batch, env.rows[0]
    prompts = env.dataset.prompts(env.iteration)
    ids, mask = prompts.ids[first:env.rows[1]], prompts.mask[first:env.rows[1]]
    seeds = torch.tensor([sample_seed(env.seed, env.iteration, env.call.name, first + r)
                          for r in range(ids.shape[0])], dtype=torch.long)
    limits = drawn_lengths(b.gen_lengths, env.seed, env.iteration, "response",
                           range(*env.rows))
    mbs = [MicroBatch(*longest_prompt_columns(ids[i], mask[i]),
                      extras={"sample_seeds": seeds[i], "response_limits": limits[i]})
           for i in split_rows(ids.shape[0], env.execution.micro_batches)]
    config = GenerationConfig(max_new_tokens=b.gen_len, pad_token_id=PAD_TOKEN_ID,
                              greedy=env.call.greedy, temperature=env.temperature, seed=env.seed,
                              stop_check_interval_steps=stop_check_interval_steps(
                                  env.model.device.device.type))
    gens = generate(env.model, mbs, config, decode_batching=env.execution.decode_batching)
    # each micro-batch's tokens are as wide as its longest response: pad every one to gen_len
    tokens = torch.cat([torch.nn.functional.pad(g.tokens.cpu(), (0, b.gen_len - g.tokens.shape[1]),
                                                value=PAD_TOKEN_ID) for g in gens])
    lengths = torch.cat([g.lengths.cpu() for g in gens])
    response_mask = (torch.arange(b.gen_len)[None] < lengths[:, None]).long()
    seqs, masks = torch.cat([ids, tokens], 1), torch.cat([mask, response_mask], 1)
    for key in env.call.outputs:
        if key.endswith("seqs"):
            env.write(key, seqs)
        elif key.endswith("masks"):
            env.write(key, masks)
        elif key == "logprobs":
            outs = inference(env.model, _micro_batches(seqs, masks, env.execution.micro_batches))
            env.write(key, torch.cat([o.logprobs[:, -b.gen_len:].cpu() for o in outs]))
    return {"response_length_mean": _replica_mean(env, lengths.sum(), lengths.numel())}


def run_inference(env: CallEnv) -> dict[str, float]:
    b = env.batch
    ids, mask = sequences(env)
    (key,) = env.call.outputs
    if key in REWARD_KEYS and env.reward is not None:
        rewards = env.reward(ids[:, b.prompt_len:], mask[:, b.prompt_len:])
        env.write(key, rewards)
        return {f"{key}_mean": _replica_mean(env, rewards.sum(), rewards.shape[0])}
    outs = inference(env.model, _micro_batches(ids, mask, env.execution.micro_batches))
    if key in REWARD_KEYS:
        values = torch.cat([o.values.cpu() for o in outs])
        last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
        rewards = values[torch.arange(values.shape[0]), last]
        env.write(key, rewards)
        return {f"{key}_mean": _replica_mean(env, rewards.sum(), rewards.shape[0])}
    if key == "values":
        env.write(key, torch.cat([o.values[:, -b.gen_len - 1:-1].cpu() for o in outs]))
    else:
        env.write(key, torch.cat([o.logprobs[:, -b.gen_len:].cpu() for o in outs]))
    return {}


def _gather_over_dp(env: CallEnv, local: torch.Tensor) -> torch.Tensor:
    """Per-sequence values of every replica in global order ([n_seqs])."""
    group = env.ctx.dp_group
    if group.handle is None:
        return local
    dev = env.model.device.device
    parts = [torch.empty_like(local, device=dev) for _ in range(group.size)]
    dist.all_gather(parts, local.to(dev).contiguous(), group=group.handle)
    return torch.cat([p.cpu() for p in parts])


def build_rollout(env: CallEnv, ids: torch.Tensor, mask: torch.Tensor) -> Rollout:
    b = env.batch
    keys = {k: env.read(k).float() for k in env.call.inputs
            if k not in ("seqs", "masks", "greedy_seqs", "greedy_masks", "pairs", "prompts")}
    rollout = Rollout(first=env.rows[0], response_mask=mask[:, b.prompt_len:].float(),
                      keys=keys, group_size=env.group_size)
    if "rewards" in keys:
        rollout.global_keys["rewards"] = _gather_over_dp(env, keys["rewards"])
    if "logprobs" in keys and "ref_logprobs" in keys:
        kl = ((keys["logprobs"] - keys["ref_logprobs"]) * rollout.response_mask).sum(-1)
        rollout.global_keys["sequence_kl"] = _gather_over_dp(env, kl)
    return rollout


def run_train(env: CallEnv) -> dict[str, float]:
    b = env.batch
    ids, mask = sequences(env)
    rollout = build_rollout(env, ids, mask)
    if env.proximal:
        outs = inference(env.model, _micro_batches(ids, mask, env.execution.micro_batches))
        rollout.keys["prox_logprobs"] = torch.cat([o.logprobs[:, -b.gen_len:].cpu()
                                                   for o in outs]).float()
    critic = env.model.head == "value"
    algo = env.algorithm
    extras = (algo.critic_extras if critic else algo.actor_extras)(rollout, env.algo_config)
    loss = algo.critic_loss if critic else algo.actor_loss
    unit = getattr(algo, "UNIT", 1)
    count, first = ids.shape[0], env.rows[0]
    minibatch_of = ((torch.arange(count) + first) // unit) % b.ppo_minibatches
    mbs = []
    for k in range(b.ppo_minibatches):
        rows = torch.nonzero(minibatch_of == k).squeeze(-1)
        for part in split_rows(rows.numel(), env.execution.micro_batches, unit):
            idx = rows[part]
            loss_mask = (torch.ones(idx.numel() // unit) if unit > 1
                         else rollout.response_mask[idx])
            mbs.append(MicroBatch(ids[idx], mask[idx], loss_mask=loss_mask,
                                  extras={n: v[idx] for n, v in extras.items()}))

    def loss_fn(outputs, mb):
        return loss(outputs, mb, env.algo_config)

    stats = train_step(env.model, env.optimizer, mbs, loss_fn, b.ppo_minibatches,
                       recompute=env.execution.recompute)
    name = "critic_loss" if critic else "actor_loss"
    metrics = {name: sum(s.loss for s in stats) / len(stats)}
    if not critic and "sequence_kl" in rollout.global_keys:
        tokens = _gather_over_dp(env, rollout.response_mask.sum(-1))
        metrics["kl"] = float(rollout.global_keys["sequence_kl"].sum() / tokens.sum())
    return metrics


HANDLERS = {"generate": run_generate, "inference": run_inference, "train": run_train}
