"""Sizes of the data that flows between calls, per sequence, by key name.

Token ids travel as int32, masks as one byte per token, per-token floats (log-probabilities,
values) as fp32 over the generated tokens, per-sequence scalars (rewards) as one fp32.
A DPO pair key (`pairs`) holds the token ids and mask of a sequence. Unknown keys of user
workflows are assumed to be per-token fp32 over the whole sequence (the largest common case).
"""

from __future__ import annotations

from planner.domain.workflow import BatchSpec

TOKEN_ID_BYTES = 4
MASK_BYTES = 1
FLOAT_BYTES = 4

PER_SEQUENCE_KEYS = {"rewards", "greedy_rewards"}
PER_GENERATED_TOKEN_KEYS = {"logprobs", "ref_logprobs", "values"}
TOKEN_KEYS = {"seqs", "greedy_seqs"}
MASK_KEYS = {"masks", "greedy_masks"}


def key_bytes_per_sequence(key: str, batch: BatchSpec) -> int:
    """Bytes of one sequence's value of `key`."""
    if key in PER_SEQUENCE_KEYS:
        return FLOAT_BYTES
    if key in PER_GENERATED_TOKEN_KEYS:
        return FLOAT_BYTES * batch.gen_len
    if key in TOKEN_KEYS:
        return TOKEN_ID_BYTES * batch.seq_len
    if key in MASK_KEYS:
        return MASK_BYTES * batch.seq_len
    if key == "pairs":
        return (TOKEN_ID_BYTES + MASK_BYTES) * batch.seq_len
    return FLOAT_BYTES * batch.seq_len


def payload_bytes(keys: tuple[str, ...] | list[str], batch: BatchSpec) -> float:
    """Bytes of `keys` for the whole batch of n_seqs sequences."""
    return float(batch.n_seqs * sum(key_bytes_per_sequence(k, batch) for k in keys))
