"""The compiled inner loop of the MCMC search: many Metropolis steps per chain, in parallel.

Random numbers come from a counter-based generator (splitmix64 of seed, chain, step and
slot), so a chain's path depends only on the seed, never on which thread ran it: same seed,
same result. Each step proposes one move (see planner/search/mcmc.py), evaluates the plan with
planner.search.fast_evaluator.evaluate_plan, accepts by the Metropolis rule at the chain's
temperature, and remembers the chain's best feasible plan.
"""

from __future__ import annotations

import numba
import numpy as np

from planner.search.fast_evaluator import evaluate_plan, new_scratch

# Moves: a random candidate; a candidate of the same group (grouping 0: the same mesh,
# grouping 1: the same tp, pp and micro-batches on any mesh); a placement copied from
# another call of the same model.
MOVE_RANDOM, MOVE_SAME_MESH, MOVE_SAME_STYLE, MOVE_COPY_PLACEMENT = 0, 1, 2, 3
INFEASIBLE_OVERFLOW_WEIGHT = 10.0

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / 9007199254740992.0     # 2**-53


@numba.njit(cache=True, inline="always")
def _mix(z):
    """splitmix64 finaliser (Steele, Lea & Flood 2014)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def uniform(seed, chain, step, slot):
    """A uniform number in [0, 1) determined by (seed, chain, step, slot)."""
    z = _mix(np.uint64(seed) ^ _mix(np.uint64(chain) ^ _mix(np.uint64(step)
                                                           ^ _mix(np.uint64(slot)))))
    return float(z >> np.uint64(11)) * _TO_UNIT


@numba.njit(cache=True, inline="always")
def energy_of(time_s, overflow, scale):
    """Feasible: the time. Infeasible: time + scale x (1 + 10 x relative overflow)."""
    if overflow <= 0.0:
        return time_s
    return time_s + scale * (1.0 + INFEASIBLE_OVERFLOW_WEIGHT * overflow)


@numba.njit(cache=True, parallel=True)
def sweep(state, energy, temperature, best_time, best_choice, evaluations, seed, first_step,
          num_steps, scale, move_cumulative, offset, sizes, group_perm, group_perm_offset,
          group_start, group_size, copy_src, copy_dst, copy_map_offset, copy_map, kt):
    """Advance every chain by `num_steps` Metropolis steps (arrays updated in place)."""
    num_chains, num_calls = state.shape
    num_copies = copy_src.shape[0]
    for n in numba.prange(num_chains):
        g = state[n] + offset
        int_scratch, float_scratch = new_scratch(num_calls, kt)
        for s in range(num_steps):
            step = first_step + s
            r_kind = uniform(seed, n, step, 0)
            r_call = uniform(seed, n, step, 1)
            r_pick = uniform(seed, n, step, 2)
            r_accept = uniform(seed, n, step, 3)
            kind = 0
            while kind < MOVE_COPY_PLACEMENT and r_kind >= move_cumulative[kind]:
                kind += 1
            if kind == MOVE_COPY_PLACEMENT and num_copies == 0:
                kind = MOVE_RANDOM
            if kind == MOVE_COPY_PLACEMENT:
                w = min(int(r_call * num_copies), num_copies - 1)
                call = copy_dst[w]
                new = copy_map[copy_map_offset[w] + state[n, copy_src[w]]]
                if new < 0:
                    continue
            else:
                call = min(int(r_call * num_calls), num_calls - 1)
                if kind == MOVE_RANDOM:
                    new = min(int(r_pick * sizes[call]), sizes[call] - 1)
                else:
                    grouping = kind - MOVE_SAME_MESH
                    gi = g[call]
                    size = group_size[grouping, gi]
                    pick = min(int(r_pick * size), size - 1)
                    new = group_perm[grouping, group_perm_offset[grouping, call]
                                     + group_start[grouping, gi] + pick]
            old = state[n, call]
            if new == old:
                continue
            g[call] = offset[call] + new
            time_s, overflow = evaluate_plan(g, kt, int_scratch, float_scratch)
            evaluations[n] += 1
            proposed = energy_of(time_s, overflow, scale)
            if overflow <= 0.0 and time_s < best_time[n]:
                best_time[n] = time_s
                for k in range(num_calls):
                    best_choice[n, k] = g[k] - offset[k]
            delta = (energy[n] - proposed) / temperature[n]
            if delta >= 0.0 or r_accept < np.exp(delta):
                state[n, call] = new
                energy[n] = proposed
            else:
                g[call] = offset[call] + old
