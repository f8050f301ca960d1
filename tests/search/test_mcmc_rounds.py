"""The compiled sweep runs many rounds per call (steps, then parallel-tempering exchanges
inside the kernel): the result depends on the seed only, not on how many rounds one call
runs, and an exchange the rule must accept swaps the two chains' states."""

from __future__ import annotations

import numpy as np

from planner.domain.cluster import cluster_preset
from planner.domain.workflow_file import builtin_workflow
from planner.search import mcmc
from planner.search.builder import full_tables, pruned_tables
from planner.search.fast_evaluator import FastEvaluator


def _evaluator() -> FastEvaluator:
    tables, _ = pruned_tables(full_tables(builtin_workflow("grpo"), cluster_preset("h100x4")),
                              {})
    return FastEvaluator(tables)


def _settings() -> mcmc.MCMCSettings:
    return mcmc.MCMCSettings(seed=3, temperatures=4, chains_per_temperature=8, max_steps=200,
                             plateau_steps=10**9, time_limit_s=600)


def test_rounds_per_call_do_not_change_the_result(monkeypatch):
    evaluator = _evaluator()
    monkeypatch.setattr(mcmc, "STEPS_PER_SWEEP", 5)
    few = mcmc.run_mcmc(evaluator, [], _settings())
    monkeypatch.setattr(mcmc, "STEPS_PER_SWEEP", 100)
    many = mcmc.run_mcmc(evaluator, [], _settings())
    assert few.steps == many.steps == 200
    assert few.evaluations == many.evaluations
    assert few.best_iteration_s == many.best_iteration_s
    assert np.array_equal(few.best_choice, many.best_choice)


def test_exchange_swaps_states_when_the_colder_chain_holds_the_worse_plan():
    """The parallel-tempering rule accepts with probability 1 when (1/T_cold - 1/T_hot)
    (E_cold - E_hot) > 0: the states, their global indices and energies trade places."""
    from planner.search.mcmc_kernel import Chains, _exchange_column
    per, levels, calls = 1, 2, 2
    state = np.array([[1, 1], [2, 2]], dtype=np.int64)
    plans = state.copy()
    # the colder chain (level 0) holds the worse plan: the exchange is always accepted
    chains = Chains(state=state, energy=np.array([5.0, 1.0]),
                    temperature=np.array([0.1, 1.0]), best_time=np.full(levels, np.inf),
                    best_choice=np.zeros((levels, calls), dtype=np.int64),
                    evaluations=np.zeros(levels, dtype=np.int64),
                    decided_on_time=np.zeros(levels, dtype=np.int64),
                    decided_on_bounds=np.zeros(levels, dtype=np.int64))
    slot = np.arange(levels)
    _exchange_column(0, per, plans, slot, 0, 5, chains, 0)
    assert state.tolist() == [[2, 2], [1, 1]] and plans.tolist() == [[2, 2], [1, 1]]
    assert slot.tolist() == [1, 0]
    assert chains.energy.tolist() == [1.0, 5.0]
