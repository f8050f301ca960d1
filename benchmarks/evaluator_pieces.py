"""Where an MCMC step's time goes: nanoseconds of each piece of the compiled evaluator.

For each case of benchmarks/search_speed.py, builds the search tables as `plan search`
does, then times, on one thread, the pieces a Metropolis step runs
(planner/search/mcmc_kernel.py `_take_step`) on random plans of those tables:

    apply_call      apply one call's new candidate to the evaluation state (a step runs it
                    once, and once more to undo a rejected move)
    schedule_s      the iteration time of the held plan (every step)
    memory_overflow the memory rule (the steps the time alone does not decide)
    fill_plan       load a whole plan (once per chain and sweep; for comparison)

Each figure is the best of three runs of REPEATS calls, in nanoseconds per call; the loop
itself is compiled with the pieces (no Python between calls). With the share of steps the
time alone decides (search_speed.py prints it) and the share of rejected moves, these give
a step's cost: apply x (1 + rejected) + schedule + memory x (1 - decided on time).

    python benchmarks/evaluator_pieces.py [--cases ppo-70b-h100x128,...]
"""

from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np
from search_speed import CASES

from planner.domain.cluster import cluster_preset
from planner.search.builder import full_tables, pruned_tables
from planner.search.fast_evaluator import (
    FastEvaluator,
    apply_call_inline,
    fill_plan,
    memory_overflow,
    schedule_s,
    scratch_sizes,
    scratch_view,
)

REPEATS = 2_000_000
PLANS = 4096
PIECES = ("apply_call", "schedule_s", "memory_overflow", "fill_plan")


# Without reference counting, like the search's step (mcmc_kernel._run_rounds): the Scratch
# views are cut once, outside the timed loop's pieces.
@numba.njit(_nrt=False)
def _time_piece(piece, plans, kt, mt, repeats, ints, floats, shares):
    """Run `piece` (an index of PIECES) `repeats` times on the Scratch in the buffers,
    which first holds plans[0]; returns a sum of its results (so that nothing is
    optimised away)."""
    scratch = scratch_view(ints, floats, shares, kt)
    fill_plan(plans[0], kt, scratch)
    num_plans, num_calls = plans.shape
    total = 0.0
    for r in range(repeats):
        if piece == 0:
            k = r % num_calls
            apply_call_inline(k, plans[r % num_plans, k], kt, scratch)
        elif piece == 1:
            total += schedule_s(kt, scratch)
        elif piece == 2:
            total += memory_overflow(mt, ints, floats, shares)
        else:
            fill_plan(plans[r % num_plans], kt, scratch)
    return total


def piece_ns(evaluator: FastEvaluator, piece: int, rng: np.random.Generator) -> float:
    """Best of three runs of REPEATS calls of PIECES[piece], nanoseconds per call."""
    kt, mt = evaluator.kernel, evaluator.memory
    plans = np.ascontiguousarray(np.stack([rng.integers(0, s, PLANS)
                                           for s in evaluator.tables.sizes], axis=1)
                                 + evaluator.offset[None, :])
    num_ints, num_floats, num_types = scratch_sizes(kt)
    buffers = (np.empty(num_ints, np.int64), np.empty(num_floats),
               np.empty((num_types, num_types), np.bool_))
    _time_piece(piece, plans, kt, mt, 10, *buffers)     # compile outside the timing
    best_s = np.inf
    for _ in range(3):
        start = time.perf_counter()
        _time_piece(piece, plans, kt, mt, REPEATS, *buffers)
        best_s = min(best_s, time.perf_counter() - start)
    return best_s / REPEATS * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="ppo-70b-h100x128,ppo-70b-h100x1024",
                        help=f"comma-separated, of: {', '.join(CASES)}")
    args = parser.parse_args()
    names = args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; valid: {', '.join(CASES)}")
    for name in names:
        case = CASES[name]
        tables, _ = pruned_tables(full_tables(case.workflow(), cluster_preset(case.cluster),
                                              price_unfit=False), {})
        evaluator = FastEvaluator(tables)
        figures = ", ".join(f"{label} {piece_ns(evaluator, i, np.random.default_rng(0)):.0f} ns"
                            for i, label in enumerate(PIECES))
        print(f"{name}: {figures} (one thread, load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
