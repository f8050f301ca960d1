"""What the targets' plan spaces (planner/frameworks/*_space.py) share: the bound on a
space's size, the sequences one step of a call splits, the layout check of one call's
execution, and the even thinning of option groups that keeps a space within its bound.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution, layout_problem
from planner.domain.workflow import Workflow

# The most plans one target space yields (target.py: "at most a few hundred thousand").
MAX_TARGET_PLANS = 200_000
Option = TypeVar("Option")


def steps(workflow: Workflow, name: str) -> int:
    """Sequences one step of call `name` processes over all its dp ranks: a minibatch
    (n_seqs / ppo_minibatches) for a train call, the whole batch otherwise."""
    batch = workflow.batch
    return batch.n_seqs // batch.ppo_minibatches \
        if workflow.call_by_name[name].kind == "train" else batch.n_seqs


def valid_execution(workflow: Workflow, cluster: ClusterSpec, name: str,
                    ex: Execution) -> bool:
    """Whether `ex` is a layout call `name` can run on (planner.domain.layout.layout_problem),
    memory not considered."""
    call = workflow.call_by_name[name]
    role = workflow.models[call.model]
    return layout_problem(ex, role.spec, cluster, call, workflow.batch) is None


def thinned(groups: list[list[Option]], budget: float) -> list[list[Option]]:
    """Each group cut to an even spread (first and last kept) so that the product of the
    groups' sizes stays within `budget`; the first group is cut last, kept whole while the
    others can still have one option each, and the others share what is left evenly, the
    smallest first (as planner.search.baselines sizes its groups)."""
    order = [0] + sorted(range(1, len(groups)), key=lambda i: len(groups[i]))
    result: list[list[Option]] = [[] for _ in groups]
    for position, i in enumerate(order):
        share = max(1, int(budget if i == 0 else
                           budget ** (1.0 / (len(groups) - position)) + 1e-9))
        options = groups[i]
        if len(options) > share:
            picks = np.unique(np.round(np.linspace(0, len(options) - 1, share)).astype(int))
            options = [options[p] for p in picks]
        result[i] = options
        budget /= max(1, len(options))
    return result
