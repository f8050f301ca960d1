"""Pipelined KV-cache decoding with greedy or seeded sampling and stop tokens.

Protocol per decode step of each active micro-batch, micro-batches in round-robin order:
the first stage receives the micro-batch's previous tokens from the last stage (pp > 1),
decides whether it goes on (some sequence unfinished and fewer than max_new_tokens made) and
passes that flag down the pipeline; then each stage runs its layers on the new tokens and
the last stage chooses the next tokens and sends them back to the first stage. With several
micro-batches in flight every stage has work while the others do (non-blocking sends).

Prompts may be left- or right-padded: the cache keeps a key-valid mask, the first token is
read at each prompt's last real position, and rotary positions continue from each prompt's
own length. Sampling is Gumbel-max over the vocabulary shards with counter-based noise
(runtime.vocab_parallel.gumbel_noise): the noise of (row key, step, token id) is a hash of
the three, computed on the device for the rank's vocabulary slice only, so samples do not
depend on tp or pp. A row's key is its `extras["sample_seeds"]` entry (int64 [batch], what
the executor gives), so its sample does not depend on dp or the micro-batch split either;
without it, rows are keyed by (seed, micro-batch index, row), and replicas should get
different seeds. Nothing is drawn on the host, so the decode loop's only host
synchronisation is the stop check of `goes_on`, made every `stop_check_interval_steps`
steps (planner.domain.decode_policy: every step on CPU, every 16 on CUDA); between checks
the stages go on without asking, and steps after every row has stopped make padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.batch import MicroBatch
from runtime.comm import all_reduce, broadcast
from runtime.model import ParallelModel, attention_mask_4d, positions_from_mask
from runtime.pipeline import StageLink
from runtime.vocab_parallel import choose_tokens, gumbel_noise

_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. greedy=False samples at `temperature` from the seeded generator."""

    max_new_tokens: int
    pad_token_id: int
    stop_token_ids: tuple[int, ...] = ()
    greedy: bool = True
    temperature: float = 1.0
    seed: int = 0
    stop_check_interval_steps: int = 1

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} must be >= 1")
        if self.stop_check_interval_steps < 1:
            raise ValueError(f"stop_check_interval_steps {self.stop_check_interval_steps} "
                             f"must be >= 1")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature {self.temperature} must be > 0 when sampling")


@dataclass
class Generation:
    """tokens [batch, steps]: pad_token_id after a sequence's stop token; lengths [batch]:
    generated tokens per sequence, the stop token included."""

    tokens: torch.Tensor
    lengths: torch.Tensor


class _Decode:
    """Decoding state of one micro-batch on one rank."""

    def __init__(self, model: ParallelModel, prompt: MicroBatch, config: GenerationConfig,
                 index: int):
        dev = model.device.device
        self.model, self.config = model, config
        self.ids = prompt.input_ids.to(dev)
        self.mask = prompt.attention_mask.to(dev).bool()
        self.batch, self.prompt_slots = self.ids.shape
        slots = self.prompt_slots + config.max_new_tokens
        self.caches = model.new_caches(self.batch, slots)
        self.key_valid = torch.zeros(self.batch, slots, dtype=torch.bool, device=dev)
        self.key_valid[:, :self.prompt_slots] = self.mask
        self.prompt_lengths = self.mask.sum(-1)
        # Index of each prompt's last real token (works for left and right padding).
        self.last_index = self.prompt_slots - 1 - self.mask.flip(-1).int().argmax(-1)
        self.stop = torch.tensor(config.stop_token_ids, dtype=torch.long, device=dev)
        self.finished = torch.zeros(self.batch, dtype=torch.bool, device=dev)
        self.lengths = torch.zeros(self.batch, dtype=torch.long, device=dev)
        self.tokens: list[torch.Tensor] = []
        self.step = 0
        seeds = prompt.extras.get("sample_seeds")
        if seeds is None:   # rows keyed by (seed, micro-batch index, row)
            seeds = (config.seed * _SEED_STRIDE + index) * _SEED_STRIDE + \
                torch.arange(self.batch, dtype=torch.long)
        self.row_keys = None if config.greedy else seeds.to(dev, torch.long)

    def checks_stop(self) -> bool:
        """Whether the step about to run starts with a stop check (module docstring); the
        first step always runs and the step after max_new_tokens never does, without one."""
        return (0 < self.step < self.config.max_new_tokens
                and self.step % self.config.stop_check_interval_steps == 0)

    def goes_on(self) -> bool:
        """First stage: whether the micro-batch runs another step (a host sync on a check).

        The dp ranks of an expert-parallel group (MoE models, ep > 1) run every MoE block
        together (all-to-alls over the group), so they decode until all of their rows have
        stopped: the check takes the maximum over the group. The group lies inside one
        pipeline stage, so the first stages decide together."""
        if self.checks_stop():
            unfinished = torch.tensor([int(not bool(self.finished.all()))],
                                      device=self.ids.device)
            all_reduce(unfinished, self.model.ctx.ep_group, op=torch.distributed.ReduceOp.MAX)
            return bool(unfinished.item())
        return self.step < self.config.max_new_tokens

    def first_stage_input(self) -> torch.Tensor:
        return self.ids if self.step == 0 else self.tokens[-1][:, None]

    def input_shape(self) -> tuple[int, int, int]:
        seq = self.prompt_slots if self.step == 0 else 1
        return (self.batch, seq, self.model.spec.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.step == 0:
            slots = torch.arange(self.prompt_slots, device=x.device)
            mask = attention_mask_4d(self.key_valid[:, :self.prompt_slots], slots)
            inputs = model.attention_inputs(positions_from_mask(self.mask), mask, 0)
        else:
            slot = self.prompt_slots + self.step - 1
            self.key_valid[:, slot] = True
            mask = attention_mask_4d(self.key_valid[:, :slot + 1],
                                     torch.tensor([slot], device=x.device))
            positions = (self.prompt_lengths + self.step - 1)[:, None]
            inputs = model.attention_inputs(positions, mask, slot)
        head_positions = self.last_index if self.step == 0 else None
        out = model.stage_forward(x, inputs, self.caches, head_positions=head_positions)
        self.step += 1
        return out

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Next tokens from the last stage's local logits of the step just run (one
        position per row: the prompt's last real token in the prefill, the new token after)."""
        model = self.model
        logits = logits[:, -1]
        gumbel = None
        if self.row_keys is not None:
            gumbel = gumbel_noise(self.row_keys, self.step, model.vocab_start, logits.shape[-1])
        return choose_tokens(logits, model.vocab_start, model.ctx.tp_group, gumbel,
                             self.config.temperature)

    def record(self, tokens: torch.Tensor) -> None:
        tokens = torch.where(self.finished, self.config.pad_token_id, tokens)
        self.lengths += (~self.finished).long()
        self.finished |= torch.isin(tokens, self.stop)
        self.tokens.append(tokens)


def _decode_step(state: _Decode, model: ParallelModel, link: StageLink) -> bool:
    """One step of one micro-batch on this rank; False when the micro-batch is done."""
    ctx = model.ctx
    dev = model.device.device
    if ctx.is_first_stage and ctx.pp > 1 and state.step > 0:
        state.record(link.recv((state.batch,), torch.long, ctx.pp - 1))
    if ctx.is_first_stage:
        go = state.goes_on()
    elif state.checks_stop():   # only the first stage sees the finished rows
        go = bool(link.recv_prev((1,), torch.long).item())
    else:
        go = state.step < state.config.max_new_tokens
    if not ctx.is_last_stage and state.checks_stop():
        link.send_next(torch.tensor([int(go)], device=dev))
    if not go:
        return False
    x = (state.first_stage_input() if ctx.is_first_stage
         else link.recv_prev(state.input_shape(), model.device.dtype))
    out = state.forward(x)
    if ctx.is_last_stage:
        state.record(state.choose(out))
        if ctx.pp > 1:
            link.send(state.tokens[-1], 0)
    else:
        link.send_next(out)
    return True


@torch.no_grad()
def generate(model: ParallelModel, prompts: list[MicroBatch], config: GenerationConfig
             ) -> list[Generation]:
    """Decode every prompt micro-batch; every rank of the replica returns the generations.

    Micro-batches decode in waves of pp (the last wave may be smaller): within a wave they
    rotate through the stages, and a wave's KV caches are freed before the next one starts,
    so a device holds the caches of min(micro-batches, pp) of them, as the cost model
    prices (costmodel/call_cost.py and memory.py).
    """
    link = StageLink(model.ctx, model.device.device)
    states = []
    for first in range(0, len(prompts), model.ctx.pp):
        wave = [_Decode(model, prompt, config, first + i)
                for i, prompt in enumerate(prompts[first:first + model.ctx.pp])]
        active = list(range(len(wave)))
        while active:
            active = [i for i in active if _decode_step(wave[i], model, link)]
        for state in wave:
            state.caches = None      # the tokens stay; the wave's KV cache goes
        states.extend(wave)
    link.wait_sends()
    results = []
    for state in states:
        dev = model.device.device
        tokens = (torch.stack(state.tokens, dim=1) if model.ctx.is_last_stage else
                  torch.empty(state.batch, state.step, dtype=torch.long, device=dev))
        lengths = state.lengths if model.ctx.is_last_stage else torch.empty_like(state.lengths)
        results.append(Generation(tokens=broadcast(tokens, model.ctx.pp_group, model.ctx.pp - 1),
                                  lengths=broadcast(lengths, model.ctx.pp_group, model.ctx.pp - 1)))
    return results
