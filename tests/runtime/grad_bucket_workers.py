"""Work run on every spawned rank by test_runtime_grad_buckets.py.

Every case trains llama-tiny (fp32) for two steps of two minibatches from the same seed and
data, under a layout, ZeRO-1 on or off and a gradient bucket size, and returns this rank's
parameter shards plus what the buckets did: how many were launched before the optimizer
step (hence from the backward hooks), and at each launch how many gradients backward had
finished.
"""

from __future__ import annotations

import runtime_workers as W

from runtime.batch import MicroBatch
from runtime.device import CPU_FP32
from runtime.model import ParallelModel
from runtime.optimizer import Adam, AdamConfig
from runtime.parallel_context import create_contexts
from runtime.train import train_step

SMALL_BUCKET_BYTES = 256 * 1024  # llama-tiny's 13.7 MB of fp32 gradients: ~53 buckets
ONE_BUCKET_BYTES = 2**40        # the whole buffer in one bucket: one collective after backward
ADAM = AdamConfig(lr=1e-3, weight_decay=0.01, max_grad_norm=0.5)
NUM_MINIBATCHES, NUM_STEPS, MICRO_SEQS = 2, 2, 1
LAYOUTS = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 1, 2)]
CASES = [((1, 1, 1), False, ONE_BUCKET_BYTES), ((1, 1, 1), False, SMALL_BUCKET_BYTES)] + [
    (degrees, zero1, bucket) for degrees in LAYOUTS[1:] for zero1 in (False, True)
    for bucket in (SMALL_BUCKET_BYTES, ONE_BUCKET_BYTES)]


def micro_batches(dp: int, dp_rank: int) -> list:
    """This replica's rows, one sequence per micro-batch (two micro-batches per minibatch
    and replica at dp 2: the first only accumulates, the second overlaps the reduction)."""
    ids, mask = W.sequences()
    loss_mask = (mask[:, 1:] * mask[:, :-1]).float()
    rows = W.replica_rows(dp, dp_rank, W.NUM_SEQS, NUM_MINIBATCHES)
    return [MicroBatch(ids[rows[i:i + MICRO_SEQS]], mask[rows[i:i + MICRO_SEQS]],
                         loss_mask[rows[i:i + MICRO_SEQS]])
            for i in range(0, len(rows), MICRO_SEQS)]


def _instrument(optimizer: Adam) -> dict:
    """Record, per minibatch, the buckets launched before the step and, per launch, how
    many gradients backward had finished by then."""
    buckets, seen = optimizer.buckets, {"before_step": [], "finished_at_launch": []}
    finished = [0]
    on_final, launch, reduced = buckets._on_final, buckets._launch_next, buckets.reduced_gradient

    def counting_on_final(index, param):
        finished[0] += 1
        on_final(index, param)

    def recording_launch():
        seen["finished_at_launch"].append(finished[0])
        launch()

    def recording_reduced():
        seen["before_step"].append(buckets.launched)
        finished[0] = 0
        return reduced()

    buckets._on_final, buckets._launch_next = counting_on_final, recording_launch
    buckets.reduced_gradient = recording_reduced
    return seen


def all_cases(rank: int, world_size: int) -> dict:
    contexts = dict(zip(LAYOUTS, create_contexts([W.layout_of(d) for d in LAYOUTS])))
    results = {}
    for degrees, zero1, bucket_bytes in CASES:
        ctx = contexts[degrees]
        if ctx is None:
            continue
        model = ParallelModel.from_seed(W.SPEC, "lm", ctx, W.SEED, CPU_FP32)
        optimizer = Adam(model.params, ADAM, ctx, shard_over_dp=zero1,
                         grad_bucket_bytes=bucket_bytes)
        seen = _instrument(optimizer)
        for _ in range(NUM_STEPS):
            train_step(model, optimizer, micro_batches(ctx.dp, ctx.coord.dp_rank), W.sft_loss,
                       NUM_MINIBATCHES, with_entropy=True)
        coord = ctx.coord
        results[(degrees, zero1, bucket_bytes)] = {
            "coord": (coord.dp_rank, coord.tp_rank, coord.pp_rank),
            "params": {n: p.detach().clone() for n, p in model.params.items()},
            "num_buckets": len(optimizer.buckets.bounds), "num_params": len(model.params),
            **seen}
    return results
