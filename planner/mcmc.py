"""Markov chain Monte Carlo over plans: parallel tempering with many chains as arrays.

State: one candidate index per call, for each of `chains_per_temperature x temperatures`
chains. A step proposes, for every chain at once, one of three moves: a new random
candidate for one call; a candidate on the same mesh (another layout) for one call; or giving
a call the placement its model already has in another call (which removes a reallocation).
Metropolis acceptance at the chain's temperature; every `swap_every` steps, neighbouring
temperatures exchange states (parallel tempering). Temperatures are set relative to the cost
scale (the median cost of the seed plans), from `0.0005x` to `0.05x`, so a 0.5% worse plan is
accepted often at the top of the ladder and rarely at the bottom.

Infeasible plans get energy = time + scale x (1 + 10 x relative memory overflow), so chains
drift towards plans that fit; only feasible plans are kept as results.

Stopping: after `max_steps`, at `time_limit_s`, or when the best has not improved for
`plateau_steps` steps. Same seed and same stopping step give the same plan; a time limit that
cuts a run short can make two runs differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from planner.fast_evaluator import FastEvaluator

MOVE_RANDOM, MOVE_SAME_MESH, MOVE_COPY_PLACEMENT = 0, 1, 2
MOVE_PROBABILITIES = (0.45, 0.35, 0.20)
INFEASIBLE_OVERFLOW_WEIGHT = 10.0


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


class _MoveTables:
    """Precomputed neighbourhoods: same-mesh groups and placement copies between calls."""

    def __init__(self, evaluator: FastEvaluator):
        tables = evaluator.tables
        self.sizes = tables.sizes
        self.same_mesh: list[list[np.ndarray]] = []
        self.mesh_group: list[np.ndarray] = []
        for call in tables.calls:
            keys = {}
            group = np.array([keys.setdefault(e.devices, len(keys)) for e in call.executions])
            self.mesh_group.append(group)
            self.same_mesh.append([np.flatnonzero(group == g) for g in range(len(keys))])
        # copy_to[(a, b)][i] = candidate of call b with the placement of candidate i of a.
        self.copy_pairs: list[tuple[int, int, np.ndarray]] = []
        calls = tables.calls
        for a, ca in enumerate(calls):
            for b, cb in enumerate(calls):
                if a == b or ca.model != cb.model:
                    continue
                where = {}
                for j, p in enumerate(cb.placement):
                    where.setdefault(int(p), j)
                mapping = np.array([where.get(int(p), -1) for p in ca.placement])
                self.copy_pairs.append((a, b, mapping))


def _propose(state: np.ndarray, moves: _MoveTables, rng: np.random.Generator) -> np.ndarray:
    n, num_calls = state.shape
    proposal = state.copy()
    kind = rng.choice(3, size=n, p=MOVE_PROBABILITIES)
    call = rng.integers(0, num_calls, size=n)
    rows = np.arange(n)
    random_pick = (rng.random(n) * moves.sizes[call]).astype(np.int64)
    proposal[rows, call] = np.where(kind == MOVE_RANDOM, random_pick, proposal[rows, call])
    for k in range(num_calls):
        chosen = np.flatnonzero((kind == MOVE_SAME_MESH) & (call == k))
        if chosen.size:
            groups = moves.mesh_group[k][state[chosen, k]]
            for g in np.unique(groups):
                members = moves.same_mesh[k][g]
                hit = chosen[groups == g]
                proposal[hit, k] = members[rng.integers(0, members.size, size=hit.size)]
    if moves.copy_pairs:
        copying = np.flatnonzero(kind == MOVE_COPY_PLACEMENT)
        which = rng.integers(0, len(moves.copy_pairs), size=copying.size)
        for w, (a, b, mapping) in enumerate(moves.copy_pairs):
            hit = copying[which == w]
            target = mapping[state[hit, a]]
            ok = target >= 0
            proposal[hit[ok], b] = target[ok]
    return proposal


def _energy(result, scale: float) -> np.ndarray:
    penalty = scale * (1.0 + INFEASIBLE_OVERFLOW_WEIGHT * np.maximum(result.overflow, 0.0))
    return np.where(result.feasible, result.iteration_s, result.iteration_s + penalty)


def run_mcmc(evaluator: FastEvaluator, seeds: list[np.ndarray], settings: MCMCSettings,
             progress: Callable[[int, float, float], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> MCMCResult:
    """Parallel-tempering MCMC from `seeds` (feasible plans first) plus random plans."""
    rng = np.random.default_rng(settings.seed)
    moves = _MoveTables(evaluator)
    temps, per = settings.temperatures, settings.chains_per_temperature
    n = temps * per
    start = time.perf_counter()
    state = np.stack([(rng.random(n) * size).astype(np.int64) for size in moves.sizes], axis=1)
    if seeds:   # half the chains of every temperature start from the seed plans
        for j in range(temps):
            for s in range(per // 2):
                state[j * per + s] = seeds[s % len(seeds)]
    result = evaluator.evaluate(state)
    evaluations = n
    feasible = result.feasible
    scale = float(np.median(result.iteration_s[feasible])) if feasible.any() else \
        float(np.median(result.iteration_s))
    ladder = scale * np.geomspace(settings.lowest_relative_temperature,
                                  settings.highest_relative_temperature, temps)
    temperature = np.repeat(ladder, per)       # chain c has temperature index c // per
    energy = _energy(result, scale)
    top: dict[tuple, float] = {}

    def remember(states: np.ndarray, res) -> None:
        ok = np.flatnonzero(res.feasible)
        if ok.size == 0:
            return
        order = ok[np.argsort(res.iteration_s[ok])[: settings.top_k]]
        for i in order:
            top[tuple(states[i])] = float(res.iteration_s[i])
        if len(top) > 4 * settings.top_k:
            for key in sorted(top, key=top.get)[settings.top_k:]:
                del top[key]

    remember(state, result)
    best = min(top.values()) if top else np.inf
    history = [(time.perf_counter() - start, best)]
    last_improvement, step, stopped_by = 0, 0, "max_steps"
    while step < settings.max_steps:
        step += 1
        proposal = _propose(state, moves, rng)
        proposed = evaluator.evaluate(proposal)
        evaluations += n
        new_energy = _energy(proposed, scale)
        accept = rng.random(n) < np.exp(np.minimum(0.0, (energy - new_energy) / temperature))
        state[accept] = proposal[accept]
        energy[accept] = new_energy[accept]
        remember(proposal, proposed)
        if top and min(top.values()) < best * (1 - 1e-9):
            best = min(top.values())
            last_improvement = step
            history.append((time.perf_counter() - start, best))
        if step % settings.swap_every == 0:
            _swap_neighbours(state, energy, ladder, per, rng, offset=(step // settings.swap_every) % 2)
        if progress is not None and step % 20 == 0:
            progress(evaluations, time.perf_counter() - start, best)
        if step - last_improvement >= settings.plateau_steps:
            stopped_by = "plateau"
            break
        if time.perf_counter() - start >= settings.time_limit_s:
            stopped_by = "time_limit"
            break
        if should_stop is not None and should_stop():
            stopped_by = "interrupted"
            break
    ranked = sorted(top, key=top.get)
    top_choices = [np.array(key, dtype=np.int64) for key in ranked[: settings.top_k]]
    return MCMCResult(best_choice=top_choices[0] if top_choices else None,
                      best_iteration_s=best, top_choices=top_choices,
                      evaluations=evaluations, steps=step,
                      wall_s=time.perf_counter() - start, stopped_by=stopped_by,
                      history=history)


def _swap_neighbours(state: np.ndarray, energy: np.ndarray, ladder: np.ndarray, per: int,
                     rng: np.random.Generator, offset: int) -> None:
    """Exchange states between temperature levels (j, j+1), j = offset, offset + 2, ..."""
    for j in range(offset, len(ladder) - 1, 2):
        lower = np.arange(j * per, (j + 1) * per)
        upper = lower + per
        delta = (1.0 / ladder[j] - 1.0 / ladder[j + 1]) * (energy[lower] - energy[upper])
        swap = rng.random(per) < np.exp(np.minimum(0.0, delta))
        a, b = lower[swap], upper[swap]
        state[a], state[b] = state[b].copy(), state[a].copy()
        energy[a], energy[b] = energy[b].copy(), energy[a].copy()
