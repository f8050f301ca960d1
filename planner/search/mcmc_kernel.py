"""The compiled inner loop of the MCMC search: many Metropolis steps per chain, in parallel.

Random numbers come from a counter-based generator (splitmix64 of seed, chain, step and
slot), so a chain's path depends only on the seed, never on which thread ran it or on how
many rounds one `sweep` runs: same seed, same result. Each step proposes one move (see
planner/search/mcmc.py), which changes one call's candidate, evaluates the new plan
incrementally (planner.search.fast_evaluator.apply_call updates a copy of the chain's
Scratch, which holds its current plan's evaluation state, then fast_evaluator's
schedule_s and, unless the time alone rejects the move, memory_bounds and
memory_overflow), accepts by the Metropolis rule at the chain's temperature (the copy then
becomes the chain's Scratch; a rejected move leaves the chain's own), and remembers the
chain's best feasible plan.

`sweep` takes three bundles besides the evaluator's tables: `Chains` (the chains' state,
updated in place), `MoveTables` (the neighbourhoods, planner.search.mcmc.move_tables) and
`StepSettings`; a step is `_draw`, `_resolve`, `apply_call_inline`, then `_take_step`
(`schedule_s`, `_rejects_from`, `memory_bounds`, `memory_overflow`, `_remember_if_best`,
`_metropolis_accepts`), and a round of steps ends with `_exchange_column` (parallel
tempering). The evaluator's pieces are compiled into the step (apply_call_inline,
schedule_s): a call of a function that takes the KernelTables and a Scratch costs more
than a typical change's work. The memory rule is the exception (fast_evaluator
.memory_bounds and memory_overflow, functions that take less).
"""

from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np

from planner.search import fast_evaluator, kernel_cache
from planner.search.fast_evaluator import (
    apply_call_inline,
    fill_plan,
    memory_bounds,
    memory_overflow,
    schedule_s,
    scratch_sizes,
    scratch_view,
)

# This file's kernels compile in fast_evaluator's: recompile them when it changes.
kernel_cache.depends_on(__file__, fast_evaluator.__file__)

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


# The chains, updated in place by `sweep`; row n of each array belongs to chain n:
# state [chains, calls] (local candidate index per call), energy, temperature, best_time (best
# feasible iteration seconds so far, inf when none), best_choice [chains, calls] (that plan),
# evaluations (count of plans evaluated: every step that changed the plan), decided_on_time
# (how many of those the time alone decided, without the memory rule: `_take_step`),
# decided_on_bounds (how many of the others the memory rule's bounds decided without it).
Chains = namedtuple("Chains", ["state", "energy", "temperature", "best_time", "best_choice",
                               "evaluations", "decided_on_time", "decided_on_bounds"])

# Move neighbourhoods as flat arrays (built by planner.search.mcmc.move_tables):
# - offset, sizes: global index of each call's first candidate, and its candidate count;
# - grouping q of the global candidate i of call k has the members
#   group_perm[q, group_perm_offset[q, k] + group_start[q, i] + j], j < group_size[q, i];
# - placement copy w gives call copy_dst[w] the placement call copy_src[w] has: candidate
#   copy_map[copy_map_offset[w] + local index of copy_src[w]] of copy_dst[w], -1 if none.
MoveTables = namedtuple("MoveTables", [
    "offset", "sizes", "group_perm", "group_perm_offset", "group_start", "group_size",
    "copy_src", "copy_dst", "copy_map_offset", "copy_map"])

# One sweep's settings: the random seed, the first step's number (the random numbers are a
# function of seed, chain and step), the number of rounds (each `swap_every` steps of every
# chain, then an exchange between neighbouring temperatures), the chains per temperature
# (chain j x chains_per_temperature + s has temperature level j), the cost scale of the
# infeasible penalty (energy_of), the cumulative probabilities of the moves MOVE_RANDOM,
# MOVE_SAME_MESH and MOVE_SAME_STYLE (MOVE_COPY_PLACEMENT has the rest), and whether a step
# the time alone or the memory rule's bounds decide skips the rule (`_take_step`; the same
# path either way).
StepSettings = namedtuple("StepSettings", ["seed", "first_step", "num_rounds", "swap_every",
                                           "chains_per_temperature", "scale",
                                           "move_cumulative", "early_rejection"])

# Slots of the random numbers of a step (`uniform`); SLOT_SWAP: the exchange after it.
SLOT_KIND, SLOT_CALL, SLOT_PICK, SLOT_ACCEPT, SLOT_SWAP = 0, 1, 2, 3, 4


@numba.njit(cache=True, parallel=True)
def sweep(chains, moves, steps, kt, mt):
    """Advance every chain by `steps.num_rounds` rounds (`chains` updated in place): in a
    round, each chain takes `swap_every` Metropolis steps, then neighbouring temperature
    levels exchange states (`_exchange_column`).

    An exchange only pairs chains j x per + s and (j + 1) x per + s, one column s of the
    ladder, so one thread runs a whole column through every round without waiting for the
    others: the threads meet once per sweep, not once per round. Each chain of the column
    keeps its evaluation state (a Scratch, in row slot[j] of the column's buffers for level
    j, beside a spare row; an exchange swaps the rows) from one step to the next. `chains`:
    a Chains, `moves`: a MoveTables, `steps`: a StepSettings, `kt` and `mt`: the
    evaluator's KernelTables and MemoryTables."""
    for s in numba.prange(steps.chains_per_temperature):
        _run_column(s, chains, moves, steps, kt, mt)


# A function of its own, not the body of the prange loop: numba's parallel transforms
# (hoisting, fusing array expressions) stay out of it.
@numba.njit(cache=True)
def _run_column(s, chains, moves, steps, kt, mt):
    """Column s of the ladder through every round of a sweep (`sweep`): the buffers of its
    chains' Scratch rows and moves, then `_run_rounds`."""
    temperatures = chains.state.shape[0] // steps.chains_per_temperature
    num_ints, num_floats, num_types = scratch_sizes(kt)
    ints = np.empty((2 * temperatures, num_ints), np.int64)
    floats = np.empty((2 * temperatures, num_floats))
    shares = np.empty((2 * temperatures, num_types, num_types), np.bool_)
    plans = np.empty((temperatures, chains.state.shape[1]), np.int64)
    slot = np.arange(2 * temperatures)
    moved = np.empty((4, temperatures), np.int64)
    picks = np.empty(temperatures)
    _run_rounds(s, ints, floats, shares, plans, slot, moved, picks, chains, moves, steps, kt,
                mt)


# Without reference counting, like fast_evaluator.evaluate_plan (see the note there): the
# chains' Scratch views are cut here once per chain and step, which with counting would
# cost 29 atomic updates each way, and the namedtuples are handed to the pieces per step.
@numba.njit(cache=True, _nrt=False)
def _run_rounds(s, ints, floats, shares, plans, slot, moved, picks, chains, moves, steps,
                kt, mt):
    """The rounds of column s: `plans[j]` and Scratch row `slot[j]` (of `ints`, `floats`,
    `shares`) hold the plan of the chain at temperature level j (filled here), and row
    `slot[levels + j]` is its spare; `moved` and `picks`: work arrays [4, levels] and
    [levels].

    Step by step, each in passes over the column's chains: propose every chain's move,
    apply every move to a copy of its Scratch in its spare row, then price each plan
    and keep its move (the spare becomes the chain's row, `slot` swapped) or leave it (the
    chain's row was not touched). Copying the Scratch (some 2 KB) costs less than undoing
    a move by applying the old candidate again, which most moves needed (rejected).
    The chains are independent within a round (their random numbers depend on seed, chain
    and step only), so this is the order-of-steps-per-chain result bit for bit; the passes
    let the processor overlap the chains' cache misses in the move and candidate tables
    (the candidates of 1,024 devices do not fit in a cache) instead of waiting for each.
    The proposal is itself two passes, `_draw` (random numbers: some hundred instructions a
    chain) and `_resolve` (the move tables' loads), so that the loads of many chains are in
    the processor's window at once. Between proposing and applying, a pass only reads each
    move's new candidate row (`touched`, kept so the reads stay): the column's loads in
    flight at once, where the apply pass met each row's miss alone, one chain's work apart
    (10% of the step's samples at 128 H100 before, on an AMD EPYC VM, perf record on
    2026-12-06)."""
    per = steps.chains_per_temperature
    levels = plans.shape[0]
    state, offset = chains.state, moves.offset
    calls, news, touched, kinds = moved[0], moved[1], moved[2], moved[3]
    for j in range(levels):
        for k in range(plans.shape[1]):       # global candidate indices
            plans[j, k] = state[j * per + s, k] + offset[k]
        fill_plan(plans[j], kt, scratch_view(ints[j], floats[j], shares[j], kt))
    step = steps.first_step
    for _ in range(steps.num_rounds):
        for step_in_round in range(step, step + steps.swap_every):
            for j in range(levels):
                kinds[j], calls[j], picks[j] = _draw(j * per + s, step_in_round,
                                                     plans.shape[1], moves, steps)
            for j in range(levels):
                n = j * per + s
                calls[j], news[j] = _resolve(kinds[j], calls[j], picks[j], plans[j],
                                             state[n], moves)
                if news[j] == state[n, calls[j]]:
                    news[j] = -1                  # no move: nothing to evaluate
            for j in range(levels):
                if news[j] >= 0:
                    touched[j] = kt.lo[offset[calls[j]] + news[j]]
            for j in range(levels):
                if news[j] >= 0:
                    call, r, w = calls[j], slot[j], slot[levels + j]
                    _copy_scratch(ints, floats, shares, r, w)
                    plans[j, call] = offset[call] + news[j]
                    apply_call_inline(call, plans[j, call], kt,
                                      scratch_view(ints[w], floats[w], shares[w], kt))
            for j in range(levels):
                if news[j] >= 0:
                    w = slot[levels + j]
                    if _take_step(j * per + s, plans[j], step_in_round, calls[j], news[j],
                                  ints[w], floats[w], shares[w], chains, moves, steps, kt,
                                  mt):
                        slot[j], slot[levels + j] = w, slot[j]
        step += steps.swap_every
        _exchange_column(s, per, plans, slot, (step // steps.swap_every) % 2, step,
                         chains, steps.seed)


@numba.njit(cache=True, inline="always")
def _copy_scratch(ints, floats, shares, src, dst):
    """Scratch row `dst` := row `src` (element by element: an array assignment may
    allocate, which `_run_rounds`, compiled without numba's runtime, cannot; the booleans
    as bytes, which the compiler copies in vector registers, not one by one)."""
    for i in range(ints.shape[1]):
        ints[dst, i] = ints[src, i]
    for i in range(floats.shape[1]):
        floats[dst, i] = floats[src, i]
    share_bytes = shares.view(np.uint8)
    for x in range(shares.shape[1]):
        for y in range(shares.shape[2]):
            share_bytes[dst, x, y] = share_bytes[src, x, y]


@numba.njit(cache=True, _nrt=False)
def _exchange_column(s, per, plans, slot, parity, step, chains, seed):
    """Exchange the states (and `plans`, their global indices, and `slot`, the rows of their
    evaluation states) of temperature levels
    (j, j + 1), j = parity, parity + 2, ..., in column s of the ladder, each with probability
    min(1, exp((1/T_j - 1/T_j+1) (E_j - E_j+1))), the parallel tempering rule (Swendsen &
    Wang 1986; Geyer 1991); the random number is the lower chain's SLOT_SWAP at `step`."""
    state, energy, temperature = chains.state, chains.energy, chains.temperature
    for j in range(parity, plans.shape[0] - 1, 2):
        a, b = j * per + s, (j + 1) * per + s
        delta = (1.0 / temperature[a] - 1.0 / temperature[b]) * (energy[a] - energy[b])
        if uniform(seed, a, step, SLOT_SWAP) < np.exp(min(0.0, delta)):
            for k in range(plans.shape[1]):
                plans[j, k], plans[j + 1, k] = plans[j + 1, k], plans[j, k]
                state[a, k], state[b, k] = state[b, k], state[a, k]
            energy[a], energy[b] = energy[b], energy[a]
            slot[j], slot[j + 1] = slot[j + 1], slot[j]


# Part of _run_rounds (inlined, so compiled without reference counting as it is).
@numba.njit(cache=True, inline="always")
def _take_step(n, plan, step, call, new, ints, floats, shares, chains, moves, steps, kt,
               mt):
    """The rest of chain n's `step`, after its move (call `call` to local candidate `new`)
    was applied to `plan` (global indices) and to a copy of its evaluation state (the
    Scratch in the buffers `ints`, `floats`, `shares`, fast_evaluator.apply_call): price
    the plan, remember it when it is the chain's best that fits, and keep the move by the
    Metropolis rule or take it back from `plan`; returns whether it was kept (the copy is
    then the chain's evaluation state).

    Early rejection (Solonen et al. 2012, "Efficient MCMC for climate model parameter
    estimation", Bayesian Analysis 7(3), section 3): the energy is at least the iteration
    time (`energy_of`), so when the time alone puts the plan beyond what the step's
    random number accepts (`_rejects_from`) and it is no faster than the chain's best,
    the memory rule cannot change the outcome and is not run. The chain's path and bests
    are the same bit for bit; `chains.decided_on_time` counts these steps.

    Where the time alone does not decide, the step reads the memory rule's bounds first
    (fast_evaluator.memory_bounds): a plan they show to fit needs no overflow (only
    whether it fits matters then: `_remember_if_best`, `energy_of`), and a plan whose
    overflow's lower bound already gives an energy the random number rejects is rejected
    without the rule (the argument above: the energy only grows with the overflow). Only
    the other plans run the memory rule; `chains.decided_on_bounds` counts the ones the
    bounds decide. Like early rejection, and with it (`steps.early_rejection`), the bounds
    leave the chain's path and bests the same bit for bit."""
    state, offset = chains.state, moves.offset
    scratch = scratch_view(ints, floats, shares, kt)
    r_accept = uniform(steps.seed, n, step, SLOT_ACCEPT)
    time_s = schedule_s(kt, scratch)
    chains.evaluations[n] += 1
    if steps.early_rejection and time_s >= chains.best_time[n] and _rejects_from(
            chains.energy[n], time_s, chains.temperature[n], r_accept):
        chains.decided_on_time[n] += 1
        accepted = False
    else:
        accepted = _priced_step_accepts(n, plan, time_s, r_accept, ints, floats, shares,
                                        chains, moves, steps, mt)
        if accepted:
            state[n, call] = new
    if not accepted:
        plan[call] = offset[call] + state[n, call]
    return accepted


@numba.njit(cache=True, inline="always")
def _priced_step_accepts(n, plan, time_s, r_accept, ints, floats, shares, chains, moves,
                         steps, mt):
    """Whether chain n keeps the plan `plan` (its move applied; `time_s` seconds per
    iteration), by its memory (`_take_step`); remembers it when it is the chain's best that
    fits, and sets the chain's energy when it is kept."""
    energy, temperature = chains.energy[n], chains.temperature[n]
    fits = False
    if steps.early_rejection:
        fits, lower = memory_bounds(mt, ints, floats, shares)
        if fits:
            chains.decided_on_bounds[n] += 1
        elif lower > 0.0 and _rejects_from(energy, energy_of(time_s, lower, steps.scale),
                                           temperature, r_accept):
            chains.decided_on_bounds[n] += 1
            return False              # it overflows by at least `lower`: rejected at that
    overflow = 0.0 if fits else memory_overflow(mt, ints, floats, shares)
    _remember_if_best(n, plan, time_s, overflow, chains, moves.offset)
    proposed = energy_of(time_s, overflow, steps.scale)
    if _metropolis_accepts(energy, proposed, temperature, r_accept):
        chains.energy[n] = proposed
        return True
    return False


# Below this margin (in log space) an early rejection leaves room for the rounding of exp
# and of the energy's sum (a relative 1e-9 against errors of ~1e-16).
EARLY_REJECTION_MARGIN = 1e-9


@numba.njit(cache=True, inline="always")
def _rejects_from(energy, floor, temperature, r_accept):
    """`_metropolis_accepts` rejects every proposed energy of at least `floor` (an iteration
    time, or the energy of a lower bound of the overflow): the log of its acceptance ratio
    at `floor`, (energy - floor) / temperature, which only falls as the energy grows, is
    below log(r_accept) by EARLY_REJECTION_MARGIN (so exp of it is below r_accept, and it
    is negative)."""
    delta = (energy - floor) / temperature
    return delta < 0.0 and delta < np.log(r_accept) - EARLY_REJECTION_MARGIN


@numba.njit(cache=True, inline="always")
def _draw(n, step, num_calls, moves, steps):
    """(kind, index, r_pick) of chain n's move at `step`, from its random numbers alone (no
    table beyond the move kinds' probabilities): the move kind, the call it changes (for a
    placement copy, the copy), and the number that picks the candidate (`_resolve`)."""
    r_kind = uniform(steps.seed, n, step, SLOT_KIND)
    r_call = uniform(steps.seed, n, step, SLOT_CALL)
    r_pick = uniform(steps.seed, n, step, SLOT_PICK)
    num_copies = moves.copy_src.shape[0]
    kind = _move_kind(r_kind, steps.move_cumulative, num_copies)
    if kind == MOVE_COPY_PLACEMENT:
        return kind, _pick(r_call, num_copies), r_pick
    return kind, _pick(r_call, num_calls), r_pick


@numba.njit(cache=True, inline="always")
def _resolve(kind, index, r_pick, plan, local, moves):
    """(call, new local candidate index) of a move drawn by `_draw`, from the chain's plan
    (global indices `plan`, local indices `local`) and the move tables; the index is -1
    when a placement copy finds no candidate with that placement."""
    if kind == MOVE_COPY_PLACEMENT:
        return moves.copy_dst[index], moves.copy_map[moves.copy_map_offset[index]
                                                     + local[moves.copy_src[index]]]
    if kind == MOVE_RANDOM:
        return index, _pick(r_pick, moves.sizes[index])
    return index, _group_member(kind - MOVE_SAME_MESH, index, plan[index], r_pick, moves)


@numba.njit(cache=True, inline="always")
def _move_kind(r_kind, move_cumulative, num_copies):
    """The move drawn by `r_kind`; a random candidate instead of a placement copy when the
    workflow has no two calls of one model."""
    kind = 0
    while kind < MOVE_COPY_PLACEMENT and r_kind >= move_cumulative[kind]:
        kind += 1
    if kind == MOVE_COPY_PLACEMENT and num_copies == 0:
        return MOVE_RANDOM
    return kind


@numba.njit(cache=True, inline="always")
def _pick(r, count):
    """An index in [0, count) drawn by the uniform number `r`."""
    return min(int(r * count), count - 1)


@numba.njit(cache=True, inline="always")
def _group_member(grouping, call, current, r_pick, moves):
    """A local index of `call` drawn by `r_pick` from the group (of `grouping`) of its
    current candidate (global index `current`), itself included (MoveTables comment)."""
    pick = _pick(r_pick, moves.group_size[grouping, current])
    return moves.group_perm[grouping, moves.group_perm_offset[grouping, call]
                            + moves.group_start[grouping, current] + pick]


@numba.njit(cache=True, inline="always")
def _metropolis_accepts(energy, proposed, temperature, r_accept):
    """Accept a move from `energy` to `proposed` with probability
    min(1, exp((energy - proposed) / temperature)) (Metropolis et al. 1953)."""
    delta = (energy - proposed) / temperature
    return delta >= 0.0 or r_accept < np.exp(delta)


@numba.njit(cache=True, inline="always")
def _remember_if_best(n, plan, time_s, overflow, chains, offset):
    """Keep `plan` (global indices) as chain n's best when it fits and beats its best time."""
    if overflow <= 0.0 and time_s < chains.best_time[n]:
        chains.best_time[n] = time_s
        for k in range(plan.shape[0]):
            chains.best_choice[n, k] = plan[k] - offset[k]
