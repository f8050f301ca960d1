"""ROLL 0.3.0's pipeline-config keys that plan export writes and plan import reads, with the
defaults ROLL gives the keys a config leaves out.

Sources (alibaba/ROLL, tag v0.3.0, commit 7f9d4d3873a87679c8d070085a4bd3bdeea7e589):
- roll/configs/base_config.py (BaseConfig, PPOConfig): rollout_batch_size 128 prompts,
  prompt_length / response_length (or sequence_length = prompt + response), ppo_epochs 1,
  adv_estimator gae, init_kl_coef 0.2, use_kl_loss false, async_generation_ratio 0; the
  reference runs when use_kl_loss or init_kl_coef > 0 (enable_reference); the critic model
  is critic.model_args.model_name_or_path, else reward_pretrain; the actor's and the
  reference's are pretrain; num_gpus_per_node is set from the node's device count.
- roll/pipeline/rlvr/rlvr_config.py (RLVRConfig): num_return_sequences_in_group 1, the
  `rewards` domains (RewardConfig), the shared `reward_model` cluster.
- roll/configs/worker_config.py (WorkerConfig, StrategyArguments): per role device_mapping
  (roll_devices.py), strategy_args.strategy_name (STRATEGY_NAMES) and strategy_config,
  infer_batch_size 16, num_gpus_per_worker 1 (vLLM: tensor_parallel_size x
  pipeline_parallel_size).
- roll/configs/training_args.py: per_device_train_batch_size 8, gradient_accumulation_steps 1.
- roll/pipeline/rlvr/rlvr_pipeline.py: which clusters run (critic only with adv_estimator
  gae; the reference only when enabled), and in what order.
- roll/distributed/strategy/vllm_strategy.py (VllmStrategy.initialize): actor_infer's
  strategy_config is passed to vLLM as engine arguments (roll/third_party/vllm/__init__.py,
  create_async_llm: AsyncEngineArgs(**strategy_config).create_engine_config(
  UsageContext.ENGINE_CONTEXT)), with max_num_batched_tokens 8192 where it is left out.
- roll/distributed/strategy/sglang_strategy.py (SGLangStrategy.initialize): strategy_config
  is passed to SGLang's server arguments; mem_fraction_static is indexed (required).
Copies of four ROLL configs are checked in under tests/frameworks/data/roll/ (README.md).

vLLM's defaults where strategy_config leaves a key out: ROLL 0.3.0 pins vllm==0.10.2
(requirements_torch280_vllm.txt; requirements_torch260_vllm.txt pins the older 0.8.4), and
we take 0.10.2's (vllm-project/vllm v0.10.2, read from its PyPI sdist vllm-0.10.2.tar.gz):
- gpu_memory_utilization 0.9: vllm/config/cache.py, CacheConfig.gpu_memory_utilization,
  which EngineArgs.gpu_memory_utilization defaults to (vllm/engine/arg_utils.py);
- max_num_seqs 128: EngineArgs.max_num_seqs is None; ROLL runs the V1 engine (VLLM_USE_V1 1),
  whose EngineArgs._set_default_args_v1 sets a default only for UsageContext.LLM_CLASS and
  OPENAI_API_SERVER, not ENGINE_CONTEXT, so SchedulerConfig.__post_init__
  (vllm/config/scheduler.py) sets 128. (vLLM 0.8.4's V1 default is 1024 on H100 / H200
  and 256 elsewhere, for every usage context: a config run on the 0.8.4 image with no
  max_num_seqs batches more rows at once than we price.)
- SchedulerConfig.__post_init__ refuses max_num_batched_tokens < max_num_seqs.
"""

from __future__ import annotations

from typing import Any

ROLL_VERSION = "ROLL 0.3.0"
KEY_SOURCES = (
    ("alibaba/ROLL", "roll/configs/base_config.py", "v0.3.0"),
    ("alibaba/ROLL", "roll/configs/worker_config.py", "v0.3.0"),
    ("alibaba/ROLL", "roll/pipeline/rlvr/rlvr_config.py", "v0.3.0"),
    ("alibaba/ROLL", "roll/pipeline/rlvr/rlvr_pipeline.py", "v0.3.0"),
    ("alibaba/ROLL", "roll/distributed/scheduler/resource_manager.py", "v0.3.0"),
    ("alibaba/ROLL", "roll/distributed/strategy/vllm_strategy.py", "v0.3.0"),
    ("alibaba/ROLL", "requirements_torch280_vllm.txt", "v0.3.0"),
    ("vllm-project/vllm", "vllm/engine/arg_utils.py", "v0.10.2"),
    ("vllm-project/vllm", "vllm/config/scheduler.py", "v0.10.2"),
    ("alibaba/ROLL", "examples/qwen2.5-7B-rlvr_megatron/rlvr_config_8gpus.yaml", "v0.3.0"),
)
BASE_EXAMPLE = "examples/qwen2.5-7B-rlvr_megatron/rlvr_config_8gpus.yaml"
ENTRY_POINT = "examples/start_rlvr_pipeline.py"

STRATEGY_NAMES = ("hf_infer", "vllm", "sglang", "megatron_infer", "megatron_train",
                  "fsdp2_train", "fsdp2_infer")
TRAIN_STRATEGIES = ("megatron_train", "fsdp2_train")
INFER_STRATEGIES = ("megatron_infer", "fsdp2_infer", "hf_infer")
ENGINES = ("vllm", "sglang")

# Engine (actor_infer.strategy_args.strategy_config) keys and defaults (module docstring).
VLLM_MAX_NUM_SEQS = 128
VLLM_GPU_MEMORY_UTILIZATION = 0.9
ROLL_MAX_NUM_BATCHED_TOKENS = 8192   # vllm_strategy.py's default for vLLM's key
SGLANG_MEMORY_KEY = "mem_fraction_static"
SGLANG_CONCURRENCY_KEY = "max_running_requests"

# Our algorithm -> ROLL's adv_estimator (exported); ROLL's estimators we read, and the
# workflow whose calls they run (reinforce runs GRPO's calls: no critic, a group of samples).
ADV_ESTIMATOR = {"ppo": "gae", "grpo": "grpo"}
ALGORITHM_OF_ESTIMATOR = {"gae": "ppo", "grpo": "grpo", "reinforce": "grpo"}

# Roles (top-level config keys) and the calls each runs.
ROLE_CALLS = {"actor_infer": ("actor_gen",), "actor_train": ("actor_train",),
              "reference": ("ref_inf",), "critic": ("critic_inf", "critic_train")}
REWARD_DOMAIN = "reward_model"   # the domain export writes for a reward model
REWARD_MODEL_WORKER = "roll.pipeline.base_worker.RewardWorker"
LLM_JUDGE_WORKER = "roll.pipeline.rlvr.rewards.llm_judge_reward_worker.LLMJudgeRewardWorker"
RULE_REWARD = {   # the rule reward of ROLL's examples, written when a plan has no reward model
    "worker_cls": "roll.pipeline.rlvr.rewards.math_rule_reward_worker.MathRuleRewardWorker",
    "tag_included": ["deepmath_103k", "aime"],
    "world_size": 8,
    "infer_batch_size": 1,
}

# ROLL's defaults of the top-level keys we read.
DEFAULTS: dict[str, Any] = {
    "rollout_batch_size": 128,
    "num_return_sequences_in_group": 1,
    "prompt_length": None,
    "response_length": None,
    "sequence_length": None,
    "ppo_epochs": 1,
    "adv_estimator": "gae",
    "init_kl_coef": 0.2,
    "use_kl_loss": False,
    "enable_reference": False,
    "async_generation_ratio": 0,
    "is_offload_states": False,
    "use_opd": False,
    "is_pure_opd": False,
    "num_gpus_per_node": 8,
}
# ROLL's defaults of the per-role keys we read.
ROLE_DEFAULTS: dict[str, Any] = {
    "infer_batch_size": 16,
    "num_gpus_per_worker": 1,
    "training_args.per_device_train_batch_size": 8,
    "training_args.gradient_accumulation_steps": 1,
    "model_args.disable_gradient_checkpointing": False,
    "model_args.dtype": "bf16",
    "model_args.lora_rank": None,
    "model_args.ulysses_size": None,
    "use_dynamic_batching_in_train": False,
    "use_dynamic_batching_in_infer": False,
    "use_sequence_packing": False,
}
# strategy_config keys that must keep these values: (allowed, why).
FIXED_STRATEGY_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "context_parallel_size": ((1,), "context parallelism is not modelled"),
    "expert_model_parallel_size": ((1,), "dense models only (no expert parallelism)"),
    "virtual_pipeline_model_parallel_size": ((None,), "interleaved pipelines are not modelled"),
    "data_parallel_size": ((1,), ("vLLM's internal data parallelism is not read; give "
                                  "device_mapping / tensor_parallel_size engines")),
    "pipeline_parallel_size": ((1,), "pipeline-parallel generation engines are not read"),
    "offload_policy": ((False,), "CPU offloading is not modelled"),
}
