"""AReaL's config keys that plan export writes and plan import reads, with their defaults.

Source: inclusionAI/AReaL, tag v1.0.4 (commit 37d6c6400e99a05fa3409d6a067762a44df40d3b):
areal/api/cli_args.py, the dataclasses a config is read into (GRPOConfig = PPOConfig, its
BaseExperimentConfig, ClusterSpecConfig, InferenceEngineConfig, GenerationHyperparameters,
PPOActorConfig / PPOCriticConfig over TrainEngineConfig, MicroBatchSpec, SchedulingStrategy,
MegatronEngineConfig, DistributedDataParallelConfig, _DatasetConfig); the defaults below are
those dataclasses' (a test checks them against the copy under tests/frameworks/data/areal/).
The example configs examples/math/gsm8k_grpo_megatron.yaml and gsm8k_ppo_megatron.yaml at
the same tag show the keys in use; copies are checked in next to it.
"""

from __future__ import annotations

from typing import Any

AREAL_VERSION = "AReaL v1.0.4"
AREAL_TAG = "v1.0.4"
KEY_SOURCES = (
    ("inclusionAI/AReaL", "areal/api/cli_args.py", AREAL_TAG),
    ("inclusionAI/AReaL", "areal/api/alloc_mode.py", AREAL_TAG),
    ("inclusionAI/AReaL", "areal/trainer/rl_trainer.py", AREAL_TAG),
    ("inclusionAI/AReaL", "areal/infra/scheduler/local.py", AREAL_TAG),
    ("inclusionAI/AReaL", "areal/engine/megatron_engine.py", AREAL_TAG),
    ("inclusionAI/AReaL", "examples/math/gsm8k_grpo_megatron.yaml", AREAL_TAG),
)

# Defaults of a training engine's keys (TrainEngineConfig, PPOActorConfig, PPOCriticConfig).
ENGINE: dict[str, Any] = {
    "path": "",
    "gradient_checkpointing": False,
    "offload": False,
    "use_lora": False,
    "weight_update_mode": "xccl",
    "mb_spec.n_mbs": 1,
    "mb_spec.max_tokens_per_mb": None,
    "ppo_n_minibatches": 4,
    "scheduling_strategy.type": "separation",
    "scheduling_strategy.target": None,
    "megatron.virtual_pipeline_parallel_size": 1,
    "megatron.recompute_granularity": "full",
    "megatron.recompute_method": "uniform",
    "megatron.recompute_num_layers": 1,
    "megatron.ddp.use_distributed_optimizer": True,
}
# PPOActorConfig's own keys (the actor, and the reference, which is one too).
ACTOR_ONLY: dict[str, Any] = {
    "kl_ctl": 0.1,
    "recompute_logprob": False,
    "use_decoupled_loss": False,
    "prox_logp_method": "recompute",
}
TOP: dict[str, Any] = {
    "allocation_mode": "",
    "enable_offload": False,
    "dynamic_bs": False,
    "teacher": None,
    "ref": None,
    "critic": None,
    "cluster.n_nodes": 32,
    "cluster.n_gpus_per_node": 8,
    "scheduler.type": None,
    "rollout.max_head_offpolicyness": 0,
    "rollout.max_concurrent_rollouts": None,
    "sglang.mem_fraction_static": 0.9,
    "vllm.gpu_memory_utilization": 0.9,
    "rollout.consumer_batch_size": 1,
    "rollout.scheduling_strategy.type": "separation",
    "rollout.scheduling_strategy.target": None,
    "gconfig.n_samples": 1,
    "gconfig.max_new_tokens": 16384,
    "train_dataset.batch_size": 1,
    "train_dataset.max_length": None,
    **{f"actor.{k}": v for k, v in {**ENGINE, **ACTOR_ONLY}.items()},
}
# The key of each rollout engine's memory fraction, which sizes its KV pool (engine_batching).
MEMORY_FRACTION_KEYS = {"sglang": "sglang.mem_fraction_static",
                        "vllm": "vllm.gpu_memory_utilization"}
ROLE_DEFAULTS = {"ref": {**ENGINE, **ACTOR_ONLY}, "critic": ENGINE}
# Roles whose engines AReaL's PPOTrainer creates, in its creation order (the order the
# scheduler hands out GPUs: rl_trainer.py creates actor, critic, ref, then the rollout).
ROLE_ORDER = ("actor", "critic", "ref", "rollout")
CALL_ROLE = {"actor_gen": "rollout", "actor_train": "actor", "ref_inf": "ref",
             "critic_inf": "critic", "critic_train": "critic"}
