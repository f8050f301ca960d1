"""Markov chain Monte Carlo over plans: parallel tempering with many chains, compiled.

State: one candidate index per call, for each of `chains_per_temperature x temperatures`
chains. A step proposes one of four moves: a new random candidate for one call; another
layout on the same mesh for one call; the same tp, pp and micro-batches on another mesh for
one call (moving it, with dp following the mesh size); or giving a call the placement its
model has in another call (which removes a reallocation). Metropolis acceptance at the chain's
temperature runs inside the compiled kernel (planner/search/mcmc_kernel.py); every `swap_every`
steps, neighbouring temperatures exchange states (parallel tempering), in the kernel too, which
runs STEPS_PER_SWEEP steps per call. Temperatures are set relative to the cost scale (the
median cost of the starting plans that fit), from `0.0005x` to `0.05x`, so a 0.5% worse
plan is accepted often at the top of the ladder and rarely at the bottom. Half the chains of
every temperature start from the seed plans (the baselines).

Infeasible plans get energy = time + scale x (1 + 10 x relative memory overflow), so chains
drift towards plans that fit; only feasible plans are kept as results.

Stopping: after `max_steps`, at `time_limit_s`, when `should_stop()` says so (Ctrl-C), or
when the best has not improved for `plateau_steps` steps. Same seed and same stopping step
give the same plan; a time limit that cuts a run short can make two runs differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from planner.search.fast_evaluator import FastEvaluator
from planner.search.mcmc_kernel import (
    Chains,
    MoveTables,
    StepSettings,
    energy_of,
    sweep,
)
from planner.search.tables import SearchTables

MOVE_PROBABILITIES = (0.2, 0.3, 0.3, 0.2)   # random, same mesh, same style, copy placement
# Steps of every chain per call of the compiled sweep: the chains' bests are read, the
# stopping rules checked and the progress reported between calls. Fewer calls cost less
# Python and fewer meetings of the threads (at 5 steps per call, PPO 70B/7B on 128 H100
# ran 565,000 evaluations per CPU-second inside the search against 745,000 for the bare
# evaluator, on two cores); more make the stopping coarser (a call takes ~0.06 s there
# and ~0.2 s on 1,024 devices, with 2,048 chains on two cores).
STEPS_PER_SWEEP = 50


@dataclass
class MCMCSettings:
    seed: int = 0
    temperatures: int = 8
    chains_per_temperature: int = 256
    lowest_relative_temperature: float = 0.0005
    highest_relative_temperature: float = 0.05
    swap_every: int = 5
    max_steps: int = 1_000_000
    plateau_steps: int = 2000
    time_limit_s: float = 60.0
    top_k: int = 16                     # distinct best plans kept for exact re-pricing
    # skip the memory rule where the time alone rejects a move or the rule's bounds decide
    # it (mcmc_kernel._take_step; the chains' paths are the same without it, only slower)
    early_rejection: bool = True


@dataclass
class MCMCResult:
    best_choice: np.ndarray | None
    best_iteration_s: float
    top_choices: list[np.ndarray]       # distinct feasible plans, best first
    evaluations: int
    steps: int
    wall_s: float
    stopped_by: str
    history: list[tuple[float, float]] = field(default_factory=list)  # (wall_s, best)
    # of the evaluations, those the iteration time alone decided (early rejection,
    # mcmc_kernel._take_step), and of the others those the memory rule's bounds decided:
    # the memory rule did not run for them
    decided_on_time: int = 0
    decided_on_bounds: int = 0


def style_key(call) -> np.ndarray:
    """Per candidate of `call` (a CallTable): an id of its (tp, pp, micro-batches), ordered
    as those triples are, lexicographically."""
    return _lexicographic_key((call.tp, call.pp, call.micro_batches))


def mesh_key(call) -> np.ndarray:
    """Per candidate of `call`: an id of its mesh (meshes are contiguous device ranges),
    ordered as the (lo, hi) pairs are."""
    return _lexicographic_key((call.lo, call.hi))


def _lexicographic_key(columns: tuple[np.ndarray, ...]) -> np.ndarray:
    """One int64 per row of the non-negative integer `columns`, ordered as the rows are
    lexicographically (mixed radix, each digit's base one above its column's largest value):
    a sort of one integer column instead of np.unique over rows (10-20x faster on the
    hundreds of thousands of candidates of a 1,024-device call)."""
    key = np.zeros(len(columns[0]), dtype=np.int64)
    for column in columns:
        column = np.asarray(column, dtype=np.int64)
        key = key * (int(column.max(initial=0)) + 1) + column
    return key


GROUPINGS = (mesh_key, style_key)   # the kernel's groupings 0 and 1


def move_tables(evaluator: FastEvaluator) -> MoveTables:
    """The kernel's move neighbourhoods for `evaluator`'s tables (MoveTables in
    planner/search/mcmc_kernel.py says how to read them)."""
    tables = evaluator.tables
    group_perm, group_perm_offset, group_start, group_size = _group_arrays(
        tables, evaluator.offset)
    copy_src, copy_dst, copy_map_offset, copy_map = _copy_arrays(tables)
    return MoveTables(offset=evaluator.offset, sizes=tables.sizes, group_perm=group_perm,
                      group_perm_offset=group_perm_offset, group_start=group_start,
                      group_size=group_size, copy_src=copy_src, copy_dst=copy_dst,
                      copy_map_offset=copy_map_offset, copy_map=copy_map)


def _group_arrays(tables: SearchTables, offset: np.ndarray) -> tuple[np.ndarray, ...]:
    """(group_perm, group_perm_offset, group_start, group_size): per grouping of GROUPINGS,
    the candidates of every call sorted by group (stably), and per candidate where its
    group starts in that order and how many members it has. int32 (local indices and
    counts of one call), half the bytes of int64: on 1,024 devices these tables are larger
    than the caches, and every move reads them at a random candidate."""
    total = int(tables.sizes.sum())
    shape = (len(GROUPINGS), total)
    group_perm, group_start, group_size = (np.zeros(shape, dtype=np.int32) for _ in range(3))
    group_perm_offset = np.zeros((len(GROUPINGS), len(tables.calls)), dtype=np.int64)
    for q, key_of in enumerate(GROUPINGS):
        for k, call in enumerate(tables.calls):
            # members of a group in candidate order (a stable sort by group id)
            key = key_of(call)
            order = np.argsort(key, kind="stable")
            ordered = key[order]
            first_of_group = np.ones(len(key), dtype=bool)
            first_of_group[1:] = ordered[1:] != ordered[:-1]
            group = np.empty(len(key), dtype=np.int64)
            group[order] = np.cumsum(first_of_group) - 1
            counts = np.bincount(group)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            first = offset[k]
            span = slice(first, first + len(call))
            group_perm_offset[q, k] = first
            group_perm[q, span] = order
            group_start[q, span] = starts[group]
            group_size[q, span] = counts[group]
    return group_perm, group_perm_offset, group_start, group_size


def _copy_arrays(tables: SearchTables) -> tuple[np.ndarray, ...]:
    """(copy_src, copy_dst, copy_map_offset, copy_map): one placement copy per ordered pair
    of distinct calls of one model, mapping each candidate of the source call to the first
    candidate of the destination call with the same placement (-1 when there is none;
    int32, as the group arrays)."""
    copy_src, copy_dst, copy_offset, copy_map = [], [], [], []
    calls = tables.calls
    for a, ca in enumerate(calls):
        for b, cb in enumerate(calls):
            if a == b or ca.model != cb.model:
                continue
            ids, first = np.unique(cb.placement, return_index=True)
            at = np.minimum(np.searchsorted(ids, ca.placement), max(len(ids) - 1, 0))
            found = (ids[at] == ca.placement) if len(ids) else np.zeros(len(ca), dtype=bool)
            copy_src.append(a)
            copy_dst.append(b)
            copy_offset.append(sum(len(m) for m in copy_map))
            copy_map.append(np.where(found, first[at] if len(ids) else -1, -1))
    return (np.array(copy_src, dtype=np.int64), np.array(copy_dst, dtype=np.int64),
            np.array(copy_offset, dtype=np.int64),
            (np.concatenate(copy_map) if copy_map else np.zeros(0)).astype(np.int32))


def compiled_in_this_process() -> bool:
    """Whether this process compiled any of the search's kernels (planner/search/
    fast_evaluator.py, mcmc_kernel.py) instead of loading them from numba's cache: the first
    search on a machine (or after their code changed) does, which takes about a minute on 2
    cores and counts against `plan search --time-limit`."""
    from planner.search import fast_evaluator, mcmc_kernel
    dispatchers = [f for module in (fast_evaluator, mcmc_kernel)
                   for f in vars(module).values() if hasattr(f, "stats")
                   and hasattr(f.stats, "cache_misses")]
    return any(sum(f.stats.cache_misses.values()) for f in dispatchers)


def warm_up(evaluator: FastEvaluator) -> MoveTables:
    """Compile (or load from numba's cache) the kernels with a one-step run of four chains,
    so that the search's clock and its evaluations-per-second figure exclude the one-time
    compilation; returns the move tables it built, for `run_mcmc` to reuse."""
    moves = move_tables(evaluator)
    run_mcmc(evaluator, [], MCMCSettings(temperatures=2, chains_per_temperature=2,
                                         max_steps=1, swap_every=1), moves=moves)
    return moves


def run_mcmc(evaluator: FastEvaluator, seeds: list[np.ndarray], settings: MCMCSettings,
             progress: Callable[[int, float, float], None] | None = None,
             should_stop: Callable[[], bool] | None = None,
             moves: MoveTables | None = None) -> MCMCResult:
    """Parallel-tempering MCMC from `seeds` (feasible plans) plus random plans; `moves`:
    `move_tables(evaluator)` when the caller has them (warm_up returns them)."""
    start = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    moves = move_tables(evaluator) if moves is None else moves
    temps, per = settings.temperatures, settings.chains_per_temperature
    n = temps * per
    state = np.stack([(rng.random(n) * size).astype(np.int64) for size in moves.sizes], axis=1)
    if seeds:
        for j in range(temps):
            for s in range(per // 2):
                state[j * per + s] = seeds[s % len(seeds)]
    first = evaluator.evaluate(state)
    feasible = first.feasible
    scale = float(np.median(first.iteration_s[feasible] if feasible.any()
                            else first.iteration_s))
    ladder = scale * np.geomspace(settings.lowest_relative_temperature,
                                  settings.highest_relative_temperature, temps)
    temperature = np.repeat(ladder, per)           # chain c has temperature index c // per
    energy = np.array([energy_of(t, o, scale) for t, o in zip(first.iteration_s, first.overflow)])
    best_time = np.where(feasible, first.iteration_s, np.inf)
    best_choice = state.copy()
    evaluations = np.zeros(n, dtype=np.int64)
    chains = Chains(state=state, energy=energy, temperature=temperature, best_time=best_time,
                    best_choice=best_choice, evaluations=evaluations,
                    decided_on_time=np.zeros(n, dtype=np.int64),
                    decided_on_bounds=np.zeros(n, dtype=np.int64))
    top: dict[tuple, float] = {}
    _remember(top, best_time, best_choice, np.ones(n, dtype=bool), settings.top_k)
    best = min(top.values()) if top else np.inf
    history = [(time.perf_counter() - start, best)]
    cumulative = np.cumsum(MOVE_PROBABILITIES)
    rounds_per_sweep = max(1, STEPS_PER_SWEEP // settings.swap_every)
    step, last_improvement, stopped_by = 0, 0, "max_steps"
    while step < settings.max_steps:
        before = best_time.copy()
        rounds = min(rounds_per_sweep, -(-(settings.max_steps - step) // settings.swap_every))
        sweep(chains, moves, StepSettings(seed=settings.seed, first_step=step,
                                          num_rounds=rounds, swap_every=settings.swap_every,
                                          chains_per_temperature=per, scale=scale,
                                          move_cumulative=cumulative,
                                          early_rejection=settings.early_rejection),
              evaluator.kernel, evaluator.memory)
        step += rounds * settings.swap_every
        _remember(top, best_time, best_choice, best_time < before, settings.top_k)
        if top and min(top.values()) < best * (1 - 1e-9):
            best = min(top.values())
            last_improvement = step
            history.append((time.perf_counter() - start, best))
        elapsed = time.perf_counter() - start
        if progress is not None:
            progress(int(n + evaluations.sum()), elapsed, best)
        if step - last_improvement >= settings.plateau_steps:
            stopped_by = "plateau"
            break
        if elapsed >= settings.time_limit_s:
            stopped_by = "time_limit"
            break
        if should_stop is not None and should_stop():
            stopped_by = "interrupted"
            break
    ranked = sorted(top, key=lambda plan: (top[plan], plan))[: settings.top_k]
    top_choices = [np.array(key, dtype=np.int64) for key in ranked]
    return MCMCResult(best_choice=top_choices[0] if top_choices else None,
                      best_iteration_s=best, top_choices=top_choices,
                      evaluations=int(n + evaluations.sum()), steps=step,
                      wall_s=time.perf_counter() - start, stopped_by=stopped_by,
                      history=history, decided_on_time=int(chains.decided_on_time.sum()),
                      decided_on_bounds=int(chains.decided_on_bounds.sum()))


def _remember(top: dict[tuple, float], best_time: np.ndarray, best_choice: np.ndarray,
              changed: np.ndarray, top_k: int) -> None:
    """Add the chains' improved bests to the distinct top plans (keeps at most 4 x top_k).
    Plans of equal time rank by their candidate indices, so the best plan does not depend
    on how often the chains' bests are read (a chain that reaches the least time keeps that
    plan, and every chain that does is read)."""
    for i in np.flatnonzero(changed & np.isfinite(best_time)):
        top[tuple(int(x) for x in best_choice[i])] = float(best_time[i])
    if len(top) > 4 * top_k:
        for key in sorted(top, key=lambda plan: (top[plan], plan))[top_k:]:
            del top[key]


def merged_result(results: list[MCMCResult]) -> MCMCResult:
    """Several runs (one per staleness, planner.search.pipeline) as one summary: the
    evaluations, steps and seconds summed, the best of the run with the least best time
    (its choices index the same tables), the stopping reasons in run order without
    repeats, and the histories one after another on one clock."""
    best = min(results, key=lambda r: r.best_iteration_s)
    history, offset_s = [], 0.0
    for r in results:
        history += [(offset_s + t, b) for t, b in r.history]
        offset_s += r.wall_s
    reasons = list(dict.fromkeys(r.stopped_by for r in results))
    return MCMCResult(best_choice=best.best_choice, best_iteration_s=best.best_iteration_s,
                      top_choices=best.top_choices,
                      evaluations=sum(r.evaluations for r in results),
                      steps=sum(r.steps for r in results),
                      wall_s=sum(r.wall_s for r in results),
                      stopped_by=", ".join(reasons), history=history,
                      decided_on_time=sum(r.decided_on_time for r in results),
                      decided_on_bounds=sum(r.decided_on_bounds for r in results))
