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
different seeds. A row may also have a length limit of its own, `extras["response_limits"]`
(int64 [batch], each in [1, max_new_tokens]): the row stops when it has made that many
tokens, as at a stop token (the executor's programmatic lengths,
runtime/executor/lengths.py); without it every row's limit is max_new_tokens. Nothing is
drawn on the host, so the decode loop's only host synchronisation is the stop check of
`goes_on`, made every `stop_check_interval_steps` steps (planner.domain.decode_policy:
every step on CPU, every 16 on CUDA); between checks
the stages go on without asking, and steps after every row has stopped make padding.

Continuous batching (`decode_batching="continuous"`, Execution.decode_batching): the call's
rows (every micro-batch's prompts, in order) decode in groups of `slots` rows (the largest
micro-batch; min(pp, micro-batches) groups rotate through the stages as static waves do).
At each stop check the first stage gives every slot whose row has stopped (stop token or
max_new_tokens) the next prompt, or empties it when none is left, and sends that plan down
the pipeline, so every stage agrees which slot holds which row; the refilled prompts are
prefilled together (each one compacted to its real tokens) into a transient cache whose
K/V are copied into their slots' rows, while the other slots decode in the same round. A
slot's cache row keeps its prompt in columns [0, prompt length) and its k-th fed token in
column P + k - 1 (P = the call's widest prompt); a decode round writes every slot's new
K/V into one scratch column (the busiest live slot's own column, so attention reads no
further than static decoding of that row would) and copies it to each slot's own column.
The call ends when a check finds every slot empty. A row's sampling key and step count are
its own (not its slot's), so each prompt gets static generation's tokens. The ranks of an
expert-parallel group (MoE, ep > 1) run every forward together (the all-to-alls): a check's
go / prefill / decode flags are maxima over the group, and a rank with nothing to refill
when a peer refills prefills one placeholder row that it keeps nothing of.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planner.domain.layout import DecodeBatching
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
class DecodeCounts:
    """What one rank's decode loop ran, for tests to compare with the price: decode_rounds
    (decode forwards of a micro-batch or slot group through this stage), slot_steps (rows
    of those forwards summed: static's idle rows and continuous's empty slots included),
    prefill_forwards and prefill_rows (rows prefilled)."""

    decode_rounds: int = 0
    slot_steps: int = 0
    prefill_forwards: int = 0
    prefill_rows: int = 0

    def count(self, rows: int, prefill: bool) -> None:
        if prefill:
            self.prefill_forwards += 1
            self.prefill_rows += rows
        else:
            self.decode_rounds += 1
            self.slot_steps += rows


@dataclass
class Generation:
    """tokens [batch, steps]: pad_token_id after a sequence's stop token; lengths [batch]:
    generated tokens per sequence, the stop token included."""

    tokens: torch.Tensor
    lengths: torch.Tensor


def _row_limits(prompt: MicroBatch, config: GenerationConfig, device: torch.device
                ) -> torch.Tensor:
    """Each row's own limit on the tokens it makes (module docstring), int64 [batch]."""
    limits = prompt.extras.get("response_limits")
    if limits is None:
        return torch.full((prompt.input_ids.shape[0],), config.max_new_tokens,
                          dtype=torch.long, device=device)
    if limits.shape != prompt.input_ids.shape[:1] or not bool(
            ((limits >= 1) & (limits <= config.max_new_tokens)).all()):
        raise ValueError(f"response_limits {limits.tolist()}: expected one limit per row in "
                         f"[1, max_new_tokens = {config.max_new_tokens}]")
    return limits.to(device, torch.long)


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
        self.limits = _row_limits(prompt, config, dev)

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
        self.finished |= torch.isin(tokens, self.stop) | (self.lengths >= self.limits)
        self.tokens.append(tokens)


def _decode_step(state: _Decode, model: ParallelModel, link: StageLink,
                 counts: DecodeCounts) -> bool:
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
    counts.count(state.batch, prefill=state.step == 0)
    out = state.forward(x)
    if ctx.is_last_stage:
        state.record(state.choose(out))
        if ctx.pp > 1:
            link.send(state.tokens[-1], 0)
    else:
        link.send_next(out)
    return True


@torch.no_grad()
def generate(model: ParallelModel, prompts: list[MicroBatch], config: GenerationConfig,
             decode_batching: DecodeBatching = "static", counts: DecodeCounts | None = None
             ) -> list[Generation]:
    """Decode every prompt micro-batch; every rank of the replica returns the generations,
    one per micro-batch in order: tokens [batch, steps] and lengths [batch].

    static: micro-batches decode in waves of pp (the last wave may be smaller): within a
    wave they rotate through the stages, and a wave's KV caches are freed before the next
    one starts, so a device holds the caches of min(micro-batches, pp) of them, as the cost
    model prices (costmodel/call_cost.py and memory.py). steps: the micro-batch's decode
    steps (its longest row, plus up to stop_check_interval_steps - 1 of padding).
    continuous (module docstring): min(micro-batches, pp) groups of `slots` rows (the
    largest micro-batch), each with a KV cache of slots x (P + max_new_tokens) columns, P
    the widest prompt: the static caches when every micro-batch has P columns, plus during
    a refill the transient cache of the refilled prompts. steps: the micro-batch's longest
    row. `counts` (optional) adds up what this rank ran.
    """
    counts = DecodeCounts() if counts is None else counts
    if decode_batching == "continuous":
        return _generate_continuous(model, prompts, config, counts)
    link = StageLink(model.ctx, model.device.device)
    states = []
    for first in range(0, len(prompts), model.ctx.pp):
        wave = [_Decode(model, prompt, config, first + i)
                for i, prompt in enumerate(prompts[first:first + model.ctx.pp])]
        active = list(range(len(wave)))
        while active:
            active = [i for i in active if _decode_step(wave[i], model, link, counts)]
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


# Slot plan codes a stop check sends down the pipeline (besides a row index >= 0: refill).
_KEEP, _RELEASE = -2, -1


class _Rows:
    """Every prompt of a continuous call, compacted to its real tokens (left-aligned), with
    its sampling key, and the tokens made for it (last stage; first stage with pp > 1)."""

    def __init__(self, model: ParallelModel, prompts: list[MicroBatch], config: GenerationConfig):
        dev = model.device.device
        self.sizes = [p.input_ids.shape[0] for p in prompts]
        self.width = max(p.input_ids.shape[1] for p in prompts)   # P of the module docstring
        self.count = sum(self.sizes)
        ids = torch.full((self.count, self.width), config.pad_token_id, dtype=torch.long)
        lengths, keys, limits = [], [], []
        for index, prompt in enumerate(prompts):
            limits.append(_row_limits(prompt, config, torch.device("cpu")))
            mask = prompt.attention_mask.bool().cpu()
            for row in range(prompt.input_ids.shape[0]):
                real = prompt.input_ids[row].cpu()[mask[row]]
                ids[len(lengths), :real.numel()] = real
                lengths.append(int(real.numel()))
            seeds = prompt.extras.get("sample_seeds")
            if seeds is None:   # as static decoding keys them: (seed, micro-batch, row)
                seeds = (config.seed * _SEED_STRIDE + index) * _SEED_STRIDE + \
                    torch.arange(prompt.input_ids.shape[0], dtype=torch.long)
            keys.append(seeds.to(torch.long).cpu())
        self.ids = ids.to(dev)
        self.lengths = lengths                    # host ints: refill widths need them
        self.keys = torch.cat(keys).to(dev)
        # the spare row (below) never stops by its limit: its slots are not live
        self.limits = torch.cat(limits + [torch.tensor([config.max_new_tokens])]).to(dev)
        # one spare row and column take the writes of slots that make no token
        self.tokens = torch.full((self.count + 1, config.max_new_tokens + 1),
                                 config.pad_token_id, dtype=torch.long, device=dev)
        self.made = torch.zeros(self.count + 1, dtype=torch.long, device=dev)
        self.next_row = 0                         # the queue (first stage decides)


class _Slots:
    """Continuous-batching state of one slot group on one rank. Host lists `row` (the
    prompt row a slot holds, -1 empty) and `fed` (tokens fed to it since its refill, with
    its prefill counted) change only by the stop checks' plans and the rounds every stage
    runs, so all stages agree on them; finished flags and lengths (device) live where tokens
    are seen (first and last stage)."""

    def __init__(self, model: ParallelModel, rows: _Rows, config: GenerationConfig, slots: int):
        dev = model.device.device
        self.model, self.rows, self.config, self.slots = model, rows, config, slots
        self.columns = rows.width + config.max_new_tokens
        self.caches = model.new_caches(slots, self.columns)
        self.key_valid = torch.zeros(slots, self.columns, dtype=torch.bool, device=dev)
        self.prompt_lengths = torch.zeros(slots, dtype=torch.long, device=dev)
        self.row = [-1] * slots
        self.fed = [0] * slots
        self.row_index = torch.full((slots,), rows.count, dtype=torch.long, device=dev)
        self.finished = torch.ones(slots, dtype=torch.bool, device=dev)  # empty: no tokens
        self.lengths = torch.zeros(slots, dtype=torch.long, device=dev)
        self.last = torch.full((slots,), config.pad_token_id, dtype=torch.long, device=dev)
        self.stop = torch.tensor(config.stop_token_ids, dtype=torch.long, device=dev)
        self.round = 0
        self.decode_between = False   # whether the rounds until the next check decode

    def checks(self) -> bool:
        return self.round % self.config.stop_check_interval_steps == 0

    def plan(self) -> torch.Tensor:
        """First stage, at a check: [slot codes..., go, prefill, decode] (module docstring);
        go, prefill and decode are maxima over the ep group, whose ranks run every forward
        together (MoE all-to-alls)."""
        finished = self.finished.tolist()          # the check's host synchronisation
        codes = []
        for slot in range(self.slots):
            if self.row[slot] >= 0 and not finished[slot]:
                codes.append(_KEEP)
            elif self.rows.next_row < self.rows.count:
                codes.append(self.rows.next_row)
                self.rows.next_row += 1
            else:
                codes.append(_RELEASE if self.row[slot] >= 0 else _KEEP)
        after = [c if c >= 0 else (self.row[s] if c == _KEEP else -1)
                 for s, c in enumerate(codes)]
        go = any(r >= 0 for r in after)
        decode = any(after[s] >= 0 and codes[s] < 0 for s in range(self.slots))
        flags = torch.tensor([int(go), int(any(c >= 0 for c in codes)), int(decode)],
                             device=self.last.device)
        all_reduce(flags, self.model.ctx.ep_group, op=torch.distributed.ReduceOp.MAX)
        return torch.cat([torch.tensor(codes, device=self.last.device), flags])

    def apply(self, plan: list[int]) -> tuple[list[int], bool, bool, bool]:
        """Take a check's plan: the refilled slots, go, prefill, decode."""
        codes, (go, prefill, decode) = plan[:self.slots], plan[self.slots:]
        refilled = [s for s, c in enumerate(codes) if c >= 0]
        for slot, code in enumerate(codes):
            if code == _RELEASE:
                self.row[slot] = -1
                self.row_index[slot] = self.rows.count
                self.finished[slot] = True
            elif code >= 0:
                self.row[slot], self.fed[slot] = code, 0
                self.row_index[slot] = code
        if refilled:
            index = torch.tensor(refilled, device=self.last.device)
            self.finished[index] = False
            self.lengths[index] = 0
        self.decode_between = bool(go)
        return refilled, bool(go), bool(prefill), bool(decode)

    def prefill_batch(self, refilled: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token ids and mask [refills, width] of the refilled rows, width their longest.
        None refilled (a rank of an ep group whose other ranks refill: every rank runs the
        group's MoE all-to-alls): one placeholder row of one pad token, whose output and
        cache nobody reads (prefill keeps nothing of it)."""
        if not refilled:
            dev = self.last.device
            return (torch.full((1, 1), self.config.pad_token_id, dtype=torch.long, device=dev),
                    torch.ones(1, 1, dtype=torch.bool, device=dev), 1)
        rows = [self.row[s] for s in refilled]
        width = max([self.rows.lengths[r] for r in rows], default=1)
        lengths = torch.tensor([self.rows.lengths[r] for r in rows], dtype=torch.long,
                               device=self.last.device)
        mask = torch.arange(width, device=self.last.device)[None] < lengths[:, None]
        return self.rows.ids[rows, :width], mask, width

    def prefill(self, x: torch.Tensor, refilled: list[int], mask: torch.Tensor) -> torch.Tensor:
        """This stage's prefill of the refilled rows into a transient cache, copied into
        their slots' cache rows (columns [0, width))."""
        model, width = self.model, mask.shape[1]
        slots = torch.tensor(refilled, dtype=torch.long, device=self.last.device)
        caches = model.new_caches(mask.shape[0], width)
        inputs = model.attention_inputs(positions_from_mask(mask),
                                        attention_mask_4d(mask, torch.arange(width,
                                                                             device=x.device)))
        lengths = mask.sum(-1)
        out = model.stage_forward(x, inputs, caches, head_positions=(lengths - 1).clamp(min=0))
        if not refilled:
            return out                  # the placeholder row (prefill_batch)
        for cache, part in zip(self.caches, caches):
            cache.k[slots, :, :width] = part.k
            cache.v[slots, :, :width] = part.v
        self.key_valid[slots] = False
        self.key_valid[slots, :width] = mask
        self.prompt_lengths[slots] = lengths
        return out

    def decoding(self, refilled: list[int]) -> list[int]:
        """Slots whose row runs a decode step this round (a token fed, within the cache)."""
        return [s for s in range(self.slots) if self.row[s] >= 0 and s not in refilled
                and self.fed[s] < self.config.max_new_tokens]

    def scratch_column(self, decoding: list[int]) -> int:
        """The column every slot writes this round: the busiest decoding slot's own."""
        own = [self.rows.width + self.fed[s] - 1 for s in decoding]
        return min(max(own, default=self.rows.width), self.columns - 1)

    def decode(self, x: torch.Tensor, refilled: list[int]) -> torch.Tensor:
        """This stage's decode step of every slot; the decoding slots' K/V end in their own
        columns (module docstring); the others' outputs are junk nobody reads."""
        model, dev = self.model, self.last.device
        decoding = self.decoding(refilled)
        scratch = self.scratch_column(decoding)
        fed = torch.tensor(self.fed, dtype=torch.long, device=dev)
        positions = (self.prompt_lengths + fed - 1).clamp(min=0)[:, None]
        mask = attention_mask_4d(self.key_valid[:, :scratch + 1],
                                 torch.tensor([scratch], device=dev))
        out = model.stage_forward(x, model.attention_inputs(positions, mask, scratch),
                                  self.caches)
        if decoding:
            slots = torch.tensor(decoding, dtype=torch.long, device=dev)
            own = torch.tensor([self.rows.width + self.fed[s] - 1 for s in decoding],
                               dtype=torch.long, device=dev)
            for cache in self.caches:
                cache.k[slots, :, own] = cache.k[slots, :, scratch]
                cache.v[slots, :, own] = cache.v[slots, :, scratch]
            self.key_valid[slots, own] = True
        return out

    def advance(self, refilled: list[int], prefill: bool, decode: bool) -> None:
        """Every stage, after the round: the fed counts and the round number."""
        for slot in range(self.slots):
            if slot in refilled:
                self.fed[slot] = 1 if prefill else 0
            elif decode and self.row[slot] >= 0:
                self.fed[slot] += 1
        self.round += 1

    def choose(self, logits: torch.Tensor, steps: torch.Tensor, keys: torch.Tensor
               ) -> torch.Tensor:
        model = self.model
        gumbel = None
        if not self.config.greedy:
            gumbel = gumbel_noise(keys, steps.to(torch.int32), model.vocab_start,
                                  logits.shape[-1])
        return choose_tokens(logits[:, -1], model.vocab_start, model.ctx.tp_group, gumbel,
                             self.config.temperature)

    def record(self, tokens: torch.Tensor) -> None:
        """Keep each live slot's token as its row's next one (no host synchronisation)."""
        live = ~self.finished
        tokens = torch.where(live, tokens, self.config.pad_token_id)
        spare = torch.full_like(self.lengths, self.config.max_new_tokens)
        rows = torch.where(live, self.row_index, self.rows.count)
        self.rows.tokens[rows, torch.where(live, self.lengths, spare)] = tokens
        self.lengths += live.long()
        self.rows.made[rows] = torch.where(live, self.lengths, 0)
        self.finished |= live & (torch.isin(tokens, self.stop)
                                 | (self.lengths >= self.rows.limits[rows]))
        self.last = tokens


def _continuous_step(group: _Slots, model: ParallelModel, link: StageLink,
                     counts: DecodeCounts) -> bool:
    """One round of one slot group on this rank; False when the group is done."""
    ctx, dev = model.ctx, model.device.device
    hidden = model.spec.hidden_size
    if ctx.is_first_stage and ctx.pp > 1 and group.round > 0:
        group.record(link.recv((group.slots,), torch.long, ctx.pp - 1))
    refilled, prefill, decode = [], False, group.decode_between
    if group.checks():
        plan = group.plan() if ctx.is_first_stage else \
            link.recv_prev((group.slots + 3,), torch.long)
        if not ctx.is_last_stage:
            link.send_next(plan)
        refilled, go, prefill, decode = group.apply(plan.tolist())
        if not go:
            return False
    tokens = torch.full((group.slots,), model.spec.vocab_size, dtype=torch.long, device=dev)
    if prefill:
        ids, mask, width = group.prefill_batch(refilled)
        x = ids if ctx.is_first_stage else \
            link.recv_prev((ids.shape[0], width, hidden), model.device.dtype)
        counts.count(len(refilled), prefill=True)
        out = group.prefill(x, refilled, mask)
        if ctx.is_last_stage:
            if refilled:
                rows = torch.tensor([group.row[s] for s in refilled], dtype=torch.long,
                                    device=dev)
                first = group.choose(out, torch.ones_like(rows), group.rows.keys[rows])
                tokens[torch.tensor(refilled, dtype=torch.long, device=dev)] = first
        else:
            link.send_next(out)
    if decode:
        x = group.last[:, None] if ctx.is_first_stage else \
            link.recv_prev((group.slots, 1, hidden), model.device.dtype)
        counts.count(group.slots, prefill=False)
        out = group.decode(x, refilled)
        if ctx.is_last_stage:
            steps = torch.tensor(group.fed, dtype=torch.long, device=dev) + 1
            chosen = group.choose(out, steps, group.rows.keys[group.row_index.clamp(
                max=group.rows.count - 1)])
            tokens = torch.where(tokens == model.spec.vocab_size, chosen, tokens)
        else:
            link.send_next(out)
    if ctx.is_last_stage:
        group.record(tokens)
        if ctx.pp > 1:
            link.send(tokens, 0)
    group.advance(refilled, prefill, decode)
    return True


def _generate_continuous(model: ParallelModel, prompts: list[MicroBatch],
                         config: GenerationConfig, counts: DecodeCounts) -> list[Generation]:
    """generate's continuous mode (module docstring)."""
    ctx = model.ctx
    link = StageLink(ctx, model.device.device)
    rows = _Rows(model, prompts, config)
    groups = [_Slots(model, rows, config, max(rows.sizes))
              for _ in range(min(ctx.pp, len(prompts)))]
    active = list(range(len(groups)))
    while active:
        active = [g for g in active if _continuous_step(groups[g], model, link, counts)]
    for group in groups:
        group.caches = None
    link.wait_sends()
    made = broadcast(rows.made[:rows.count].clone(), ctx.pp_group, ctx.pp - 1)
    steps = int(made.max())                       # one host synchronisation at the end
    tokens = broadcast(rows.tokens[:rows.count, :steps].contiguous(), ctx.pp_group, ctx.pp - 1)
    results, start = [], 0
    for size in rows.sizes:
        lengths = made[start:start + size]
        width = int(lengths.max())
        results.append(Generation(tokens=tokens[start:start + size, :width], lengths=lengths))
        start += size
    return results
