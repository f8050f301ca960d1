"""A plan as ROLL 0.3.0 runs it: an RLVR pipeline config (YAML) for
`python examples/start_rlvr_pipeline.py --config_path DIR --config_name NAME`, with the keys
and nesting of ROLL's examples/qwen2.5-7B-rlvr_megatron/rlvr_config_8gpus.yaml.

Per role (roll_rules.py says what is expressible and why):
- actor_infer: vllm with tensor_parallel_size = the generation's tp on its devices and
  max_num_seqs the one that gives the plan's generation micro-batches
  (roll_rules.engine_max_num_seqs), so that a plan with several reads back as itself;
  gpu_memory_utilization is left to vLLM's default (roll_keys.py), which the plan space
  sizes the KV pool with;
- actor_train, critic: megatron_train (tensor / pipeline_model_parallel_size,
  use_distributed_optimizer = ZeRO-1, recompute_granularity full / selective / null, which
  mcore_adapter runs as full = uniform, one layer per checkpoint) or, when the plan shards
  parameters, fsdp2_train with fsdp_size = the role's devices (one shard group) and
  disable_gradient_checkpointing = recompute none; per_device_train_batch_size x
  gradient_accumulation_steps (= micro_batches) per rank and step;
- reference, reward model: megatron_infer, or fsdp2_infer when sharded; infer_batch_size =
  sequences per rank / micro_batches (the critic's values use the critic's infer_batch_size);
- no reward model in the plan: the rule reward of ROLL's example (not priced).
KL: with a reference, use_kl_loss true and init_kl_coef 0 (init_kl_coef > 0 would make ROLL
recompute the old log-probs, a pass our plans do not have); without, both off. The
actor_train's infer_batch_size (ROLL's old-log-prob pass) is set to its training micro-batch
size. ppo_epochs is 1: our plans train one epoch per batch.
"""

from __future__ import annotations

from typing import Any

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.workflow import Workflow
from planner.domain.yamlio import dump_yaml
from planner.frameworks.model_reference import model_path_for
from planner.frameworks.roll_devices import device_mapping_text
from planner.frameworks.roll_keys import (
    ADV_ESTIMATOR,
    BASE_EXAMPLE,
    ENTRY_POINT,
    REWARD_DOMAIN,
    REWARD_MODEL_WORKER,
    ROLL_VERSION,
    RULE_REWARD,
)
from planner.frameworks.roll_rules import engine_max_num_seqs
from planner.frameworks.space_common import steps

DTYPE = "bf16"   # ROLL's examples train and infer in bf16, as our cost model prices
MEGATRON_RECOMPUTE = {"none": None, "selective": "selective", "full": "full"}


def _per_rank(workflow: Workflow, name: str, ex: Execution) -> int:
    return steps(workflow, name) // (ex.dp * ex.micro_batches)


def _train_strategy(ex: Execution) -> dict[str, Any]:
    if ex.shard_parameters_over_dp:
        return {"strategy_name": "fsdp2_train", "strategy_config": {"fsdp_size": ex.dp}}
    return {"strategy_name": "megatron_train", "strategy_config": {
        "tensor_model_parallel_size": ex.tp, "pipeline_model_parallel_size": ex.pp,
        "use_distributed_optimizer": ex.shard_optimizer_over_dp,
        "recompute_granularity": MEGATRON_RECOMPUTE[ex.recompute]}}


def _infer_strategy(ex: Execution) -> dict[str, Any]:
    if ex.shard_parameters_over_dp:
        return {"strategy_name": "fsdp2_infer", "strategy_config": {"fsdp_size": ex.dp}}
    return {"strategy_name": "megatron_infer", "strategy_config": {
        "tensor_model_parallel_size": ex.tp, "pipeline_model_parallel_size": ex.pp}}


def _train_role(workflow: Workflow, name: str, ex: Execution,
                infer_batch_size: int) -> dict[str, Any]:
    per_device = _per_rank(workflow, name, ex)
    return {
        "model_args": {"disable_gradient_checkpointing": ex.recompute == "none",
                       "dtype": DTYPE},
        "training_args": {"per_device_train_batch_size": per_device,
                          "gradient_accumulation_steps": ex.micro_batches},
        "strategy_args": _train_strategy(ex),
        "device_mapping": device_mapping_text(ex.devices),
        "infer_batch_size": infer_batch_size,
    }


def _infer_role(workflow: Workflow, name: str, ex: Execution) -> dict[str, Any]:
    return {
        "model_args": {"disable_gradient_checkpointing": True, "dtype": DTYPE},
        "strategy_args": _infer_strategy(ex),
        "device_mapping": device_mapping_text(ex.devices),
        "infer_batch_size": _per_rank(workflow, name, ex),
    }


def _rewards(workflow: Workflow, executions: dict[str, Execution], actor_path: str,
             notes: list[str]) -> dict[str, Any]:
    tags = list(RULE_REWARD["tag_included"])
    if "rew_inf" not in executions:
        notes.append(f"rewards: a rule reward (math_rule, tags {tags}, as ROLL's example); "
                     f"rule rewards run on CPU and are not priced: use your domain's worker")
        return {"math_rule": {"worker_cls": RULE_REWARD["worker_cls"],
                              "model_args": {"model_name_or_path": actor_path},
                              "tag_included": tags, "world_size": RULE_REWARD["world_size"],
                              "infer_batch_size": RULE_REWARD["infer_batch_size"]}}
    notes.append(f"rewards.{REWARD_DOMAIN}: tag_included {tags}: list your dataset's tags so "
                 f"that every sample is routed to the reward model")
    domain = _infer_role(workflow, "rew_inf", executions["rew_inf"])
    domain["model_args"]["model_name_or_path"] = model_path_for(workflow, "reward", notes)
    return {REWARD_DOMAIN: {"worker_cls": REWARD_MODEL_WORKER, "tag_included": tags,
                            **domain}}


def config_for(workflow: Workflow, cluster: ClusterSpec,
               executions: dict[str, Execution]) -> tuple[dict[str, Any], list[str]]:
    """The nested config of an expressible plan, and notes for its header."""
    notes: list[str] = []
    batch = workflow.batch
    actor_path = model_path_for(workflow, "actor", notes)
    gen, train = executions["actor_gen"], executions["actor_train"]
    with_ref = "ref_inf" in executions
    second = "critic" if "critic" in workflow.models else "reward" \
        if "reward" in workflow.models else "actor"
    config: dict[str, Any] = {
        "hydra": {"run": {"dir": "."}, "output_subdir": None},
        "exp_name": f"rlhf-plan-{workflow.algorithm}",
        "num_gpus_per_node": cluster.node_devices_per_node[0],
        "rollout_batch_size": batch.n_seqs // batch.group_size,
        "prompt_length": batch.prompt_len,
        "response_length": batch.gen_len,
        "num_return_sequences_in_group": batch.group_size,
        "ppo_epochs": 1,
        "adv_estimator": ADV_ESTIMATOR[workflow.algorithm],
        "use_kl_loss": with_ref,
        "init_kl_coef": 0.0,
        "pretrain": actor_path,
        "reward_pretrain": actor_path if second == "actor"
        else model_path_for(workflow, second, notes),
        "actor_train": _train_role(workflow, "actor_train", train,
                                   _per_rank(workflow, "actor_train", train)),
        "actor_infer": {
            "model_args": {"disable_gradient_checkpointing": True, "dtype": DTYPE},
            "generating_args": {"max_new_tokens": batch.gen_len,
                                "num_return_sequences": batch.group_size},
            "strategy_args": {"strategy_name": "vllm",
                              "strategy_config": {
                                  "tensor_parallel_size": gen.tp,
                                  "max_num_seqs": engine_max_num_seqs(batch.n_seqs, gen)}},
            "device_mapping": device_mapping_text(gen.devices),
            "infer_batch_size": 1,
        },
    }
    if with_ref:
        config["reference"] = _infer_role(workflow, "ref_inf", executions["ref_inf"])
    if "critic_train" in executions:
        critic = _train_role(workflow, "critic_train", executions["critic_train"],
                             _per_rank(workflow, "critic_inf", executions["critic_inf"]))
        critic["model_args"]["model_type"] = "trl"
        if executions["critic_train"].shard_parameters_over_dp:
            notes.append("critic (fsdp2_train, a trl value-head model): set strategy_config."
                         "wrap_policy.transformer_layer_cls_to_wrap to the model's decoder "
                         "layer class, as ROLL's example_ppo.yaml does")
        config["critic"] = critic
    config["rewards"] = _rewards(workflow, executions, actor_path, notes)
    return config, notes


def config_text(workflow: Workflow, cluster: ClusterSpec,
                executions: dict[str, Execution]) -> str:
    """The YAML file (module docstring)."""
    config, notes = config_for(workflow, cluster, executions)
    header = [
        f"# {ROLL_VERSION} (alibaba/ROLL, tag v0.3.0): RLVR pipeline config, keys and nesting",
        f"# as in {BASE_EXAMPLE}.",
        f"# Written by rlhf-plan for {workflow.algorithm} on {cluster.describe()}.",
        f"# Run: python {ENTRY_POINT} --config_path DIR --config_name NAME (this file's",
        "# folder and name without .yaml). Add actor_train.data_args (template, file_name)",
        "# and validation for your data before running.",
        *[f"# Note: {note}" for note in notes],
    ]
    return "\n".join(header) + "\n" + dump_yaml(config)
