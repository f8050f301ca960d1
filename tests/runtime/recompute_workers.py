"""One forward and backward of llama-tiny (fp32) under each recomputation mode, at tp 1 and
tp 2: what test_runtime_recompute_modes.py compares. Runs in-process (tp 1) or on every
spawned rank (both layouts).

Per (tp, mode) a rank returns its parameter gradients, the loss, the bytes of activations
alive between forward and backward and at the backward's peak (runtime.memory_meter.
LiveBytes, with the parameters and preallocated gradients left out), and the TP all-reduces
launched in forward and in backward (torch.distributed.all_reduce calls on this rank).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from planner.domain.layout import RECOMPUTE_MODES
from planner.domain.modelspec import PRESETS
from planner.domain.placement import Placement
from planner.sharding.rank_groups import placement_coordinate
from runtime.device import CPU_FP32
from runtime.memory_meter import LiveBytes
from runtime.model import ParallelModel
from runtime.parallel_context import Group, ParallelContext, create_contexts
from runtime.vocab_parallel import token_logprobs

SPEC = PRESETS["llama-tiny"]
SEED = 3
NUM_SEQS, SEQ_LEN = 2, 64
LAYOUTS = [Placement((0,), 1, 1, 1), Placement((0, 1), 1, 2, 1)]


def sequences() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and an attention mask with left padding on the first row."""
    ids = torch.randint(0, SPEC.vocab_size, (NUM_SEQS, SEQ_LEN),
                        generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    return ids, mask


class _AllReduceCounter:
    """Counts torch.distributed.all_reduce calls (runtime.comm calls it through the module)
    while installed."""

    def __init__(self):
        self.count = 0
        self.original = dist.all_reduce

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.original(*args, **kwargs)

    def __enter__(self):
        dist.all_reduce = self
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self.original


def one_step(ctx: ParallelContext, mode: str) -> dict:
    """Forward and backward of a next-token loss under `mode` (module docstring)."""
    model = ParallelModel.from_seed(SPEC, "lm", ctx, SEED, CPU_FP32)
    for p in model.params.values():
        p.requires_grad_(True)
        p.grad = torch.zeros_like(p)
    ids, mask = sequences()
    tracker = LiveBytes(ignore=[*model.params.values(), *(p.grad for p in model.params.values())])
    with tracker:
        with _AllReduceCounter() as forward_reduces:
            logits = model.forward_sequences(ids, mask, recompute=mode)
            logprobs, _ = token_logprobs(logits[:, :-1], ids[:, 1:], model.vocab_start,
                                         ctx.tp_group)
            loss = -(logprobs * mask[:, 1:]).sum()
        kept_bytes = tracker.live_bytes()
        with _AllReduceCounter() as backward_reduces:
            loss.backward()
    return {"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.params.items()},
            "kept_bytes": kept_bytes, "peak_bytes": tracker.peak_bytes,
            "forward_all_reduces": forward_reduces.count,
            "backward_all_reduces": backward_reduces.count}


def one_rank_context() -> ParallelContext:
    layout = LAYOUTS[0]
    one = Group(handle=None, ranks=(0,))
    return ParallelContext(layout=layout, global_rank=0, coord=placement_coordinate(layout, 0),
                           tp_group=one, dp_group=one, pp_group=one)


def every_mode(rank: int, world_size: int) -> dict:
    """{(tp, mode): one_step result} for the layouts this rank belongs to."""
    results = {}
    for layout, ctx in zip(LAYOUTS, create_contexts(LAYOUTS)):
        if ctx is not None:
            for mode in RECOMPUTE_MODES:
                results[(layout.tp, mode)] = one_step(ctx, mode)
    return results
