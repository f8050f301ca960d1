"""Measured profile tables: the file format and the lookup.

A table lives in `profiles/<device>/<model-shape>.yaml` (`model_shape_key` names the shape,
e.g. `h4096-a32-kv32-i11008-v32000`; the layer count does not matter, tables are per part):

    format_version: 1
    device: h100-sxm-80gb          # a profiles/hardware/<name>.yaml
    torch_version: "2.13.0"
    recorded: "2025-06-01"         # date measured
    host: node-17                  # optional: machine measured on
    processor:                     # optional: what it was measured on (planner/domain/
      kind: cuda                   # processor.py; plan profile writes it; absent in
      name: NVIDIA H100 80GB HBM3  # older tables: unknown)
      driver_version: 550.54.15
    notes: "bf16 on NVIDIA H100"   # optional: how it was measured (plan profile writes it)
    model_shape: h4096-a32-kv32-i11008-v32000
    shards:                        # one entry per tensor-parallel degree measured
      - tp: 1
        entries:
          - op: forward            # forward | backward | prefill | decode | optimizer
            part: block            # embedding | block | lm_head | value_head
            batch: [1, 8, 64]      # sequences, ascending
            length: [128, 512, 2048]   # tokens per sequence (decode: cached context)
            seconds: [[...], [...], [...]]   # [batch][length], compute only on one device
          - op: optimizer
            part: block
            seconds: 0.0012        # one Adam step of the part's shard (no grid)

Times are compute only on one device holding the tp shard shape; communication is priced
separately (costmodel/comm.py).

Lookup: inside the grid, bilinear interpolation of log(seconds) over log(batch) and
log(length). Outside the grid: clamp each coordinate to the grid and look up that edge point.
Above the grid its time scales linearly by tokens, (batch x length) / (batch_edge x
length_edge). Below the grid's first value of an axis it continues the first segment's
log-log slope along that axis (averaged over the first two rows of the other axis), clipped
to [0, 1]: a time falls no faster than the tokens and never grows as they shrink. Scaling
down linearly instead priced a decode step at a context of 16 at half the measured step at
32, where the step reads the same weights and hardly depends on the context (llama-tiny on
CPU: 0.348 / 0.400 ms at contexts 32 / 128, batch 4), and short forwards below their fixed
per-op costs; on the 12 CPU plans of benchmarks/estimator_accuracy.py (sequences of 24 and
40 tokens, a CPU grid starting at 32) the held-out per-iteration error went from 6.1% to
4.7%, 8 to 10 of 12 within 10% (docs/accuracy.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.domain.cluster import MAX_DEVICES_PER_NODE
from planner.domain.errors import validated
from planner.domain.modelspec import MAX_POSITIONS, ModelSpec
from planner.domain.processor import Processor
from planner.domain.workflow import MAX_SEQS_PER_ITERATION
from planner.domain.yamlio import load_yaml_mapping

FORMAT_VERSION = 1
# One op of one layer part: the slowest point of a CPU grid takes seconds, so a day is a
# broken measurement or a unit slip, not a time to price a plan with.
MAX_PROFILED_SECONDS = 86_400.0
# Largest grid point of each axis: a batch of sequences, a sequence length.
MAX_AXIS = {"batch": MAX_SEQS_PER_ITERATION, "length": MAX_POSITIONS}
OpName = str


def model_shape_key(spec: ModelSpec) -> str:
    """File stem of a model shape's profile table (per-part shapes, layer count excluded;
    a mixture-of-experts block's experts, top-k and shared width too, so that no dense
    table answers for it)."""
    bias = "-bias" if spec.attention_bias else ""
    head = f"-d{spec.head_dim}" if spec.q_dim != spec.hidden_size else ""
    qk_norm = "-qknorm" if spec.qk_norm else ""
    moe = ""
    if spec.moe is not None:
        m = spec.moe
        moe = (f"-moe{m.num_experts}x{m.expert_intermediate_size}k{m.experts_per_token}"
               f"s{m.shared_expert_intermediate_size}")
    return (f"h{spec.hidden_size}-a{spec.num_heads}-kv{spec.num_kv_heads}{head}-"
            f"i{spec.intermediate_size}-v{spec.vocab_size}{bias}{qk_norm}{moe}")


class ProfileEntry(BaseModel):
    """Times of one op of one part over a (batch, length) grid, or one scalar for optimizer."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    op: str
    part: str
    batch: Optional[tuple[float, ...]] = None
    length: Optional[tuple[float, ...]] = None
    seconds: Union[float, tuple[tuple[float, ...], ...]]

    @model_validator(mode="after")
    def _check(self) -> "ProfileEntry":
        from costmodel.roofline import OPS, PARTS
        if self.op not in OPS:
            raise ValueError(f"op {self.op!r} is not one of {list(OPS)}")
        if self.part not in PARTS:
            raise ValueError(f"part {self.part!r} is not one of {list(PARTS)}")
        if isinstance(self.seconds, float):
            _check_seconds([self.seconds])
            return self
        if self.batch is None or self.length is None:
            raise ValueError("a grid entry needs batch and length lists")
        for name, axis in (("batch", self.batch), ("length", self.length)):
            if not axis or any(b <= a for a, b in zip(axis, axis[1:])) or axis[0] <= 0:
                raise ValueError(f"{name} {list(axis)} must be positive and strictly ascending")
            if axis[-1] > MAX_AXIS[name]:
                raise ValueError(f"{name} {axis[-1]:g} is above the largest valid grid point, "
                                 f"{MAX_AXIS[name]:,}")
        rows, cols = len(self.seconds), {len(r) for r in self.seconds}
        if rows != len(self.batch) or cols != {len(self.length)}:
            raise ValueError(f"seconds is {rows} x {sorted(cols)}, grid is {len(self.batch)} "
                             f"batch x {len(self.length)} length")
        _check_seconds([v for row in self.seconds for v in row])
        return self


def _check_seconds(values: list[float]) -> None:
    """ValueError unless every measured time is in (0, MAX_PROFILED_SECONDS]."""
    bad = next((v for v in values if not 0 < v <= MAX_PROFILED_SECONDS), None)
    if bad is not None:
        raise ValueError(f"seconds {bad} must be positive and at most {MAX_PROFILED_SECONDS:g}")


class ProfileShard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tp: int = Field(ge=1, le=MAX_DEVICES_PER_NODE, description="tensor parallelism stays "
                    "inside a node")
    entries: tuple[ProfileEntry, ...]


class ProfileTable(BaseModel):
    """One device x model-shape table (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    device: str
    torch_version: str
    recorded: str
    host: str = ""
    processor: Optional[Processor] = None   # None: a table from before it was recorded
    notes: str = ""
    model_shape: str
    shards: tuple[ProfileShard, ...]

    @model_validator(mode="after")
    def _check(self) -> "ProfileTable":
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version}; this tool reads "
                             f"{FORMAT_VERSION}")
        return self


class ProfileLookup:
    """Interpolating lookup over a loaded table; `source` is "profile:<file>"."""

    def __init__(self, table: ProfileTable, path: Path):
        self.table = table
        self.path = path
        self.source = f"profile:{path}"
        self._entries = {(s.tp, e.op, e.part): e for s in table.shards for e in s.entries}
        self._grids = {key: Grid.of(e) for key, e in self._entries.items()
                       if not isinstance(e.seconds, float)}

    def has(self, op: str, part: str, tp: int) -> bool:
        return (tp, op, part) in self._entries

    def time_s(self, op: str, part: str, tp: int, batch: float, length):
        """Seconds of (op, part, tp) at `batch` sequences of `length` (array ok) tokens."""
        grid = self._grids.get((tp, op, part))
        if grid is None:
            return self._entries[(tp, op, part)].seconds + np.asarray(length, dtype=float) * 0.0
        return grid_time_s(grid, batch, length)


@dataclass(frozen=True)
class Grid:
    """One grid entry as arrays, read once per table (lookups run in the search's pricing
    loop): its axes, log(seconds) [batch][length], and the log-log slope below the first
    value of each axis (module docstring)."""

    batches: np.ndarray
    lengths: np.ndarray
    log_seconds: np.ndarray
    batch_slope: float
    length_slope: float

    @classmethod
    def of(cls, entry: ProfileEntry) -> "Grid":
        batches = np.asarray(entry.batch, dtype=float)
        lengths = np.asarray(entry.length, dtype=float)
        log_seconds = np.log(np.asarray(entry.seconds, dtype=float))
        return cls(batches, lengths, log_seconds,
                   _first_segment_slope(batches, log_seconds[:, :2].mean(axis=1)),
                   _first_segment_slope(lengths, log_seconds[:2, :].mean(axis=0)))


def _first_segment_slope(axis: np.ndarray, log_seconds: np.ndarray) -> float:
    """The log-log slope between the axis's first two values, clipped to [0, 1] (a time
    that falls no faster than the tokens and never grows as they shrink); 1 (linear in
    tokens) for an axis of one value."""
    if len(axis) < 2:
        return 1.0
    return float(np.clip((log_seconds[1] - log_seconds[0]) / np.log(axis[1] / axis[0]),
                         0.0, 1.0))


def _axis_weights(axis: np.ndarray, value):
    """Indices i, i+1 and weight of the upper point for log-space interpolation (clamped)."""
    log_axis = np.log(axis)
    clamped = np.clip(np.log(value), log_axis[0], log_axis[-1])
    upper = np.clip(np.searchsorted(log_axis, clamped, side="right"), 1, len(axis) - 1)
    if len(axis) == 1:
        return np.zeros_like(upper), np.zeros_like(upper), np.zeros_like(clamped)
    lower = upper - 1
    weight = (clamped - log_axis[lower]) / (log_axis[upper] - log_axis[lower])
    return lower, upper, weight


def grid_time_s(grid: Grid, batch: float, length):
    """Log-space bilinear interpolation; outside, the edge point scaled (module docstring):
    linearly by tokens above the grid, by the first segment's slope below it."""
    batches, lengths, log_seconds = grid.batches, grid.lengths, grid.log_seconds
    length = np.asarray(length, dtype=float)
    b0, b1, wb = _axis_weights(batches, np.asarray(float(batch)))
    l0, l1, wl = _axis_weights(lengths, length)
    row0 = log_seconds[b0, l0] * (1 - wl) + log_seconds[b0, l1] * wl
    row1 = log_seconds[b1, l0] * (1 - wl) + log_seconds[b1, l1] * wl
    inside = np.exp(row0 * (1 - wb) + row1 * wb)
    edge_batch = np.clip(batch, batches[0], batches[-1])
    edge_length = np.clip(length, lengths[0], lengths[-1])
    above = np.maximum(batch, edge_batch) * np.maximum(length, edge_length) \
        / (edge_batch * edge_length)
    below = (np.minimum(batch / batches[0], 1.0) ** grid.batch_slope
             * np.minimum(length / lengths[0], 1.0) ** grid.length_slope)
    return inside * above * below


@lru_cache(maxsize=256)
def load_profile(path: Path) -> ProfileLookup:
    """Read and validate one table; InputError naming the file and field."""
    data = load_yaml_mapping(path)
    table = validated(ProfileTable, data, path)
    return ProfileLookup(table, path)


def find_profile(profiles_dir: Path, device: str, spec: ModelSpec) -> ProfileLookup | None:
    """The table for (device, model shape) under `profiles_dir`, or None."""
    path = Path(profiles_dir) / device / f"{model_shape_key(spec)}.yaml"
    return load_profile(path) if path.is_file() else None
