"""Work run on every spawned rank by the right-aligned causal path tests
(test_runtime_causal_path.py), and the data they use.

Each rank runs each layout twice, with the masked path (CPU_FP32) and with the right-aligned
causal one switched on (RIGHT_ALIGNED), from the same weights, and returns both: the full
logits of left-padded micro-batches (values for the value head), and the weights after one
train step. The step's Adam has eps far above every gradient, so its first update is
lr / eps x the gradient (m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected: lr g / (|g| + eps)):
the weights moved compare the gradients without Adam's sign-like amplification of float
noise (../shared/runtime-notes.md).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from moe_workers import spec_of

from planner.domain.layout import RecomputeMode
from planner.domain.model_files import resolve_model
from planner.domain.modelspec import PRESETS
from planner.domain.placement import Placement
from runtime.batch import MicroBatch, ModelOutputs
from runtime.device import CPU_FP32
from runtime.inference import full_logits, inference
from runtime.model import ParallelModel
from runtime.optimizer import Adam, AdamConfig
from runtime.parallel_context import create_contexts
from runtime.train import train_step

WORLD_SIZE = 2
RIGHT_ALIGNED = replace(CPU_FP32, right_aligned_attention=True)
SEED = 7
NUM_SEQS, SEQ_LEN = 4, 16
# Per row: left pads (the prompt's), real tokens (prompt + response), right pads.
LEFT_PADS = (3, 0, 5, 1)
RIGHT_PADS = (2, 4, 0, 0)
GRADIENT_STEP = AdamConfig(lr=1e3, eps=1e3, max_grad_norm=None)
# (case, (dp, tp, pp, ep), recompute): dense lm under tp 2 and pp 2 (the rerun modes too),
# dp 2, the value head under pp 2, a MoE model under ep 2, and a transformers-saved
# checkpoint under tp 2 and pp 2 (its logits go to transformers in the test).
CASES: list[tuple[str, tuple[int, int, int, int], RecomputeMode]] = [
    ("lm", (1, 2, 1, 1), "selective"), ("lm", (1, 1, 2, 1), "full"),
    ("lm", (2, 1, 1, 1), "none"), ("value", (1, 1, 2, 1), "none"),
    ("moe", (2, 1, 1, 2), "none"), ("hf", (1, 2, 1, 1), "none"), ("hf", (1, 1, 2, 1), "none")]
MOE_FAMILY = "qwen3_moe"


def padded_sequences(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NUM_SEQS x SEQ_LEN token ids (0 at pads) and their attention mask, padded as
    LEFT_PADS / RIGHT_PADS say."""
    ids = torch.randint(1, vocab, (NUM_SEQS, SEQ_LEN), generator=torch.Generator().manual_seed(3))
    slots = torch.arange(SEQ_LEN)[None]
    left, right = torch.tensor(LEFT_PADS)[:, None], torch.tensor(RIGHT_PADS)[:, None]
    mask = ((slots >= left) & (slots < SEQ_LEN - right)).long()
    return ids * mask, mask


def micro_batches(vocab: int, dp: int, dp_rank: int, head: str) -> list[MicroBatch]:
    """This replica's rows (every dp-th), one row per micro-batch; loss over real tokens."""
    ids, mask = padded_sequences(vocab)
    out = []
    for row in range(dp_rank, NUM_SEQS, dp):
        r = slice(row, row + 1)
        loss_mask = (mask[r, 1:] * mask[r, :-1]).float() if head == "lm" else mask[r].float()
        out.append(MicroBatch(ids[r], mask[r], loss_mask))
    return out


def loss(outputs: ModelOutputs, mb: MicroBatch) -> torch.Tensor:
    """Token NLL (lm) or a value regression onto the token ids' scale (value), summed."""
    if outputs.values is not None:
        target = mb.input_ids.float() / 100.0
        return ((outputs.values - target) ** 2 * mb.loss_mask).sum()
    return (-outputs.logprobs * mb.loss_mask).sum()


def _model(case: str, ctx, device, checkpoint_dir: str) -> ParallelModel:
    if case == "hf":
        return ParallelModel.from_hf(checkpoint_dir, resolve_model(checkpoint_dir), "lm", ctx,
                                     device)
    spec = spec_of(MOE_FAMILY) if case == "moe" else PRESETS["llama-tiny"]
    return ParallelModel.from_seed(spec, "value" if case == "value" else "lm", ctx, SEED,
                                   device)


def _run(case: str, ctx, device, recompute: RecomputeMode, checkpoint_dir: str) -> dict:
    model = _model(case, ctx, device, checkpoint_dir)
    head = model.head
    mbs = micro_batches(model.spec.vocab_size, ctx.dp, ctx.coord.dp_rank, head)
    if head == "value":
        out = {"outputs": [o.values for o in inference(model, mbs)]}
    else:
        out = {"outputs": full_logits(model, mbs)}
    if case == "hf":
        return out
    before = {n: p.detach().clone() for n, p in model.params.items()}
    optimizer = Adam(model.params, GRADIENT_STEP, ctx, num_kv_heads=model.spec.num_kv_heads)
    train_step(model, optimizer, mbs, loss, recompute=recompute)
    out["moved"] = {n: (before[n] - p.detach()) for n, p in model.params.items()}
    return out


def all_cases(rank: int, world_size: int, checkpoint_dir: str) -> dict:
    """{(case, degrees): {"masked": ..., "right_aligned": ..., "mask": [rows' masks]}}."""
    layouts = [Placement(tuple(range(dp * tp * pp)), dp, tp, pp, ep)
               for _, (dp, tp, pp, ep), _ in CASES]
    results = {}
    for (case, degrees, recompute), ctx in zip(CASES, create_contexts(layouts)):
        if ctx is None:
            continue
        results[(case, degrees)] = {
            "coord": (ctx.coord.dp_rank, ctx.coord.tp_rank, ctx.coord.pp_rank),
            "masked": _run(case, ctx, CPU_FP32, recompute, checkpoint_dir),
            "right_aligned": _run(case, ctx, RIGHT_ALIGNED, recompute, checkpoint_dir)}
    return results
