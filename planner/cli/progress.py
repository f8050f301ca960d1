"""A one-line progress display on stderr (only when stderr is a terminal)."""

from __future__ import annotations

import sys


class ProgressLine:
    """`label: [#####.....] 12.3/60 s  1,234,567 plans  best 71.7 s`, redrawn in place."""

    WIDTH = 30

    def __init__(self, label: str, total_s: float, stream=None):
        self.label = label
        self.total_s = total_s
        # sys.stderr at call time, not at import (tests and tools replace it)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.drawn = False

    def update(self, evaluations: int, elapsed_s: float, best_s: float) -> None:
        if not self.enabled:
            return
        filled = int(self.WIDTH * min(1.0, elapsed_s / self.total_s))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label}: [{bar}] {elapsed_s:5.1f}/{self.total_s:g} s  "
                          f"{evaluations:,} plans  best {best_s:.2f} s")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
