"""The plans ROLL 0.3.0 can express for a workflow on a cluster (plan search --target roll).

Every role has its own device_mapping (roll_rules.py), so each role's calls take any
allowed mesh: at most MAX_MESHES_PER_ROLE of them, an even spread over the cluster's
allowed meshes ordered by size and first device (a 128-GPU cluster has hundreds), so that
enumerating stays fast. Per mesh: the generation engine tp x dp (pp 1), each micro-batch
count of micro_batch_options(1) that some max_num_seqs gives (roll_rules.engine_problem) and
whose rows the KV pool of vLLM's default gpu_memory_utilization holds (the export leaves it
to the default, so an import of the exported config reads back the same count:
engine_batching);
Megatron roles every dp x tp x pp with the search's micro-batch counts
(planner.search.space.micro_batch_options) that give whole micro-batch sizes, the train
roles every recomputation mode and ZeRO-1 as the search offers it; FSDP2 roles dp = mesh,
parameters sharded, recomputation none or full. The critic's two calls share one mesh and
layout (one worker group), each with its own micro-batch count.

A plan is one option per group (generation, actor training, reference, critic, reward
model); when all combinations would exceed MAX_TARGET_PLANS each group is thinned evenly
(planner.frameworks.space_common.thinned), so the space stays within the bound and keeps its
spread of layouts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.mesh import allowed_meshes
from planner.domain.workflow import Workflow
from planner.frameworks.engine_batching import kv_pool_rows_of
from planner.frameworks.roll_keys import VLLM_GPU_MEMORY_UTILIZATION
from planner.frameworks.roll_rules import (
    cluster_problem,
    engine_max_num_seqs,
    engine_problem,
    workflow_problems,
)
from planner.frameworks.space_common import (
    MAX_TARGET_PLANS,
    backend_options,
    thinned,
    valid_execution,
)
from planner.search.space import layouts_for_mesh, micro_batch_options

MAX_MESHES_PER_ROLE = 32
Group = list[dict[str, Execution]]


def _meshes(cluster: ClusterSpec) -> list[tuple[int, ...]]:
    meshes = sorted(allowed_meshes(cluster), key=lambda m: (len(m), m[0]))
    return thinned([meshes], MAX_MESHES_PER_ROLE)[0]


def _role_options(workflow: Workflow, cluster: ClusterSpec, name: str,
                  meshes: list[tuple[int, ...]]) -> list[Execution]:
    """Executions of a Megatron / FSDP2 call `name` on each mesh (module docstring): FSDP2
    over the whole mesh (tp 1, pp 1); a Megatron actor's dp divides the prompts."""
    prompts = workflow.batch.n_seqs // workflow.batch.group_size

    def allowed(fsdp: bool):
        if fsdp:
            return lambda dp, tp, pp, micro: (tp, pp) == (1, 1)
        return lambda dp, tp, pp, micro: name != "actor_train" or prompts % dp == 0

    return [ex for mesh, fsdp in itertools.product(meshes, (False, True))
            for ex in backend_options(workflow, cluster, name, mesh, fsdp, allowed(fsdp))]


def _engine_options(workflow: Workflow, cluster: ClusterSpec,
                    meshes: list[tuple[int, ...]]) -> Group:
    """tp x dp engines on each mesh with the micro-batch counts of the module docstring."""
    n_seqs = workflow.batch.n_seqs
    options = []
    for mesh in meshes:
        for dp, tp, pp in layouts_for_mesh(len(mesh)):
            if pp != 1:
                continue
            kv_rows = None
            for micro in micro_batch_options(1):
                ex = Execution(devices=mesh, dp=dp, tp=tp, pp=1, micro_batches=micro)
                if engine_problem(n_seqs, ex) or not valid_execution(workflow, cluster,
                                                                     "actor_gen", ex):
                    continue
                if kv_rows is None:
                    kv_rows = kv_pool_rows_of(workflow, "actor_gen", cluster, mesh, dp, tp,
                                              VLLM_GPU_MEMORY_UTILIZATION)
                if engine_max_num_seqs(n_seqs, ex) <= kv_rows:
                    options.append({"actor_gen": ex})
    return options


def _critic_options(workflow: Workflow, cluster: ClusterSpec,
                    meshes: list[tuple[int, ...]]) -> Group:
    options = []
    for train in _role_options(workflow, cluster, "critic_train", meshes):
        for micro in micro_batch_options(train.pp):
            inf = Execution(devices=train.devices, dp=train.dp, tp=train.tp, pp=train.pp,
                            micro_batches=micro,
                            shard_parameters_over_dp=train.shard_parameters_over_dp)
            if workflow.batch.n_seqs % (inf.dp * micro) == 0 \
                    and valid_execution(workflow, cluster, "critic_inf", inf):
                options.append({"critic_inf": inf, "critic_train": train})
    return options


def target_plans(workflow: Workflow, cluster: ClusterSpec) -> Iterator[dict[str, Execution]]:
    """Every plan of the space in the module docstring (memory not yet considered)."""
    if workflow_problems(workflow) or cluster_problem(cluster):
        return
    meshes = _meshes(cluster)
    calls = workflow.call_by_name
    groups = [_engine_options(workflow, cluster, meshes)]
    for name in ("actor_train", "ref_inf", "rew_inf"):
        if name in calls:
            groups.append([{name: ex} for ex in _role_options(workflow, cluster, name,
                                                              meshes)])
    if "critic_train" in calls:
        groups.append(_critic_options(workflow, cluster, meshes))
    if any(not group for group in groups):
        return
    for combination in itertools.product(*thinned(groups, MAX_TARGET_PLANS)):
        yield {name: ex for option in combination for name, ex in option.items()}
