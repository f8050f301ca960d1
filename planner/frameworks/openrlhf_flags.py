"""The flags of OpenRLHF v0.11.0's `python3 -m openrlhf.cli.train_ppo_ray`, by how many
values each takes, as its argparse parser defines them (OpenRLHF/OpenRLHF,
openrlhf/cli/train_ppo_ray.py, tag v0.11.0, commit 3c3be6234e0c).

Names are written without the leading `--`. tests/frameworks/test_openrlhf_flags.py checks
these sets against the checked-in copy of that file (tests/frameworks/data/openrlhf/).
Every flag not in SWITCHES, PAIRS or LISTS takes exactly one value.
"""

from __future__ import annotations

# action="store_true" / "store_false": no value.
SWITCHES = frozenset({
    'actor.freeze_visual_encoder', 'actor.gradient_checkpointing_enable',
    'actor.gradient_checkpointing_reentrant', 'actor.muon.nesterov',
    'actor.muon.no_nesterov', 'algo.advantage.is_correction_enable',
    'algo.advantage.no_std_norm', 'algo.dynamic_filtering_enable', 'algo.kl.use_loss',
    'ckpt.disable_ds', 'ckpt.load_enable', 'ckpt.save_hf', 'critic.muon.nesterov',
    'critic.muon.no_nesterov', 'critic.save_value_network', 'data.apply_chat_template',
    'data.disable_fast_tokenizer', 'ds.adam_offload', 'ds.deepcompile', 'ds.enable_sleep',
    'ds.load_in_4bit', 'ds.overlap_comm', 'ds.packing_samples', 'ds.use_liger_kernel',
    'ds.use_universal_ckpt', 'ref.offload', 'reward.normalize_enable', 'reward.offload',
    'train.async_enable', 'train.colocate_actor_ref', 'train.colocate_all',
    'train.colocate_critic_reward', 'train.dynamic_batch_enable', 'train.enable_ema',
    'train.full_determinism_enable', 'train.partial_rollout_enable', 'use_ms',
    'vllm.enable_prefix_caching', 'vllm.enable_sleep', 'vllm.enforce_eager',
    'vllm.sync_with_ray'
})
# nargs=2: two values.
PAIRS = frozenset({
    'actor.adam.betas', 'actor.eps_clip_low_high', 'algo.advantage.is_correction_threshold',
    'algo.dynamic_filtering_range', 'critic.adam.betas', 'reward.clip_range'
})
# nargs="*": any number of values.
LISTS = frozenset({
    'ds.lora.target_modules'
})
# one value each.
VALUED = frozenset({
    'actor.adam.eps', 'actor.adam.lr', 'actor.adam.weight_decay', 'actor.aux_loss_coef',
    'actor.dual_clip', 'actor.entropy_coef', 'actor.eps_clip', 'actor.lr_scheduler',
    'actor.lr_warmup_ratio', 'actor.max_norm', 'actor.min_lr_ratio',
    'actor.model_name_or_path', 'actor.muon.lr', 'actor.muon.momentum',
    'actor.muon.ns_steps', 'actor.num_gpus_per_node', 'actor.num_nodes', 'actor.optim',
    'actor.policy_loss_type', 'algo.advantage.estimator', 'algo.advantage.gamma',
    'algo.advantage.is_correction_type', 'algo.advantage.lambd', 'algo.kl.estimator',
    'algo.kl.horizon', 'algo.kl.init_coef', 'algo.kl.target', 'ckpt.best_metric_key',
    'ckpt.max_mem', 'ckpt.max_num', 'ckpt.output_dir', 'ckpt.path', 'ckpt.save_steps',
    'critic.adam.eps', 'critic.adam.lr', 'critic.adam.weight_decay',
    'critic.freezing_steps', 'critic.lr_scheduler', 'critic.lr_warmup_ratio',
    'critic.max_norm', 'critic.min_lr_ratio', 'critic.model_name_or_path', 'critic.muon.lr',
    'critic.muon.momentum', 'critic.muon.ns_steps', 'critic.num_gpus_per_node',
    'critic.num_nodes', 'critic.optim', 'critic.value_clip', 'data.dataloader_num_workers',
    'data.image_key', 'data.input_key', 'data.input_template', 'data.label_key',
    'data.max_images_per_prompt', 'data.max_len', 'data.max_samples', 'data.prompt_dataset',
    'data.prompt_probs', 'data.prompt_split', 'ds.attn_implementation',
    'ds.experts_implementation', 'ds.grad_accum_dtype', 'ds.lora.alpha', 'ds.lora.dropout',
    'ds.lora.rank', 'ds.param_dtype', 'ds.ring_attn_head_stride', 'ds.ring_attn_size',
    'ds.tensor_parallel_size', 'ds.value_head_prefix', 'ds.zero_stage', 'ds.zpg',
    'eval.dataset', 'eval.n_samples_per_prompt', 'eval.split', 'eval.steps',
    'eval.temperature', 'local_rank', 'logger.logging_steps', 'logger.tensorboard_dir',
    'logger.wandb.group', 'logger.wandb.key', 'logger.wandb.org', 'logger.wandb.project',
    'logger.wandb.run_name', 'ref.num_gpus_per_node', 'ref.num_nodes',
    'reward.model_name_or_path', 'reward.num_gpus_per_node', 'reward.num_nodes',
    'reward.overlong_buffer_len', 'reward.overlong_penalty_factor', 'reward.remote_url',
    'reward.stop_properly_penalty_coef', 'rollout.batch_size', 'rollout.max_new_tokens',
    'rollout.max_tokens_per_gpu', 'rollout.micro_batch_size',
    'rollout.n_samples_per_prompt', 'rollout.temperature', 'rollout.top_p',
    'rollout.vllm_generate_batch_size', 'train.agent_func_path', 'train.async_queue_size',
    'train.batch_size', 'train.ema_beta', 'train.max_epochs', 'train.max_tokens_per_gpu',
    'train.micro_batch_size', 'train.num_episodes', 'train.seed',
    'vllm.gpu_memory_utilization', 'vllm.num_engines', 'vllm.sync_backend',
    'vllm.tensor_parallel_size'
})
ALL_FLAGS = SWITCHES | PAIRS | LISTS | VALUED
