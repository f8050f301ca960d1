"""The wall-clock budget of one `plan search` (its --time-limit), shared by every phase.

Tables, baselines, the MCMC chains, exact re-pricing and the lower bound all draw on one
budget: a phase asks `remaining_s()` before it starts something long and, where it can stop
early (the chains, pricing a framework target's space), stops when `expired()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Deadline:
    """`budget_s` seconds from construction (perf_counter clock)."""

    budget_s: float
    started_s: float = field(default_factory=time.perf_counter)

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started_s

    def remaining_s(self) -> float:
        return max(0.0, self.budget_s - self.elapsed_s())

    def expired(self) -> bool:
        return self.remaining_s() <= 0.0

    def part(self, share: float = 1.0, reserve_s: float = 0.0) -> Deadline:
        """The deadline of one phase, from now: `share` of what remains, less `reserve_s`
        kept for the phases after it (never below zero), so it ends no later than this
        one."""
        return Deadline(max(0.0, share * self.remaining_s() - reserve_s))
