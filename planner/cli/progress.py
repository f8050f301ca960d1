"""A one-line progress display on stderr (only when stderr is a terminal)."""

from __future__ import annotations

import sys


class ProgressLine:
    """`label: [#####.....] 12.3/60 s  1,234,567 plans  best 71.7 s`, redrawn in place;
    `phase` changes the label (and draws the line without the plan counts)."""

    WIDTH = 30

    def __init__(self, label: str, total_s: float, stream=None):
        self.label = label
        self.total_s = total_s
        # sys.stderr at call time, not at import (tests and tools replace it)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.drawn = False

    def phase(self, label: str, elapsed_s: float) -> None:
        """Start phase `label`, `elapsed_s` into the total."""
        self.label = label
        self._draw(elapsed_s, "")

    def update(self, evaluations: int, elapsed_s: float, best_s: float) -> None:
        self._draw(elapsed_s, f"  {evaluations:,} plans  best {best_s:.2f} s")

    def _draw(self, elapsed_s: float, details: str) -> None:
        if not self.enabled:
            return
        filled = int(self.WIDTH * min(1.0, elapsed_s / self.total_s))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        # "\x1b[K" clears what a longer earlier line left to the right
        self.stream.write(f"\r{self.label}: [{bar}] {elapsed_s:5.1f}/{self.total_s:g} s"
                          f"{details}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
