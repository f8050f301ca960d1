"""The plans AReaL v1.0.4 can express for a workflow on a cluster (plan search --target
areal).

Placements (areal_rules.py): the engines take consecutive allowed meshes from device 0 in
AReaL's creation order (actor, critic, ref, rollout), together covering the cluster; critic
and ref may instead share the actor's devices; the rollout always has its own. Per engine:
the rollout d x t x p (SGLang for p 1, vLLM otherwise) with micro-batch counts (waves of
in-flight prompts) that divide the prompts and give whole waves per server; a train engine
Megatron (dp x tp x pp, every recomputation mode) or FSDP (dp x tp, parameters sharded,
recomputation none or full), micro-batch counts from planner.search.space's options that
give whole micro-batches per GPU and that AReaL's engines make (Megatron: at least 2 pp, a
multiple of pp); the critic's two calls share one engine and one micro-batch budget.

With a workflow of max_staleness k >= 1 the plans are AReaL's asynchronous ones, priced at
staleness k (areal.plan_staleness), their rollout batching continuously
(areal_rules.rollout_batching).

Each placement's choices form groups (the rollout, the actor's training, the reference, the
critic's two calls); a plan is one option per group, and when all combinations would exceed
MAX_TARGET_PLANS the groups are thinned evenly (space_common.thinned).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.mesh import allowed_meshes
from planner.domain.workflow import Workflow
from planner.frameworks.areal_export import backend_of
from planner.frameworks.areal_keys import (
    CALL_ROLE,
    MEMORY_FRACTION_KEYS,
    ROLE_ORDER,
    TOP,
)
from planner.frameworks.areal_rules import (
    COLOCATABLE,
    min_micro_batches,
    rollout_batching,
    workflow_problems,
)
from planner.frameworks.engine_batching import kv_pool_rows_of
from planner.frameworks.space_common import (
    MAX_TARGET_PLANS,
    backend_options,
    thinned,
    valid_execution,
)
from planner.search.space import layouts_for_mesh, micro_batch_options

Group = list[dict[str, Execution]]
Placement = dict[str, tuple[int, ...]]


def _chains(meshes: list[tuple[int, ...]], start: int, count: int,
            end: int) -> Iterator[list[tuple[int, ...]]]:
    """Every run of `count` allowed meshes, each starting where the previous ends, from
    device `start` to `end`."""
    if count == 0:
        if start == end:
            yield []
        return
    for mesh in meshes:
        if mesh[0] == start:
            for rest in _chains(meshes, mesh[-1] + 1, count - 1, end):
                yield [mesh] + rest


def placements(workflow: Workflow, cluster: ClusterSpec) -> Iterator[Placement]:
    """Devices per engine of every placement in the module docstring."""
    roles = [r for r in ROLE_ORDER if r in {CALL_ROLE[n] for n in workflow.call_by_name}]
    optional = [r for r in roles if r in COLOCATABLE]
    meshes = allowed_meshes(cluster)
    for shared in itertools.product((False, True), repeat=len(optional)):
        colocated = {r for r, s in zip(optional, shared) if s}
        separated = [r for r in roles if r not in colocated]
        for chain in _chains(meshes, 0, len(separated), cluster.num_devices):
            devices = dict(zip(separated, chain))
            yield {r: devices[r] if r not in colocated else devices["actor"] for r in roles}


def _train_options(workflow: Workflow, cluster: ClusterSpec, name: str,
                   devices: tuple[int, ...]) -> list[Execution]:
    """Megatron (micro-batches at least AReaL's minimum and a multiple of pp) then FSDP
    (pp 1) executions of call `name` on the engine's devices."""
    def allowed(fsdp: bool):
        def accept(dp: int, tp: int, pp: int, micro: int) -> bool:
            if micro < min_micro_batches(pp, not fsdp):
                return False
            return pp == 1 if fsdp else micro % pp == 0
        return accept

    return [ex for fsdp in (False, True)
            for ex in backend_options(workflow, cluster, name, devices, fsdp, allowed(fsdp))]


def _rollout_options(workflow: Workflow, cluster: ClusterSpec,
                     devices: tuple[int, ...]) -> Group:
    batch = workflow.batch
    prompts = batch.n_seqs // batch.group_size
    options = []
    for dp, tp, pp in layouts_for_mesh(len(devices)):
        kv_rows = None
        for waves in micro_batch_options(1):
            ex = Execution(devices=devices, dp=dp, tp=tp, pp=pp, micro_batches=waves,
                           decode_batching=rollout_batching(workflow))
            if prompts % waves or batch.n_seqs % (dp * waves) \
                    or not valid_execution(workflow, cluster, "actor_gen", ex):
                continue
            if kv_rows is None:   # a server's KV pool at the exported engine's default
                engine = backend_of(workflow, "actor_gen", ex).name
                kv_rows = kv_pool_rows_of(workflow, "actor_gen", cluster, devices, dp, tp,
                                          TOP[MEMORY_FRACTION_KEYS[engine]])
            if batch.n_seqs // (dp * waves) <= kv_rows:
                options.append({"actor_gen": ex})
    return options


def _critic_options(workflow: Workflow, cluster: ClusterSpec,
                    devices: tuple[int, ...]) -> Group:
    minibatches = workflow.batch.ppo_minibatches
    default = Execution.model_fields["recompute"].default
    options = []
    for train in _train_options(workflow, cluster, "critic_train", devices):
        inf = train.model_copy(update={"recompute": default, "shard_optimizer_over_dp": True,
                                       "micro_batches": train.micro_batches * minibatches})
        if workflow.batch.n_seqs % (inf.dp * inf.micro_batches) == 0 \
                and valid_execution(workflow, cluster, "critic_inf", inf):
            options.append({"critic_inf": inf, "critic_train": train})
    return options


def _groups(workflow: Workflow, cluster: ClusterSpec, placement: Placement) -> list[Group]:
    groups = [_rollout_options(workflow, cluster, placement["rollout"]),
              [{"actor_train": ex} for ex in _train_options(workflow, cluster, "actor_train",
                                                            placement["actor"])]]
    if "ref" in placement:
        groups.append([{"ref_inf": ex} for ex in _train_options(workflow, cluster, "ref_inf",
                                                                placement["ref"])])
    if "critic" in placement:
        groups.append(_critic_options(workflow, cluster, placement["critic"]))
    return groups


def target_plans(workflow: Workflow, cluster: ClusterSpec) -> Iterator[dict[str, Execution]]:
    """Every plan of the space in the module docstring (memory not yet considered)."""
    if workflow_problems(workflow) or len(set(cluster.node_devices_per_node)) > 1:
        return
    variants = list(placements(workflow, cluster))
    for placement in variants:
        groups = _groups(workflow, cluster, placement)
        if any(not g for g in groups):
            continue
        for combination in itertools.product(*thinned(groups, MAX_TARGET_PLANS
                                                       / len(variants))):
            yield {name: ex for option in combination for name, ex in option.items()}
