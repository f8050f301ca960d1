"""Exhaustive search: every plan of a small space, evaluated in blocks. The ground truth the
MCMC search is tested against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.search.fast_evaluator import FastEvaluator

DEFAULT_MAX_PLANS = 50_000_000
BLOCK_PLANS = 1 << 16


@dataclass
class ExhaustiveResult:
    best_choice: np.ndarray | None      # None when no plan fits
    best_iteration_s: float
    num_plans: int
    num_feasible: int


def exhaustive_search(evaluator: FastEvaluator,
                      max_plans: int = DEFAULT_MAX_PLANS) -> ExhaustiveResult:
    """Evaluate every plan; ValueError when the space has more than `max_plans` plans."""
    sizes = evaluator.tables.sizes
    total = int(np.prod(sizes.astype(object)))
    if total > max_plans:
        raise ValueError(f"the space has {total:,} plans, above the exhaustive limit "
                         f"{max_plans:,}")
    best_time, best_choice, feasible_count = np.inf, None, 0
    for start in range(0, total, BLOCK_PLANS):
        flat = np.arange(start, min(start + BLOCK_PLANS, total), dtype=np.int64)
        choice = np.stack(np.unravel_index(flat, tuple(sizes)), axis=1)
        result = evaluator.evaluate(choice)
        feasible = result.feasible
        feasible_count += int(feasible.sum())
        if feasible.any():
            times = np.where(feasible, result.iteration_s, np.inf)
            i = int(np.argmin(times))
            if times[i] < best_time:
                best_time, best_choice = float(times[i]), choice[i].copy()
    return ExhaustiveResult(best_choice, best_time, total, feasible_count)
