"""Buckets of the data-parallel gradient reduction: a shared pure function (no torch).

The runtime (runtime/grad_reduce.py) reduces a stage's flat gradient buffer over its DP group
in these buckets, each launched as soon as backward has finished its gradients; the cost
model (costmodel/train_cost.py) prices the same buckets.

The flat buffer holds the stage's parameters in model order (embedding, blocks, final norm,
head: planner.sharding.param_shards.model_params), so backward finishes it from the END
(head first, embedding last). Buckets are cut from the end, `bucket_bytes` each (torch DDP's
default bucket_cap_mb = 25 MiB), the last one launched (the buffer's start) taking the
remainder; a parameter may span two buckets. Each bucket's size is a multiple of `multiple`:
dp under ZeRO-1, whose reduce-scatter gives every DP rank an equal piece of every bucket
(rank r owns elements [lo + r * size / dp, lo + (r + 1) * size / dp) of bucket [lo, hi), as
Megatron-LM's distributed optimizer shards each bucket).

Example: 100 elements of 4 bytes, bucket_bytes 40 (10 elements), multiple 4 (size 8):
    [[92, 100], [84, 92], ..., [4, 12], [0, 4]]   (13 buckets, launch order)
"""

from __future__ import annotations

import numpy as np

GRAD_BUCKET_BYTES = 25 * 2**20  # torch.nn.parallel.DistributedDataParallel bucket_cap_mb=25
# The optimizer step (runtime/optimizer.py) works through a rank's part of the gradients in
# chunks of this many elements, so its fp32 temporaries (upcast and clipped gradient, Adam's
# denominator, the norm's squares) hold one chunk, not the part: 2^24 elements = 64 MiB per
# fp32 tensor. Apex's FusedAdam and torch's fused Adam likewise work in chunks
# (multi_tensor_apply); a chunk this large keeps the per-chunk launches negligible (a 3.5
# billion-element part takes about 200).
OPTIMIZER_CHUNK_ELEMENTS = 1 << 24


def grad_bucket_elements(element_bytes: int, multiple: int = 1,
                         bucket_bytes: int = GRAD_BUCKET_BYTES) -> int:
    """Elements of a full bucket: bucket_bytes worth, rounded down to `multiple` (>= one)."""
    return max(multiple, bucket_bytes // element_bytes // multiple * multiple)


def grad_bucket_bounds(numel: int, element_bytes: int, multiple: int = 1,
                       bucket_bytes: int = GRAD_BUCKET_BYTES) -> np.ndarray:
    """[start, stop) of every bucket over a buffer of `numel` elements, in launch order
    (module docstring): int64 array [buckets, 2]. `numel` must be a multiple of `multiple`."""
    assert numel > 0 and numel % multiple == 0, (numel, multiple)
    size = grad_bucket_elements(element_bytes, multiple, bucket_bytes)
    stops = np.arange(numel, 0, -size, dtype=np.int64)
    return np.stack([np.maximum(stops - size, 0), stops], axis=1)
