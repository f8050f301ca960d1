"""The plans verl 0.7.0 can express for a workflow on a cluster (plan search --target verl).

Pools (verl_rules.py): every call on all devices, or, with a reward model, the reward calls
on their own pool (an allowed mesh right after a global pool from device 0, the two
covering the cluster). Strategy: Megatron (each role's dp x tp x pp, ZeRO-1 as the search
offers it, every recomputation mode) or FSDP (dp = pool, parameters sharded, recomputation
none or full). Engines (rollout, reward loop): tp x dp, each micro-batch count of the
search's that a max_num_seqs gives (verl_rules.engine_micro_batches), the rollout's only
those whose rows its KV pool holds (engine_batching). Micro-batch counts
are the search's (planner.search.space.micro_batch_options) that give whole micro-batch
sizes per GPU; the Megatron critic computes values with its training micro-batch size.

The calls verl ties together form groups (the rollout's calls, the critic's two calls, the
reward calls) and a plan is one option per group. When all combinations would exceed
MAX_TARGET_PLANS, each group's options are thinned evenly (first and last kept; space_common.thinned), the
count per group shrinking with the number of groups as in planner.search.baselines, so the space
stays within the bound and keeps its spread of layouts; the rollout's group is kept whole
(its micro-batch counts decide whether the KV cache fits beside the colocated models).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.mesh import allowed_meshes
from planner.domain.workflow import Workflow
from planner.frameworks.engine_batching import kv_pool_rows_of
from planner.frameworks.space_common import (
    MAX_TARGET_PLANS,
    backend_options,
    thinned,
    valid_execution,
)
from planner.frameworks.verl_keys import AR, DEFAULTS
from planner.frameworks.verl_rules import (
    REWARD_CALLS,
    engine_max_num_seqs,
    pool_shape,
    reward_pool,
    workflow_problems,
)
from planner.search.space import layouts_for_mesh, micro_batch_options

Group = list[dict[str, Execution]]
ROLLOUT_GPU_MEMORY_UTILIZATION = DEFAULTS["fsdp"][f"{AR}.rollout.gpu_memory_utilization"]


def _call_options(workflow: Workflow, cluster: ClusterSpec, name: str, pool: tuple[int, ...],
                  fsdp: bool) -> list[Execution]:
    """verl's Megatron layouts, or FSDP over the whole pool (tp 1, pp 1)."""
    return backend_options(workflow, cluster, name, pool, fsdp,
                           lambda dp, tp, pp, micro: not fsdp or (tp, pp) == (1, 1))


def _engine_options(workflow: Workflow, cluster: ClusterSpec, names: list[str],
                    pool: tuple[int, ...]) -> Group:
    """tp x dp engines on the pool, each micro-batch count of micro_batch_options(1) that
    some max_num_seqs gives (verl_rules.engine_max_num_seqs) and, for the rollout, whose
    rows the KV pool of verl's default gpu_memory_utilization holds (an import of the
    exported script reads back the same count: engine_batching)."""
    generate = any(workflow.call_by_name[n].kind == "generate" for n in names)
    options = []
    for dp, tp, pp in layouts_for_mesh(len(pool)):
        if pp != 1:
            continue
        kv_rows = None
        for micro in micro_batch_options(1):
            ex = Execution(devices=pool, dp=dp, tp=tp, pp=1, micro_batches=micro)
            max_num_seqs = engine_max_num_seqs(workflow.batch.n_seqs, ex)
            if max_num_seqs is None or not all(valid_execution(workflow, cluster, n, ex)
                                               for n in names):
                continue
            if generate and kv_rows is None:
                kv_rows = kv_pool_rows_of(workflow, names[0], cluster, pool, dp, tp,
                                          ROLLOUT_GPU_MEMORY_UTILIZATION)
            if not generate or max_num_seqs <= kv_rows:
                options.append({n: ex for n in names})
    return options


def _critic_options(workflow: Workflow, cluster: ClusterSpec, pool: tuple[int, ...],
                    fsdp: bool) -> Group:
    minibatches = workflow.batch.ppo_minibatches
    options = []
    for train in _call_options(workflow, cluster, "critic_train", pool, fsdp):
        base = train.model_copy(update={"recompute": Execution.model_fields["recompute"]
                                        .default})
        micros = micro_batch_options(train.pp) if fsdp else [train.micro_batches * minibatches]
        for micro in micros:
            inf = base.model_copy(update={"micro_batches": micro})
            if workflow.batch.n_seqs % (inf.dp * micro) == 0 \
                    and valid_execution(workflow, cluster, "critic_inf", inf):
                options.append({"critic_inf": inf, "critic_train": train})
    return options


def _groups(workflow: Workflow, cluster: ClusterSpec, pool: tuple[int, ...],
            reward_devices: tuple[int, ...], fsdp: bool) -> list[Group]:
    calls = workflow.call_by_name
    gen_calls = [n for n in ("actor_gen", "actor_greedy_gen") if n in calls]
    groups = [_engine_options(workflow, cluster, gen_calls, pool)]
    for name in ("actor_train", "ref_inf"):
        if name in calls:
            groups.append([{name: ex} for ex in _call_options(workflow, cluster, name, pool,
                                                              fsdp)])
    if "critic_train" in calls:
        groups.append(_critic_options(workflow, cluster, pool, fsdp))
    reward_calls = [n for n in REWARD_CALLS if n in calls]
    if reward_calls:
        groups.append(_engine_options(workflow, cluster, reward_calls, reward_devices))
    return groups


def _pool_variants(workflow: Workflow,
                   cluster: ClusterSpec) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    everything = tuple(range(cluster.num_devices))
    variants = []
    if pool_shape(everything, cluster):
        variants.append((everything, everything))
    if any(n in workflow.call_by_name for n in REWARD_CALLS):
        for mesh in allowed_meshes(cluster):
            if mesh[0] == 0 and mesh != everything and pool_shape(mesh, cluster):
                rest = reward_pool(mesh, cluster.num_devices - len(mesh), cluster)
                if rest and pool_shape(rest, cluster):
                    variants.append((mesh, rest))
    return variants


def target_plans(workflow: Workflow, cluster: ClusterSpec) -> Iterator[dict[str, Execution]]:
    """Every plan of the space in the module docstring (memory not yet considered)."""
    if workflow_problems(workflow):
        return
    variants = [(pool, reward, fsdp) for pool, reward in _pool_variants(workflow, cluster)
                for fsdp in (False, True)]
    for pool, reward, fsdp in variants:
        groups = _groups(workflow, cluster, pool, reward, fsdp)
        if any(not g for g in groups):
            continue
        for combination in itertools.product(*thinned(groups, MAX_TARGET_PLANS
                                                       / len(variants))):
            yield {name: ex for option in combination for name, ex in option.items()}
