"""Work run on every spawned rank by the multi-process runtime tests, and the data they use.

One spawn of four ranks runs all layouts in turn (process start-up costs seconds), each rank
returning what it computed per layout; the tests compare the layouts in the parent.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from planner.domain.model_files import resolve_model
from planner.domain.modelspec import PRESETS, ModelSpec
from planner.domain.placement import Placement
from runtime.batch import MicroBatch, ModelOutputs
from runtime.device import CPU_FP32
from runtime.generate import GenerationConfig, generate
from runtime.inference import full_logits, inference
from runtime.model import ParallelModel
from runtime.optimizer import Adam, AdamConfig
from runtime.parallel_context import create_contexts
from runtime.train import train_step

SPEC: ModelSpec = PRESETS["llama-tiny"]
SEED = 7
WORLD_SIZE = 4
LAYOUTS = [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (1, 2, 2), (2, 1, 2),
           (1, 4, 1), (1, 1, 4)]
ZERO1_LAYOUTS = [(2, 1, 1), (2, 1, 2)]  # the other dp 2 layout, (2, 2, 1), all-reduces
VALUE_LAYOUTS = [(1, 1, 1), (2, 2, 1), (1, 2, 2)]
# (checkpoint, degrees): the Qwen2-style one under two layouts, the tied-embedding one at tp 2.
CHECKPOINT_CASES = [("biased", (1, 1, 1)), ("biased", (1, 2, 2)), ("tied", (1, 2, 1))]

NUM_SEQS, SEQ_LEN, MICRO_BATCH = 8, 16, 2
NUM_MINIBATCHES, NUM_TRAIN_STEPS = 2, 2
ADAM = AdamConfig(lr=1e-3, weight_decay=0.01, max_grad_norm=0.5)
ENTROPY_COEF = 0.01
PROMPT_SLOTS, NUM_PROMPTS = 8, 4
GREEDY = GenerationConfig(max_new_tokens=8, pad_token_id=0)
STOPPING = GenerationConfig(max_new_tokens=8, pad_token_id=0,
                            stop_token_ids=tuple(range(3, SPEC.vocab_size, 9)))
# the CUDA decode loop's periodic stop check (planner.domain.decode_policy), run on CPU,
# with stop tokens frequent enough that whole micro-batches stop between checks
STOPPING_OFTEN = GenerationConfig(max_new_tokens=8, pad_token_id=0,
                                  stop_token_ids=tuple(range(2, SPEC.vocab_size, 2)))
STOPPING_OFTEN_CHECKED_EVERY_3 = GenerationConfig(
    max_new_tokens=8, pad_token_id=0, stop_token_ids=STOPPING_OFTEN.stop_token_ids,
    stop_check_interval_steps=3)
SAMPLING = GenerationConfig(max_new_tokens=8, pad_token_id=0, greedy=False, temperature=0.8,
                            seed=11)


def layout_of(degrees: tuple[int, int, int]) -> Placement:
    dp, tp, pp = degrees
    return Placement(tuple(range(dp * tp * pp)), dp, tp, pp)


def sequences() -> tuple[torch.Tensor, torch.Tensor]:
    """NUM_SEQS x SEQ_LEN token ids; first half right-padded, second half left-padded."""
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(1, SPEC.vocab_size, (NUM_SEQS, SEQ_LEN), generator=g)
    lengths = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (NUM_SEQS,), generator=g)
    slots = torch.arange(SEQ_LEN)
    right = slots[None] < lengths[:, None]
    left = slots[None] >= SEQ_LEN - lengths[:, None]
    mask = torch.where(torch.arange(NUM_SEQS)[:, None] < NUM_SEQS // 2, right, left).long()
    return ids * mask, mask


def replica_rows(dp: int, dp_rank: int, num_rows: int, num_minibatches: int) -> list[int]:
    """Rows of a global batch a replica gets: its share of every global minibatch, in order."""
    per_minibatch = num_rows // num_minibatches
    share = per_minibatch // dp
    return [k * per_minibatch + dp_rank * share + i
            for k in range(num_minibatches) for i in range(share)]


def lm_micro_batches(dp: int, dp_rank: int) -> list[MicroBatch]:
    ids, mask = sequences()
    rows = replica_rows(dp, dp_rank, NUM_SEQS, NUM_MINIBATCHES)
    loss_mask = (mask[:, 1:] * mask[:, :-1]).float()
    values_target = torch.linspace(-1, 1, NUM_SEQS * SEQ_LEN).view(NUM_SEQS, SEQ_LEN)
    out = []
    for start in range(0, len(rows), MICRO_BATCH):
        r = rows[start:start + MICRO_BATCH]
        out.append(MicroBatch(ids[r], mask[r], loss_mask[r], {"returns": values_target[r]}))
    return out


def prompts(dp: int, dp_rank: int) -> list[MicroBatch]:
    """Two micro-batches of two prompts: the first left-padded, the second right-padded."""
    ids, mask = sequences()
    ids, mask = ids[:NUM_PROMPTS, :PROMPT_SLOTS].clone(), mask[:NUM_PROMPTS, :PROMPT_SLOTS]
    lengths = torch.tensor([3, 8, 5, 6])
    slots = torch.arange(PROMPT_SLOTS)
    mask = torch.cat([slots[None] >= PROMPT_SLOTS - lengths[:2, None],
                      slots[None] < lengths[2:, None]]).long()
    ids = ids * mask
    rows = replica_rows(dp, dp_rank, NUM_PROMPTS, 1)
    return [MicroBatch(ids[rows[i:i + 2]], mask[rows[i:i + 2]]) for i in range(0, len(rows), 2)]


def sft_loss(outputs: ModelOutputs, mb: MicroBatch) -> torch.Tensor:
    """Token NLL minus an entropy bonus, summed over loss_mask (exercises both backward paths)."""
    weighted = (-outputs.logprobs - ENTROPY_COEF * outputs.entropy) * mb.loss_mask
    return weighted.sum()


def value_loss(outputs: ModelOutputs, mb: MicroBatch) -> torch.Tensor:
    return ((outputs.values - mb.extras["returns"]) ** 2 * mb.loss_mask).sum()


def _shards(model: ParallelModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.params.items()}


def _run_lm(model: ParallelModel, ctx) -> dict:
    dp, dp_rank = ctx.dp, ctx.coord.dp_rank
    mbs = lm_micro_batches(dp, dp_rank)
    out = {"logits": full_logits(model, mbs)}
    greedy = generate(model, prompts(dp, dp_rank), GREEDY)
    stopping = generate(model, prompts(dp, dp_rank), STOPPING)
    often = generate(model, prompts(dp, dp_rank), STOPPING_OFTEN)
    often_checked_every_3 = generate(model, prompts(dp, dp_rank), STOPPING_OFTEN_CHECKED_EVERY_3)
    sampled = generate(model, prompts(dp, dp_rank), SAMPLING)
    out["generations"] = {name: [(g.tokens, g.lengths) for g in gens] for name, gens in
                          (("greedy", greedy), ("stopping", stopping),
                           ("stopping_often", often),
                           ("stopping_often_checked_every_3", often_checked_every_3),
                           ("sampled", sampled))}
    if ctx.layout.dp * ctx.layout.tp * ctx.layout.pp == 1:
        out["unpadded_greedy"] = [
            generate(model, [MicroBatch(p.input_ids[i:i + 1, p.attention_mask[i].bool()],
                                        p.attention_mask[i:i + 1, p.attention_mask[i].bool()])],
                     GREEDY)[0].tokens
            for p in prompts(1, 0) for i in range(p.input_ids.shape[0])]
    zero1 = (ctx.dp, ctx.tp, ctx.pp) in ZERO1_LAYOUTS
    optimizer = Adam(model.params, ADAM, ctx, shard_over_dp=zero1)
    out["train_stats"] = [train_step(model, optimizer, mbs, sft_loss, NUM_MINIBATCHES,
                                     with_entropy=True) for _ in range(NUM_TRAIN_STEPS)]
    out["logprobs_after"] = [o.logprobs for o in inference(model, mbs)]
    return out


def _run_value(model: ParallelModel, ctx) -> dict:
    mbs = [replace(mb, loss_mask=mb.attention_mask.float())
           for mb in lm_micro_batches(ctx.dp, ctx.coord.dp_rank)]
    out = {"values": [o.values for o in inference(model, mbs)]}
    optimizer = Adam(model.params, ADAM, ctx, shard_over_dp=True)
    out["train_stats"] = [train_step(model, optimizer, mbs, value_loss, NUM_MINIBATCHES)]
    return out


def _result(ctx, model: ParallelModel, computed: dict) -> dict:
    coord = ctx.coord
    computed["coord"] = (coord.dp_rank, coord.tp_rank, coord.pp_rank)
    # Replicas must end bit-identical; only replica 0 ships its shards.
    computed["params"] = (_shards(model) if coord.dp_rank == 0 else
                          {n: float(p.detach().double().sum()) for n, p in model.params.items()})
    return computed


def all_cases(rank: int, world_size: int, checkpoint_dirs: dict[str, str]) -> dict:
    """Every case on this rank: {(case, degrees): result} for the layouts it belongs to."""
    cases = ([("lm", d) for d in LAYOUTS] + [("value", d) for d in VALUE_LAYOUTS]
             + CHECKPOINT_CASES)
    contexts = create_contexts([layout_of(degrees) for _, degrees in cases])
    results = {}
    for (case, degrees), ctx in zip(cases, contexts):
        if ctx is None:
            continue
        if case == "lm":
            model = ParallelModel.from_seed(SPEC, "lm", ctx, SEED, CPU_FP32)
            results[(case, degrees)] = _result(ctx, model, _run_lm(model, ctx))
        elif case == "value":
            model = ParallelModel.from_seed(SPEC, "value", ctx, SEED, CPU_FP32)
            results[(case, degrees)] = _result(ctx, model, _run_value(model, ctx))
        else:
            spec = resolve_model(checkpoint_dirs[case])
            model = ParallelModel.from_hf(checkpoint_dirs[case], spec, "lm", ctx, CPU_FP32)
            logits = full_logits(model, lm_micro_batches(ctx.dp, ctx.coord.dp_rank))
            results[(case, degrees)] = {"coord": (ctx.coord.dp_rank, ctx.coord.tp_rank,
                                                  ctx.coord.pp_rank), "logits": logits}
    return results


def checkpoint_spec(kind: str) -> ModelSpec:
    """llama-tiny with Qwen2-style q/k/v biases ("biased") or tied embeddings ("tied")."""
    update = {"attention_bias": True} if kind == "biased" else {"tie_embeddings": True}
    return SPEC.model_copy(update={**update, "name": kind})

