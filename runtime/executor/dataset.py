"""Prompts and preference pairs of each iteration: a JSONL file of token ids, or synthetic.

Prompts file: one JSON object per line with "prompt": [token ids]. Pairs file (dpo): also
"chosen" and "rejected": [token ids] (the two responses). Iteration i uses the next
n_seqs / group_size prompts (n_seqs / 2 pairs) in file order, wrapping around. Prompts are
left-padded (or left-truncated) to prompt_len, responses right-padded (or truncated) to
gen_len; each prompt is repeated group_size times in a row (GRPO / RLOO groups).

Without a file, tokens are drawn uniformly from [1, vocab) with a generator seeded by
(seed, iteration), each prompt as long as the batch's prompt length distribution draws it
(runtime/executor/lengths.py; prompt_len when that is a fixed length); token 0 is the pad.
Every rank builds the whole batch and keeps its rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from planner.domain.errors import InputError
from planner.domain.workflow import BatchSpec
from runtime.executor.lengths import drawn_lengths

PAD_TOKEN_ID = 0
_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class TokenRows:
    """ids [n, width] int64 and attention mask [n, width] int64."""

    ids: torch.Tensor
    mask: torch.Tensor


def load_records(path: Path, pairs: bool, vocab_size: int) -> list[dict[str, list[int]]]:
    """Validated records of a JSONL file; InputError naming the line on any problem."""
    fields = ("prompt", "chosen", "rejected") if pairs else ("prompt",)
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise InputError(f"{path}: cannot read the prompts file ({err.strerror})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object with {list(fields)}")
        for field in fields:
            ids = item.get(field)
            if not isinstance(ids, list) or not ids or not all(
                    isinstance(t, int) and 0 <= t < vocab_size for t in ids):
                raise InputError(f"{where}: {field}: expected a non-empty list of token ids "
                                 f"in [0, {vocab_size})")
        records.append({f: item[f] for f in fields})
    if not records:
        raise InputError(f"{path}: no records; give one JSON object per line")
    return records


def _left_pad(seqs: list[list[int]], width: int) -> TokenRows:
    ids = torch.full((len(seqs), width), PAD_TOKEN_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        seq = seq[-width:]
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return TokenRows(ids, mask)


def _right_pad(seqs: list[list[int]], width: int) -> TokenRows:
    ids = torch.full((len(seqs), width), PAD_TOKEN_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        seq = seq[:width]
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return TokenRows(ids, mask)


class Dataset:
    """The dataset rows of every iteration."""

    def __init__(self, batch: BatchSpec, vocab_size: int, seed: int, pairs: bool,
                 path: Path | None = None):
        self.batch, self.vocab_size, self.seed, self.pairs = batch, vocab_size, seed, pairs
        self.records = load_records(path, pairs, vocab_size) if path else None

    def _synthetic(self, iteration: int, count: int) -> list[dict[str, list[int]]]:
        g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + iteration)
        b = self.batch
        lengths = drawn_lengths(b.prompt_lengths, self.seed, iteration, "prompt", range(count))
        out = []
        for length in lengths.tolist():
            item = {"prompt": torch.randint(1, self.vocab_size, (length,), generator=g)}
            if self.pairs:
                item["chosen"] = torch.randint(1, self.vocab_size, (b.gen_len,), generator=g)
                item["rejected"] = torch.randint(1, self.vocab_size, (b.gen_len,), generator=g)
            out.append({k: v.tolist() for k, v in item.items()})
        return out

    def _items(self, iteration: int, count: int) -> list[dict[str, list[int]]]:
        if self.records is None:
            return self._synthetic(iteration, count)
        first = iteration * count
        return [self.records[(first + j) % len(self.records)] for j in range(count)]

    def prompts(self, iteration: int) -> TokenRows:
        """n_seqs prompt rows (each prompt group_size times), left-padded to prompt_len."""
        b = self.batch
        items = self._items(iteration, b.n_seqs // b.group_size)
        seqs = [item["prompt"] for item in items for _ in range(b.group_size)]
        return _left_pad(seqs, b.prompt_len)

    def pairs_rows(self, iteration: int) -> TokenRows:
        """n_seqs whole sequences: rows 2j (prompt + chosen) and 2j + 1 (prompt + rejected)."""
        b = self.batch
        items = self._items(iteration, b.n_seqs // 2)
        prompts = _left_pad([it["prompt"] for it in items for _ in range(2)], b.prompt_len)
        responses = _right_pad([it[k] for it in items for k in ("chosen", "rejected")],
                               b.gen_len)
        return TokenRows(torch.cat([prompts.ids, responses.ids], 1),
                         torch.cat([prompts.mask, responses.mask], 1))
