"""Data keys on a rank: their tensor formats, the per-rank store, and data transfers.

Formats follow planner.domain.data_keys (what the cost model counts): token ids int32 and masks
uint8 over the whole sequence (prompt left-padded to prompt_len, response right-padded to
gen_len), per-token floats fp32 over the response, per-sequence rewards one fp32.

Every rank of a call's data-parallel replica holds the replica's rows (global sequences
`sequence_range(n_seqs, dp, dp_rank)`) of each key the call writes. A transfer executes
planner.sharding.transfer_schedule.data_schedule: per message (sender, receiver) the pieces' rows of
every key of the edge, packed into one byte buffer, tagged with the transfer's tag. Senders
post their sends right after the source call, without waiting (the worker waits for them
once their receivers are sure to have come by, runtime/executor/worker.py); receivers take
theirs step by step at the transfer's place in the order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from planner.domain.data_keys import (
    MASK_KEYS,
    PER_GENERATED_TOKEN_KEYS,
    PER_SEQUENCE_KEYS,
    TOKEN_KEYS,
)
from planner.domain.errors import InputError
from planner.domain.workflow import BatchSpec
from runtime.executor.steps import TransferStep

RUNTIME_KEYS = PER_SEQUENCE_KEYS | PER_GENERATED_TOKEN_KEYS | TOKEN_KEYS | MASK_KEYS
DATASET_KEYS = frozenset({"prompts", "pairs"})


def key_format(key: str, batch: BatchSpec) -> tuple[torch.dtype, tuple[int, ...]]:
    """dtype and per-sequence shape of a key."""
    if key in TOKEN_KEYS:
        return torch.int32, (batch.seq_len,)
    if key in MASK_KEYS:
        return torch.uint8, (batch.seq_len,)
    if key in PER_GENERATED_TOKEN_KEYS:
        return torch.float32, (batch.gen_len,)
    if key in PER_SEQUENCE_KEYS:
        return torch.float32, ()
    raise InputError(f"data key {key!r} has no runtime format; the runtime runs the built-in "
                     f"keys {sorted(RUNTIME_KEYS | DATASET_KEYS)}")


@dataclass
class Segment:
    first: int
    rows: torch.Tensor

    @property
    def stop(self) -> int:
        return self.first + self.rows.shape[0]


class DataStore:
    """Rows of data keys this rank holds, per iteration."""

    def __init__(self):
        self._segments: dict[tuple[int, str], list[Segment]] = {}

    def put(self, iteration: int, key: str, first: int, rows: torch.Tensor) -> None:
        self._segments.setdefault((iteration, key), []).append(Segment(first, rows))

    def rows(self, iteration: int, key: str, first: int, stop: int) -> torch.Tensor:
        """Rows [first, stop) of `key`, assembled from the segments held."""
        parts, at = [], first
        for seg in sorted(self._segments.get((iteration, key), []), key=lambda s: s.first):
            if seg.first <= at < seg.stop:
                end = min(stop, seg.stop)
                parts.append(seg.rows[at - seg.first:end - seg.first])
                at = end
            if at >= stop:
                break
        assert at >= stop, f"iteration {iteration} key {key}: rows [{first}, {stop}) not held"
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def drop(self, iteration: int) -> None:
        for k in [k for k in self._segments if k[0] == iteration]:
            del self._segments[k]


def _piece_bytes(keys, batch: BatchSpec, num_rows: int) -> list[tuple[str, int, torch.dtype,
                                                                         tuple[int, ...]]]:
    out = []
    for key in keys:
        dtype, shape = key_format(key, batch)
        numel = num_rows * (shape[0] if shape else 1)
        out.append((key, numel * torch.tensor([], dtype=dtype).element_size(), dtype, shape))
    return out


def post_transfer_sends(step: TransferStep, store: DataStore, me: int,
                        device: torch.device, pending: list) -> int:
    """Post this rank's sends of a transfer, right after its source call (their rows are in
    the store then), without waiting; returns the bytes posted."""
    sent = 0
    for messages in step.schedule.steps:
        for piece in messages:
            if piece.src == me:
                (lo, hi), = piece.ranges
                parts = [store.rows(step.iteration, k, lo, hi).contiguous().view(-1)
                         .view(torch.uint8) for k in step.keys]
                buffer = torch.cat(parts).to(device)
                pending.append((dist.isend(buffer, dst=piece.dst, tag=step.tag), buffer))
                sent += buffer.numel()
    return sent


def receive_transfer(step: TransferStep, store: DataStore, me: int, batch: BatchSpec,
                     device: torch.device) -> None:
    """This rank's receives of a transfer, step by step, into the store."""
    for messages in step.schedule.steps:
        for piece in messages:
            if piece.dst == me:
                (lo, hi), = piece.ranges
                layout = _piece_bytes(step.keys, batch, hi - lo)
                buffer = torch.empty(sum(b for _, b, _, _ in layout), dtype=torch.uint8,
                                     device=device)
                dist.recv(buffer, src=piece.src, tag=step.tag)
                offset = 0
                for key, size, dtype, shape in layout:
                    rows = buffer[offset:offset + size].cpu().view(dtype).view(hi - lo, *shape)
                    store.put(step.iteration, key, lo, rows.clone())
                    offset += size
