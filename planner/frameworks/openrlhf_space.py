"""Every OpenRLHF train_ppo_ray layout of a workflow on a cluster: the plans `plan search
--target openrlhf` searches.

Choices (each rule's source is in planner/frameworks/openrlhf_layout.py): the colocation
flags (colocate_all, with the critic and reward on the actor's bundles or on their own
shared group; colocate_actor_ref; none, each with or without colocate_critic_reward);
role GPU counts of a power of two inside a node or whole nodes; vLLM tensor-parallel
degrees the actor can run; one AutoTP degree every DeepSpeed model can run; ZeRO stage 0,
1 or 3 (2 is priced as 1); gradient checkpointing on or off; per-GPU micro-batch sizes from
MICRO_BATCH_SIZES. We assume every GPU is used (pools cover the cluster): a pool left idle
never shortens an OpenRLHF iteration. The space is cut at MAX_PLANS, in this order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import (
    Execution,
    parallel_degrees_problem,
    sequences_per_micro_batch_step,
)
from planner.domain.workflow import Workflow
from planner.frameworks.openrlhf_layout import (
    OpenRLHFLayout,
    executions_on,
    role_devices,
)

MAX_PLANS = 200_000
ZERO_STAGES = (0, 1, 3)
TRAIN_MICRO_BATCH_SIZES = (1, 2, 4)
ROLLOUT_MICRO_BATCH_SIZES = (1, 4, 16)


def pool_sizes(cluster: ClusterSpec) -> list[int]:
    """GPU counts a pool may have: powers of two inside a node, then whole nodes."""
    per_node = cluster.node_devices_per_node[0]
    sizes = [1 << k for k in range(per_node.bit_length()) if 1 << k < per_node]
    return sizes + [per_node * n for n in range(1, cluster.num_devices // per_node + 1)]


def tp_degrees(workflow: Workflow, roles: list[str], cluster: ClusterSpec) -> list[int]:
    """Tensor-parallel degrees up to a node that every model of `roles` can run."""
    per_node = cluster.node_devices_per_node[0]
    return [tp for tp in range(1, per_node + 1) if per_node % tp == 0
            and all(parallel_degrees_problem(workflow.models[r].spec, tp, 1) is None
                    for r in roles)]


def role_counts(workflow: Workflow, cluster: ClusterSpec) -> Iterator[dict]:
    """Role GPU counts and colocation flags whose pools cover the cluster."""
    sizes = pool_sizes(cluster)
    total = cluster.num_devices
    critic = "critic" in workflow.models
    for shared in sizes:   # colocate_all: vLLM, actor and ref on one pool
        if shared == total:   # the critic and reward on its first bundles
            for reward in (s for s in sizes if s <= shared):
                for critic_size in ([s for s in sizes if s <= shared] if critic else [None]):
                    yield {"vllm": shared, "actor": shared, "ref": shared, "reward": reward,
                           "critic": critic_size, "colocate_all": True,
                           "colocate_actor_ref": False, "colocate_critic_reward": False}
        elif critic and total - shared in sizes:   # critic + reward on their own group
            yield {"vllm": shared, "actor": shared, "ref": shared, "reward": total - shared,
                   "critic": total - shared, "colocate_all": True,
                   "colocate_actor_ref": False, "colocate_critic_reward": True}
    tail_roles = ("critic", "reward") if critic else ("reward",)
    for actor_ref in (True, False):
        heads = ("vllm", "actor") if actor_ref else ("vllm", "actor", "ref")
        for together in ((True, False) if critic else (False,)):
            tails = ("critic",) if together else tail_roles
            names = heads + tails
            for combo in itertools.product(sizes, repeat=len(names)):
                if sum(combo) != total:
                    continue
                counts = dict(zip(names, combo))
                counts.setdefault("ref", counts["actor"])
                counts.setdefault("reward", counts.get("critic"))
                counts.setdefault("critic", None)
                yield dict(**counts, colocate_all=False, colocate_actor_ref=actor_ref,
                           colocate_critic_reward=together)


def target_plans(workflow: Workflow, cluster: ClusterSpec) -> Iterator[dict[str, Execution]]:
    deepspeed_roles = [r for r in ("actor", "ref", "reward", "critic") if r in workflow.models]
    vllm_tps = tp_degrees(workflow, ["actor"], cluster)
    ds_tps = tp_degrees(workflow, deepspeed_roles, cluster)
    produced = 0
    for counts in role_counts(workflow, cluster):
        base = _layout(counts, vllm_tp=1, ds_tp=1, stage=0, ckpt=False, train_mbs=1,
                       rollout_mbs=1)
        devices, problems = role_devices(base, cluster)
        if problems:
            continue
        for vllm_tp, ds_tp, stage, ckpt, train_mbs, rollout_mbs in itertools.product(
                vllm_tps, ds_tps, ZERO_STAGES, (False, True), TRAIN_MICRO_BATCH_SIZES,
                ROLLOUT_MICRO_BATCH_SIZES):
            if counts["vllm"] % vllm_tp:
                continue
            layout = _layout(counts, vllm_tp, ds_tp, stage, ckpt, train_mbs, rollout_mbs)
            executions, problems = executions_on(layout, workflow, cluster, devices)
            if problems or not _layouts_run(executions, workflow):
                continue
            yield executions
            produced += 1
            if produced >= MAX_PLANS:
                return


def _layout(counts: dict, vllm_tp: int, ds_tp: int, stage: int, ckpt: bool, train_mbs: int,
            rollout_mbs: int) -> OpenRLHFLayout:
    return OpenRLHFLayout(
        actor_gpus=counts["actor"], ref_gpus=counts["ref"], reward_gpus=counts["reward"],
        critic_gpus=counts["critic"], vllm_engines=counts["vllm"] // vllm_tp, vllm_tp=vllm_tp,
        colocate_all=counts["colocate_all"], colocate_actor_ref=counts["colocate_actor_ref"],
        colocate_critic_reward=counts["colocate_critic_reward"], zero_stage=stage,
        ds_tp=ds_tp, gradient_checkpointing=ckpt, train_micro_batch_size=train_mbs,
        rollout_micro_batch_size=rollout_mbs)


def _layouts_run(executions: dict[str, Execution], workflow: Workflow) -> bool:
    """Each call has at least one sequence per dp rank and micro-batch."""
    return all(sequences_per_micro_batch_step(workflow.call_by_name[n], workflow.batch)
               >= ex.dp * ex.micro_batches for n, ex in executions.items())
