"""verl's config keys that plan export writes and plan import reads, with their defaults.

Source: volcengine/verl, tag v0.7.0 (commit f9c855f7cf04d603c9546bc01776c74806a879c1),
verl/trainer/config/_generated_ppo_trainer.yaml (FSDP) and
verl/trainer/config/_generated_ppo_megatron_trainer.yaml (Megatron): the configs
ppo_trainer.yaml and ppo_megatron_trainer.yaml resolve to, flattened by verl's
scripts/print_cfg.py. Copies are checked in under tests/frameworks/data/verl/, and a test
checks every default below against them. Interpolations (`${oc.select:...}`) are kept as
verl writes them and followed when read (planner.frameworks.hydra_overrides.lookup).
Which roles share a resource pool: verl/trainer/main_ppo.py (TaskRunner.add_*_worker,
init_resource_pool_mgr) at the same tag.
"""

from __future__ import annotations

from typing import Any

VERL_VERSION = "verl 0.7.0"
KEY_SOURCES = (
    ("volcengine/verl", "verl/trainer/config/_generated_ppo_trainer.yaml", "v0.7.0"),
    ("volcengine/verl", "verl/trainer/config/_generated_ppo_megatron_trainer.yaml", "v0.7.0"),
    ("volcengine/verl", "verl/trainer/main_ppo.py", "v0.7.0"),
    ("volcengine/verl", "verl/workers/config/rollout.py", "v0.7.0"),
)
# --config-name of each strategy's base config (verl/trainer/config/, v0.7.0).
CONFIG_NAMES = {"fsdp": "ppo_trainer.yaml", "megatron": "ppo_megatron_trainer.yaml"}
DEFAULT_CONFIG_NAME = "ppo_trainer.yaml"   # Hydra's config_name in main_ppo.py

AR = "actor_rollout_ref"
_SELECT = "${oc.select:"

COMMON: dict[str, Any] = {
    "trainer.nnodes": 1,
    "trainer.n_gpus_per_node": 8,
    "algorithm.adv_estimator": "gae",
    "algorithm.use_kl_in_reward": False,
    "data.train_batch_size": 1024,
    "data.max_prompt_length": 512,
    "data.max_response_length": 512,
    f"{AR}.hybrid_engine": True,
    f"{AR}.model.path": "~/models/deepseek-llm-7b-chat",
    f"{AR}.model.lora_rank": 0,
    f"{AR}.actor.use_kl_loss": False,
    f"{AR}.actor.ppo_mini_batch_size": 256,
    f"{AR}.actor.ppo_micro_batch_size": None,
    f"{AR}.actor.ppo_micro_batch_size_per_gpu": None,
    f"{AR}.actor.use_dynamic_bsz": False,
    f"{AR}.actor.ppo_max_token_len_per_gpu": 16384,
    f"{AR}.actor.ppo_epochs": 1,
    f"{AR}.rollout.name": "???",
    f"{AR}.rollout.n": 1,
    f"{AR}.rollout.tensor_model_parallel_size": 2,
    f"{AR}.rollout.data_parallel_size": 1,
    f"{AR}.rollout.pipeline_model_parallel_size": 1,
    f"{AR}.rollout.max_num_seqs": 1024,
    f"{AR}.rollout.gpu_memory_utilization": 0.5,
    f"{AR}.rollout.expert_parallel_size": 1,
    f"{AR}.rollout.log_prob_micro_batch_size_per_gpu": None,
    f"{AR}.rollout.multi_turn.enable": False,
    f"{AR}.ref.log_prob_micro_batch_size": None,
    f"{AR}.ref.log_prob_micro_batch_size_per_gpu": None,
    f"{AR}.ref.log_prob_use_dynamic_bsz": _SELECT + f"{AR}.actor.use_dynamic_bsz,false}}",
    f"{AR}.ref.log_prob_max_token_len_per_gpu":
        _SELECT + f"{AR}.actor.ppo_max_token_len_per_gpu,16384}}",
    "critic.enable": None,
    "critic.ppo_mini_batch_size": _SELECT + f"{AR}.actor.ppo_mini_batch_size,256}}",
    "critic.ppo_micro_batch_size": None,
    "critic.ppo_micro_batch_size_per_gpu": _SELECT + ".ppo_micro_batch_size,null}",
    "critic.use_dynamic_bsz": _SELECT + f"{AR}.actor.use_dynamic_bsz,false}}",
    "critic.ppo_max_token_len_per_gpu": 32768,
    "critic.forward_max_token_len_per_gpu": "${.ppo_max_token_len_per_gpu}",
    "critic.ppo_epochs": _SELECT + f"{AR}.actor.ppo_epochs,1}}",
    "reward_model.enable": False,
    "reward_model.enable_resource_pool": False,
    "reward_model.n_gpus_per_node": 8,
    "reward_model.nnodes": 0,
    "reward_model.model.path": "~/models/FsfairX-LLaMA3-RM-v0.1",
    "reward_model.use_reward_loop": True,
    "reward_model.rollout.name": "???",
    "reward_model.rollout.tensor_model_parallel_size": 2,
    "reward_model.rollout.data_parallel_size": 1,
    "reward_model.rollout.max_num_seqs": 1024,
}

MEGATRON_ENGINE: dict[str, Any] = {
    "tensor_model_parallel_size": 1,
    "pipeline_model_parallel_size": 1,
    "context_parallel_size": 1,
    "expert_model_parallel_size": 1,
    "virtual_pipeline_model_parallel_size": None,
    "use_distributed_optimizer": True,
    "param_offload": False,
    "grad_offload": False,
    "optimizer_offload": False,
    "override_transformer_config.recompute_granularity": None,
    "override_transformer_config.recompute_method": None,
    "override_transformer_config.recompute_num_layers": None,
}
_REF_FOLLOWS_ACTOR = ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                      "context_parallel_size")

MEGATRON: dict[str, Any] = {
    **COMMON,
    f"{AR}.actor.strategy": "megatron",
    f"{AR}.ref.strategy": "megatron",
    "critic.strategy": "megatron",
    f"{AR}.model.lora.rank": 0,
    "critic.model.path": "~/models/deepseek-llm-7b-chat",
    **{f"{AR}.actor.megatron.{k}": v for k, v in MEGATRON_ENGINE.items()},
    **{f"critic.megatron.{k}": v for k, v in MEGATRON_ENGINE.items()},
    **{f"{AR}.ref.megatron.{k}": _SELECT + f"{AR}.actor.megatron.{k},{v}}}"
       for k, v in MEGATRON_ENGINE.items() if k in _REF_FOLLOWS_ACTOR},
    f"{AR}.ref.megatron.param_offload": _SELECT + f"{AR}.actor.megatron.param_offload,False}}",
}

FSDP: dict[str, Any] = {
    **COMMON,
    f"{AR}.actor.strategy": "fsdp",
    f"{AR}.ref.strategy": f"${{{AR}.actor.strategy}}",
    "critic.strategy": "fsdp",
    f"{AR}.model.enable_gradient_checkpointing": True,
    f"{AR}.actor.ulysses_sequence_parallel_size": 1,
    f"{AR}.actor.fsdp_config.fsdp_size": -1,
    f"{AR}.actor.fsdp_config.param_offload": False,
    f"{AR}.actor.fsdp_config.optimizer_offload": False,
    f"{AR}.ref.fsdp_config.fsdp_size": -1,
    f"{AR}.ref.fsdp_config.param_offload": False,
    f"{AR}.ref.ulysses_sequence_parallel_size":
        _SELECT + f"{AR}.actor.ulysses_sequence_parallel_size,1}}",
    "critic.model.path": "~/models/deepseek-llm-7b-chat",
    "critic.model.enable_gradient_checkpointing": True,
    "critic.model.fsdp_config.fsdp_size": -1,
    "critic.model.fsdp_config.param_offload": False,
    "critic.model.fsdp_config.optimizer_offload": False,
    "critic.ulysses_sequence_parallel_size": 1,
    "critic.forward_micro_batch_size": _SELECT + ".ppo_micro_batch_size,null}",
    "critic.forward_micro_batch_size_per_gpu": _SELECT + ".ppo_micro_batch_size_per_gpu,null}",
}

DEFAULTS = {"fsdp": FSDP, "megatron": MEGATRON}

