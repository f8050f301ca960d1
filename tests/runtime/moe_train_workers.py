"""Work run on every spawned rank by test_runtime_moe_train.py: train a tiny mixture-of-
experts model (moe-tiny, Qwen3-MoE style, fp32) under expert-parallel layouts, and save MoE
models of the three families as HF checkpoints from layouts with ep > 1.

Training cases train two steps of two Adam minibatches from the same seed and data as the
dense bucket tests (grad_bucket_workers.micro_batches: one sequence per micro-batch, so dp 4
still has two micro-batches per replica; runtime_workers: sft_loss, ADAM) and return this rank's
shards with the full-tensor slice each one is (so the parent can assemble and compare
them), the per-minibatch stats and which groups the optimizer's buffers reduce over.
Saving cases train one step, return the engine's full logits of unpadded sequences, and
write the model to checkpoint_root/<family> (runtime.checkpoint_save).
"""

from __future__ import annotations

from pathlib import Path

import grad_bucket_workers as G
import runtime_workers as W
import torch

from planner.domain.modelspec import PRESETS, ModelSpec, MoeSpec
from planner.domain.placement import Placement
from planner.sharding.param_shards import model_params, shard_slice
from runtime.batch import MicroBatch
from runtime.checkpoint_save import save_hf_checkpoint
from runtime.device import CPU_FP32
from runtime.inference import full_logits
from runtime.model import ParallelModel
from runtime.optimizer import Adam
from runtime.parallel_context import create_contexts
from runtime.train import train_step

SPEC: ModelSpec = PRESETS["moe-tiny"]
# Mixtral style: no q/k norms, one MLP width (that of every expert), top-k renormalised.
MIXTRAL = SPEC.model_copy(update={
    "name": "moe-tiny-mixtral", "qk_norm": False, "intermediate_size": 64,
    "moe": MoeSpec(family="mixtral", num_experts=8, experts_per_token=2,
                   expert_intermediate_size=64, normalize_top_k=True)})
FAMILY_SPECS = {"qwen3_moe": SPEC, "qwen2_moe": PRESETS["moe-tiny-shared"], "mixtral": MIXTRAL}

# (dp, tp, pp, ep), ZeRO-1: the reference, ep 2 with and without ZeRO-1, ep = dp (no
# expert-dp reduction), ep 1 (experts reduced over all of dp), ep with tp and with pp.
TRAIN_CASES = [((1, 1, 1, 1), False), ((4, 1, 1, 2), False), ((4, 1, 1, 2), True),
               ((4, 1, 1, 4), True), ((4, 1, 1, 1), True), ((2, 2, 1, 2), False),
               ((2, 1, 2, 2), True)]
SAVE_CASES = [("qwen3_moe", (2, 2, 1, 2)), ("mixtral", (2, 1, 2, 2)),
              ("qwen2_moe", (4, 1, 1, 4))]
NUM_LOGIT_SEQS, LOGIT_SEQ_LEN = 2, 12


def layout_of(degrees: tuple[int, int, int, int]) -> Placement:
    dp, tp, pp, ep = degrees
    return Placement(tuple(range(dp * tp * pp)), dp, tp, pp, ep)


def logit_ids() -> torch.Tensor:
    """Unpadded token ids every replica runs (all ranks of an ep group run the same
    number of forwards, each MoE block being a collective over the group)."""
    generator = torch.Generator().manual_seed(9)
    return torch.randint(1, SPEC.vocab_size, (NUM_LOGIT_SEQS, LOGIT_SEQ_LEN), generator=generator)


def _shards(model: ParallelModel) -> dict[str, tuple]:
    """{name: (full-tensor ranges, tensor)} of this rank's shards."""
    ctx = model.ctx
    infos = {p.name: p for p in model_params(model.spec, model.head, ctx.pp)}
    return {n: (shard_slice(model.spec, infos[n], ctx.coord.tp_rank, ctx.tp, ctx.ep_rank,
                            ctx.ep), t.detach().clone())
            for n, t in model.params.items()}


def _train(model: ParallelModel, zero1: bool, steps: int) -> tuple[Adam, list]:
    ctx = model.ctx
    optimizer = Adam(model.params, W.ADAM, ctx, shard_over_dp=zero1)
    stats = [train_step(model, optimizer, G.micro_batches(ctx.dp, ctx.coord.dp_rank),
                        W.sft_loss, W.NUM_MINIBATCHES, with_entropy=True)
             for _ in range(steps)]
    return optimizer, stats


def all_cases(rank: int, world_size: int, checkpoint_root: str) -> dict:
    layouts = [layout_of(d) for d, _ in TRAIN_CASES] + [layout_of(d) for _, d in SAVE_CASES]
    contexts = create_contexts(layouts)
    results = {}
    for (degrees, zero1), ctx in zip(TRAIN_CASES, contexts):
        if ctx is None:
            continue
        model = ParallelModel.from_seed(SPEC, "lm", ctx, W.SEED, CPU_FP32)
        optimizer, stats = _train(model, zero1, W.NUM_TRAIN_STEPS)
        experts = optimizer.experts
        results[("train", degrees, zero1)] = {
            "coord": (ctx.coord.dp_rank, ctx.coord.tp_rank, ctx.coord.pp_rank),
            "shards": _shards(model), "stats": stats,
            "dense_group": optimizer.dense.group.ranks, "dp_group": ctx.dp_group.ranks,
            "expert_group": experts.group.ranks, "expert_dp_group": ctx.expert_dp_group.ranks,
            "expert_sharded": experts.shard, "expert_params": sorted(experts_names(model)),
            "dense_numel": optimizer.dense.numel, "expert_numel": experts.numel}
    for (family, degrees), ctx in zip(SAVE_CASES, contexts[len(TRAIN_CASES):]):
        if ctx is None:
            continue
        model = ParallelModel.from_seed(FAMILY_SPECS[family], "lm", ctx, W.SEED, CPU_FP32)
        _train(model, zero1=False, steps=1)
        ids = logit_ids()
        logits = full_logits(model, [MicroBatch(ids, torch.ones_like(ids))])[0]
        save_hf_checkpoint(model, Path(checkpoint_root) / family)
        results[("save", family, degrees)] = {
            "coord": (ctx.coord.dp_rank, ctx.coord.tp_rank, ctx.coord.pp_rank),
            "logits": logits}
    return results


def experts_names(model: ParallelModel) -> list[str]:
    return [p.name for p in model_params(model.spec, model.head, model.ctx.pp)
            if p.is_expert and p.name in model.params]
