"""Programmatic sequence lengths: what `plan run` generates and prompts when the workflow's
batch gives length distributions (planner/domain/length_distribution.py).

The cost model prices a batch by its length distributions: a static micro-batch decodes
until its longest row ends, continuous batching by the rows' total tokens, the prefill by
the micro-batch's longest prompt. The engine's models have no stop token that would end a
response at a length of that law (randomly initialised or loaded, they stop only at
gen_len), so the executor makes the lengths the workflow states: every response ends at a
length drawn from `gen_lengths` (generate's `response_limits`, which stops the row as a stop
token would), and every synthetic prompt has a length drawn from `prompt_lengths` (a
prompts file keeps its own lengths). Each draw is the inverse CDF of a uniform hashed from
(run seed, iteration, stream, global sequence index), so a sequence has the same length
under every layout, in every call of its iteration (a greedy generate call's response
included), and in a synchronous and an asynchronous run alike. A fixed length (the
default: `gen_len: 16`) draws that length for every row, which is today's run bit for bit.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from planner.domain.length_distribution import LengthDistribution

# 53 bits: a double's mantissa, so every uniform is exact and in (0, 1].
_UNIFORM_BITS = 53


def _uniform(seed: int, iteration: int, stream: str, sequence: int) -> float:
    digest = hashlib.blake2b(f"{seed}/{iteration}/{stream}/{sequence}".encode(), digest_size=8)
    bits = int.from_bytes(digest.digest(), "little") >> (64 - _UNIFORM_BITS)
    return (bits + 1) / 2.0 ** _UNIFORM_BITS


def drawn_lengths(lengths: LengthDistribution, seed: int, iteration: int, stream: str,
                  sequences: range) -> torch.Tensor:
    """int64 [len(sequences)]: the length of each global sequence index of `sequences` in
    `iteration`, drawn from `lengths` (module docstring); `stream` keeps the draws of
    responses ("response") and prompts ("prompt") apart."""
    u = np.array([_uniform(seed, iteration, stream, s) for s in sequences], dtype=float)
    return torch.from_numpy(np.asarray(lengths.quantile(u), dtype=np.int64))
