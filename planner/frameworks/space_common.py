"""What the targets' plan spaces (planner/frameworks/*_space.py) share: the bound on a
space's size, the sequences one step of a call splits, the layout check of one call's
execution, the executions of a training-backend call on a mesh, and the even thinning of
option groups that keeps a space within its bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import RECOMPUTE_MODES, Execution, layout_problem
from planner.domain.workflow import Workflow
from planner.search.space import layouts_for_mesh, micro_batch_options

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


# Recomputation of FSDP / ZeRO-3 train calls in the frameworks: one gradient-checkpointing
# switch (verl's enable_gradient_checkpointing, ROLL's and AReaL's FSDP engines), whole
# decoder layers or nothing.
FSDP_RECOMPUTE_MODES = ("none", "full")


def backend_options(workflow: Workflow, cluster: ClusterSpec, name: str,
                    mesh: tuple[int, ...], fsdp: bool,
                    allowed: Callable[[int, int, int, int], bool]) -> list[Execution]:
    """Executions of call `name` on `mesh` by a training backend (Megatron: fsdp False;
    FSDP / ZeRO-3: parameters sharded over dp): every dp x tp x pp of the mesh and
    micro-batch count of the search's (planner.search.space) that splits a step into whole
    micro-batches and that the target's `allowed(dp, tp, pp, micro_batches)` accepts, a
    train call in each recomputation mode the backend has, in that order; only layouts the
    call can run (valid_execution)."""
    if workflow.call_by_name[name].kind != "train":
        modes = (Execution.model_fields["recompute"].default,)
    else:
        modes = FSDP_RECOMPUTE_MODES if fsdp else RECOMPUTE_MODES
    found = []
    for dp, tp, pp in layouts_for_mesh(len(mesh)):
        for micro in micro_batch_options(pp):
            if steps(workflow, name) % (dp * micro) or not allowed(dp, tp, pp, micro):
                continue
            for mode in modes:
                ex = Execution(devices=mesh, dp=dp, tp=tp, pp=pp, micro_batches=micro,
                               recompute=mode, shard_parameters_over_dp=fsdp)
                if valid_execution(workflow, cluster, name, ex):
                    found.append(ex)
    return found


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
