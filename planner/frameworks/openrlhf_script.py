"""The train_ppo_ray command line of an OpenRLHFLayout, as a shell script.

Flag spellings are OpenRLHF v0.11.0's (OpenRLHF/OpenRLHF, openrlhf/cli/train_ppo_ray.py,
tag v0.11.0); tests check each against the checked-in copy. Only the flags that set what
we price are written; everything else (learning rates, datasets, checkpoints) keeps
OpenRLHF's defaults for the user to add. The reference model is created because
--algo.kl.init_coef defaults to 0.01 (> 0).
"""

from __future__ import annotations

import shlex

from planner.domain.cluster import ClusterSpec
from planner.domain.workflow import Workflow
from planner.frameworks.openrlhf_cmdline import MODULE, VERSION_NAME
from planner.frameworks.openrlhf_export import ESTIMATORS
from planner.frameworks.openrlhf_layout import OpenRLHFLayout


def nodes_and_gpus(count: int, cluster: ClusterSpec) -> tuple[int, int]:
    """(num_nodes, num_gpus_per_node) for a role of `count` GPUs: whole nodes when it
    spans several (OpenRLHF's world size is their product)."""
    per_node = cluster.node_devices_per_node[0]
    if count > per_node and count % per_node == 0:
        return count // per_node, per_node
    return 1, count


def command_flags(layout: OpenRLHFLayout, workflow: Workflow,
                  cluster: ClusterSpec) -> list[tuple[str, str | None]]:
    """(flag, value) pairs in the order written; value None for a switch."""
    flags: list[tuple[str, str | None]] = []
    roles = [("actor", layout.actor_gpus), ("ref", layout.ref_gpus),
             ("reward", layout.reward_gpus)]
    if layout.critic_gpus is not None:
        roles.append(("critic", layout.critic_gpus))
    for role, count in roles:
        nodes, gpus = nodes_and_gpus(count, cluster)
        flags += [(f"{role}.num_nodes", str(nodes)), (f"{role}.num_gpus_per_node", str(gpus))]
    flags += [("vllm.num_engines", str(layout.vllm_engines)),
              ("vllm.tensor_parallel_size", str(layout.vllm_tp))]
    for switch, on in (("train.colocate_all", layout.colocate_all),
                       ("train.colocate_actor_ref", layout.colocate_actor_ref),
                       ("train.colocate_critic_reward", layout.colocate_critic_reward)):
        if on:
            flags.append((switch, None))
    models = workflow.models
    flags += [("actor.model_name_or_path", models["actor"].spec.name),
              ("reward.model_name_or_path", models["reward"].spec.name)]
    if layout.critic_gpus is not None:
        flags.append(("critic.model_name_or_path", models["critic"].spec.name))
    batch = workflow.batch
    flags += [
        ("algo.advantage.estimator", ESTIMATORS[workflow.algorithm]),
        ("rollout.batch_size", str(batch.n_seqs // batch.group_size)),
        ("rollout.n_samples_per_prompt", str(batch.group_size)),
        ("train.batch_size", str(batch.n_seqs // batch.ppo_minibatches)),
        ("train.micro_batch_size", str(layout.train_micro_batch_size)),
        ("rollout.micro_batch_size", str(layout.rollout_micro_batch_size)),
        ("train.max_epochs", "1"),
        ("data.max_len", str(batch.prompt_len + batch.gen_len)),
        ("rollout.max_new_tokens", str(batch.gen_len)),
        ("ds.zero_stage", str(layout.zero_stage)),
        ("ds.tensor_parallel_size", str(layout.ds_tp)),
    ]
    if layout.gradient_checkpointing:
        flags.append(("actor.gradient_checkpointing_enable", None))
    return flags


def command_script(layout: OpenRLHFLayout, workflow: Workflow, cluster: ClusterSpec) -> str:
    header = [
        "#!/bin/bash",
        (f"# {VERSION_NAME} (OpenRLHF/OpenRLHF, openrlhf/cli/train_ppo_ray.py): "
         f"{workflow.algorithm} on {cluster.describe()}, written by rlhf-plan plan export"),
        ("# model paths are the plan's model names: replace them with checkpoint directories "
         "or hub ids"),
        f"python3 -m {MODULE} \\",
    ]
    flags = command_flags(layout, workflow, cluster)
    lines = [f"   --{flag}" + ("" if value is None else f" {shlex.quote(value)}") for flag, value in flags]
    return "\n".join(header + [line + " \\" for line in lines[:-1]] + [lines[-1]]) + "\n"
