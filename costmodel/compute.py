"""Compute-time source for one (hardware, model shape): a profile table, else the roofline.

`PartTimer.time_s(op, part, tp, batch, length)` returns seconds on one device; `source_for`
names what answered: "profile:<file>" when the table has the (tp, op, part) entry, else
"roofline:<hardware>". A partial table falls back to the roofline per missing entry.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from costmodel.profile_table import ProfileLookup, find_profile
from costmodel.roofline import part_time_s_roofline
from planner.domain.hardware import HardwareSpec
from planner.domain.modelspec import ModelSpec
from planner.domain.paths import PROFILES_DIR

# Memoised points per timer before the memo starts over (a bound on its memory: a decode
# point holds an array of gen_len contexts).
MEMO_ENTRIES = 100_000


class PartTimer:
    """Per-part compute times of one model shape on one hardware."""

    def __init__(self, spec: ModelSpec, hardware: HardwareSpec, profile: ProfileLookup | None):
        self.spec = spec
        self.hardware = hardware
        self.profile = profile
        self.roofline_source = f"roofline:{hardware.name}"
        self._memo: dict = {}

    def source_for(self, op: str, part: str, tp: int) -> str:
        if self.profile is not None and self.profile.has(op, part, tp):
            return self.profile.source
        return self.roofline_source

    def time_s(self, op: str, part: str, tp: int, batch: float, length):
        """Seconds of `op` of `part` (an array for an array of lengths). Memoised: the search
        asks for the same points across candidates; arrays come back read-only."""
        lengths = np.asarray(length, dtype=float)
        key = (op, part, tp, float(batch), lengths.shape, lengths.tobytes())
        if key not in self._memo:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            seconds = self._time_s(op, part, tp, batch, length)
            if isinstance(seconds, np.ndarray):
                seconds.setflags(write=False)
            self._memo[key] = seconds
        return self._memo[key]

    def _time_s(self, op: str, part: str, tp: int, batch: float, length):
        if self.profile is not None and self.profile.has(op, part, tp):
            return self.profile.time_s(op, part, tp, batch, length)
        return part_time_s_roofline(self.spec, self.hardware, op, part, tp, batch, length)


@lru_cache(maxsize=256)
def part_timer(spec: ModelSpec, hardware: HardwareSpec,
               profiles_dir: Path = PROFILES_DIR) -> PartTimer:
    """The timer for (spec, hardware), using profiles/<device>/<shape>.yaml when present;
    the roofline alone for a mixture-of-experts model (its routed experts depend on ep,
    which a part's table does not have: costmodel/moe_cost.py prices them, and the blocks'
    other parts with the roofline, so that both come from one source)."""
    if spec.moe is not None:
        return PartTimer(spec, hardware, None)
    return PartTimer(spec, hardware, find_profile(profiles_dir, hardware.name, spec))
