"""A plan as verl 0.7.0 runs it: a shell script of Hydra overrides for
`python3 -m verl.trainer.main_ppo`, on top of ppo_megatron_trainer.yaml (Megatron) or
ppo_trainer.yaml (FSDP), as verl's own examples (examples/grpo_trainer/*.sh) start a run.

Keys and their meaning: planner/frameworks/verl_keys.py (sources there) and
verl_rules.py (what is expressible). Megatron activation recomputation is Megatron-LM's
setting passed through override_transformer_config: our "full" (every block's input kept,
the block rerun) is recompute_granularity full, recompute_method uniform,
recompute_num_layers 1; our "selective" is recompute_granularity selective (verl's default
recompute_modules [core_attn]). rollout.log_prob_micro_batch_size_per_gpu (the old-log-prob
pass, which our plans do not have) is set to the actor's training micro-batch size. Each
engine's max_num_seqs (rollout, reward loop) is the one that gives the call's micro-batches
(verl_rules.engine_max_num_seqs), so a plan with several generation micro-batches per
engine reads back as itself.
"""

from __future__ import annotations

from typing import Any

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.workflow import Workflow
from planner.frameworks.hydra_overrides import render_value
from planner.frameworks.model_reference import model_path_for
from planner.frameworks.verl_keys import AR, CONFIG_NAMES, VERL_VERSION
from planner.frameworks.verl_rules import (
    ADV_ESTIMATOR,
    engine_max_num_seqs,
    pool_shape,
)

ROLLOUT_ENGINE = "vllm"
MEGATRON_RECOMPUTE = {"none": (None, None, None), "selective": ("selective", None, None),
                      "full": ("full", "uniform", 1)}


def _per_gpu(seqs: int, ex: Execution) -> int:
    return seqs // (ex.dp * ex.micro_batches)


def _megatron(prefix: str, ex: Execution, train: bool) -> dict[str, Any]:
    keys = {f"{prefix}.megatron.tensor_model_parallel_size": ex.tp,
            f"{prefix}.megatron.pipeline_model_parallel_size": ex.pp}
    if train:
        granularity, method, layers = MEGATRON_RECOMPUTE[ex.recompute]
        transformer = f"{prefix}.megatron.override_transformer_config"
        keys.update({f"{prefix}.megatron.use_distributed_optimizer": ex.shard_optimizer_over_dp,
                     f"{transformer}.recompute_granularity": granularity,
                     f"{transformer}.recompute_method": method,
                     f"{transformer}.recompute_num_layers": layers})
    return keys


def _actor_keys(workflow: Workflow, executions: dict[str, Execution], fsdp: bool,
                notes: list[str]) -> dict[str, Any]:
    batch = workflow.batch
    gen, train = executions["actor_gen"], executions["actor_train"]
    train_micro = _per_gpu(batch.n_seqs // batch.ppo_minibatches, train)
    keys = {
        f"{AR}.model.path": model_path_for(workflow, "actor", notes),
        f"{AR}.rollout.name": ROLLOUT_ENGINE,
        f"{AR}.rollout.n": batch.group_size,
        f"{AR}.rollout.tensor_model_parallel_size": gen.tp,
        f"{AR}.rollout.data_parallel_size": 1,
        f"{AR}.rollout.max_num_seqs": engine_max_num_seqs(batch.n_seqs, gen),
        f"{AR}.rollout.log_prob_micro_batch_size_per_gpu": train_micro,
        f"{AR}.actor.ppo_mini_batch_size": batch.n_seqs // batch.group_size
        // batch.ppo_minibatches,
        f"{AR}.actor.ppo_micro_batch_size_per_gpu": train_micro,
        f"{AR}.actor.use_kl_loss": "ref_inf" in executions
        and workflow.algorithm in ("grpo", "rloo"),
    }
    if fsdp:
        keys[f"{AR}.actor.fsdp_config.fsdp_size"] = -1
        keys[f"{AR}.model.enable_gradient_checkpointing"] = train.recompute == "full"
    else:
        keys.update(_megatron(f"{AR}.actor", train, train=True))
    if "ref_inf" in executions:
        ref = executions["ref_inf"]
        keys[f"{AR}.ref.log_prob_micro_batch_size_per_gpu"] = _per_gpu(batch.n_seqs, ref)
        keys.update({f"{AR}.ref.fsdp_config.fsdp_size": -1} if fsdp
                    else _megatron(f"{AR}.ref", ref, train=False))
    return keys


def _critic_keys(workflow: Workflow, executions: dict[str, Execution], fsdp: bool,
                 notes: list[str]) -> dict[str, Any]:
    batch = workflow.batch
    inf, train = executions["critic_inf"], executions["critic_train"]
    keys = {"critic.model.path": model_path_for(workflow, "critic", notes),
            "critic.ppo_micro_batch_size_per_gpu":
                _per_gpu(batch.n_seqs // batch.ppo_minibatches, train)}
    if fsdp:
        keys.update({"critic.model.fsdp_config.fsdp_size": -1,
                     "critic.model.enable_gradient_checkpointing": train.recompute == "full",
                     "critic.forward_micro_batch_size_per_gpu": _per_gpu(batch.n_seqs, inf)})
    else:
        keys.update(_megatron("critic", train, train=True))
    return keys


def _reward_keys(workflow: Workflow, cluster: ClusterSpec, executions: dict[str, Execution],
                 notes: list[str]) -> dict[str, Any]:
    if "rew_inf" not in executions:
        return {"reward_model.enable": False}
    rew = executions["rew_inf"]
    keys = {"reward_model.enable": True,
            "reward_model.model.path": model_path_for(workflow, "reward", notes),
            "reward_model.use_reward_loop": True,
            "reward_model.rollout.name": ROLLOUT_ENGINE,
            "reward_model.rollout.tensor_model_parallel_size": rew.tp,
            "reward_model.rollout.data_parallel_size": 1,
            "reward_model.rollout.max_num_seqs": engine_max_num_seqs(workflow.batch.n_seqs,
                                                                     rew)}
    separate = rew.devices != executions["actor_train"].devices
    keys["reward_model.enable_resource_pool"] = separate
    if separate:
        nnodes, per_node = pool_shape(rew.devices, cluster)
        keys.update({"reward_model.nnodes": nnodes, "reward_model.n_gpus_per_node": per_node})
    return keys


def overrides_for(workflow: Workflow, cluster: ClusterSpec,
                  executions: dict[str, Execution]) -> tuple[str, dict[str, Any], list[str]]:
    """(config name, {dotted key: value}, notes) of an expressible plan."""
    notes: list[str] = []
    fsdp = executions["actor_train"].shard_parameters_over_dp
    nnodes, per_node = pool_shape(executions["actor_train"].devices, cluster)
    batch = workflow.batch
    keys: dict[str, Any] = {
        "trainer.nnodes": nnodes,
        "trainer.n_gpus_per_node": per_node,
        "algorithm.adv_estimator": ADV_ESTIMATOR[workflow.algorithm],
        "algorithm.use_kl_in_reward": "ref_inf" in executions
        and workflow.algorithm not in ("grpo", "rloo"),
        "data.train_batch_size": batch.n_seqs // batch.group_size,
        "data.max_prompt_length": batch.prompt_len,
        "data.max_response_length": batch.gen_len,
    }
    keys.update(_actor_keys(workflow, executions, fsdp, notes))
    if "critic_train" in executions:
        keys.update(_critic_keys(workflow, executions, fsdp, notes))
    keys.update(_reward_keys(workflow, cluster, executions, notes))
    return CONFIG_NAMES["fsdp" if fsdp else "megatron"], keys, notes


def script_text(workflow: Workflow, cluster: ClusterSpec,
                executions: dict[str, Execution]) -> str:
    """The shell script (module docstring)."""
    config_name, keys, notes = overrides_for(workflow, cluster, executions)
    header = [
        "#!/usr/bin/env bash",
        f"# {VERL_VERSION} (volcengine/verl, tag v0.7.0): Hydra overrides for",
        f"# `python3 -m verl.trainer.main_ppo` on top of verl/trainer/config/{config_name}.",
        f"# Written by rlhf-plan for {workflow.algorithm} on {cluster.describe()}.",
        "# Set data.train_files / data.val_files (and the reward function, when no reward",
        "# model is enabled) for your data before running.",
        *[f"# Note: {note}" for note in notes],
        "set -x",
        "",
        f"python3 -m verl.trainer.main_ppo --config-path=config --config-name={config_name} \\",
    ]
    lines = [f"    {key}={render_value(value)} \\" for key, value in keys.items()]
    return "\n".join(header + lines + ['    "$@"', ""])
