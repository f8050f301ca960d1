"""Where an MCMC step's time goes: nanoseconds of each piece of the compiled evaluator.

For each case of benchmarks/search_speed.py, builds the search tables as `plan search`
does, then times, on one thread, the pieces a Metropolis step runs
(planner/search/mcmc_kernel.py `_take_step`) on random plans of those tables:

    apply_call      apply one call's new candidate to the evaluation state (a step runs it
                    once, on a copy of the chain's state: a rejected move leaves the
                    chain's own, mcmc_kernel._run_rounds)
    schedule_s      the iteration time of the held plan (every step)
    memory_bounds   the memory rule's bounds (the steps the time alone does not decide)
    memory_overflow the memory rule (the steps neither the time nor the bounds decide)
    fill_plan       load a whole plan (once per chain and sweep; for comparison)

The two memory pieces are timed twice, each on MEMORY_PLANS plans: random plans, which at
70B mostly do not fit, and random plans that fit, which is most of what the MCMC's chains
see (fast_evaluator.memory_bounds says how many; search_speed.py prints the share of
plans the bounds decide). Each figure
is the best of three runs of REPEATS calls, in nanoseconds per call; the loop itself is
compiled with the pieces (no Python between calls). With the share of steps the time alone
decides (search_speed.py prints it), these give a step's cost: the state's copy + apply +
schedule + bounds x (1 - decided on time) + memory x (1 - decided on time - decided on
bounds).

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
    memory_bounds,
    memory_overflow,
    schedule_s,
    scratch_sizes,
    scratch_view,
)

REPEATS = 2_000_000
PLANS = 4096
PIECES = ("apply_call", "schedule_s", "memory_bounds", "memory_overflow", "fill_plan")
MEMORY_PIECES = (2, 3)
# The memory pieces read one Scratch per plan (`_time_piece`): this many plans' Scratches
# (~1.7 kB each at 128 GPUs) stay in a core's cache, as a chain's own Scratch does in the
# search, so the figure is the rule's work, not the memory's latency.
MEMORY_PLANS = 256


# Without reference counting, like the search's step (mcmc_kernel._run_rounds): the Scratch
# views are cut once per call, outside the pieces.
@numba.njit(_nrt=False)
def _time_piece(piece, plans, kt, mt, repeats, ints, floats, shares):
    """Run `piece` (an index of PIECES) `repeats` times; returns a sum of its results (so
    that nothing is optimised away). Row n of the Scratch buffers `ints`, `floats`,
    `shares` holds plans[n] (filled here first): apply_call, schedule_s and fill_plan work
    on row 0, the memory pieces read the rows in turn."""
    num_plans, num_calls = plans.shape
    for n in range(num_plans):
        fill_plan(plans[n], kt, scratch_view(ints[n], floats[n], shares[n], kt))
    scratch = scratch_view(ints[0], floats[0], shares[0], kt)
    total = 0.0
    for r in range(repeats):
        n = r % num_plans
        if piece == 0:
            k = r % num_calls
            apply_call_inline(k, plans[n, k], kt, scratch)
        elif piece == 1:
            total += schedule_s(kt, scratch)
        elif piece == 2:
            total += memory_bounds(mt, ints[n], floats[n], shares[n])[1]
        elif piece == 3:
            total += memory_overflow(mt, ints[n], floats[n], shares[n])
        else:
            fill_plan(plans[n], kt, scratch)
    return total


def random_plans(evaluator: FastEvaluator, rng: np.random.Generator) -> np.ndarray:
    """PLANS random plans (global candidate indices)."""
    return np.ascontiguousarray(np.stack([rng.integers(0, s, PLANS)
                                          for s in evaluator.tables.sizes], axis=1)
                                + evaluator.offset[None, :])


def piece_ns(evaluator: FastEvaluator, piece: int, plans: np.ndarray) -> float:
    """Best of three runs of REPEATS calls of PIECES[piece] on `plans`, nanoseconds per
    call."""
    kt, mt = evaluator.kernel, evaluator.memory
    num_ints, num_floats, num_types = scratch_sizes(kt)
    buffers = (np.empty((len(plans), num_ints), np.int64), np.empty((len(plans), num_floats)),
               np.empty((len(plans), num_types, num_types), np.bool_))
    _time_piece(piece, plans, kt, mt, 10, *buffers)     # compile outside the timing
    best_s = np.inf
    for _ in range(3):
        start = time.perf_counter()
        _time_piece(piece, plans, kt, mt, REPEATS, *buffers)
        best_s = min(best_s, time.perf_counter() - start - _fill_s(plans, kt, mt, buffers))
    return best_s / REPEATS * 1e9


def _fill_s(plans: np.ndarray, kt, mt, buffers) -> float:
    """Seconds `_time_piece` takes to fill its rows (taken off the piece's time)."""
    start = time.perf_counter()
    _time_piece(0, plans, kt, mt, 0, *buffers)
    return time.perf_counter() - start


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
        plans = random_plans(evaluator, np.random.default_rng(0))
        fitting = plans[evaluator.evaluate(plans - evaluator.offset[None, :]).feasible]
        figures = []
        for i, label in enumerate(PIECES):
            if i not in MEMORY_PIECES:
                figures.append(f"{label} {piece_ns(evaluator, i, plans):.0f} ns")
                continue
            figure = f"{label} {piece_ns(evaluator, i, plans[:MEMORY_PLANS]):.0f} ns"
            if len(fitting):
                figure += (f" (on plans that fit "
                           f"{piece_ns(evaluator, i, fitting[:MEMORY_PLANS]):.0f} ns)")
            figures.append(figure)
        print(f"{name}: {', '.join(figures)}; {len(fitting)} of {len(plans)} random plans fit "
              f"(one thread, load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
