"""Early rejection in the MCMC step (planner/search/mcmc_kernel._take_step): a step whose
iteration time alone puts it beyond what its random number accepts skips the memory rule,
as does one the memory rule's bounds decide (fast_evaluator.memory_bounds), and the search
takes the same path as with the rule run on every step."""

from __future__ import annotations

import numpy as np

from planner.domain.cluster import cluster_preset
from planner.domain.workflow_file import builtin_workflow
from planner.search import mcmc
from planner.search.builder import full_tables, pruned_tables
from planner.search.fast_evaluator import FastEvaluator
from planner.search.mcmc_kernel import _metropolis_accepts, _rejects_from, energy_of


def test_a_step_rejected_by_its_time_is_rejected_at_every_energy_above_it():
    rng = np.random.default_rng(0)
    rejected = 0
    for _ in range(20_000):
        energy, time_s = rng.uniform(1.0, 2.0, 2)
        temperature = 10.0 ** rng.uniform(-4, 0)
        r_accept = rng.random()
        if not _rejects_from(energy, time_s, temperature, r_accept):
            continue
        rejected += 1
        for overflow in (-0.5, 0.0, 0.01, 3.0):
            proposed = energy_of(time_s, overflow, 1.5)
            assert not _metropolis_accepts(energy, proposed, temperature, r_accept)
    assert rejected > 1_000


def test_the_search_takes_the_same_path_with_and_without_early_rejection():
    # GRPO on 4 H100: memory decides many plans (docs/benchmarks.md, lower bound section)
    tables, _ = pruned_tables(full_tables(builtin_workflow("grpo"), cluster_preset("h100x4")),
                              {})
    evaluator = FastEvaluator(tables)
    runs = [mcmc.run_mcmc(evaluator, [], mcmc.MCMCSettings(
        seed=5, temperatures=4, chains_per_temperature=16, max_steps=400, plateau_steps=10**9,
        time_limit_s=600, early_rejection=early)) for early in (True, False)]
    early, full = runs
    assert full.decided_on_time == full.decided_on_bounds == 0
    assert 0 < early.decided_on_time < early.evaluations
    assert 0 < early.decided_on_bounds < early.evaluations - early.decided_on_time
    assert early.evaluations == full.evaluations
    assert early.best_iteration_s == full.best_iteration_s
    assert [c.tolist() for c in early.top_choices] == [c.tolist() for c in full.top_choices]
    assert [b for _, b in early.history] == [b for _, b in full.history]
