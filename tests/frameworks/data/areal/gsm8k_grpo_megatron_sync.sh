#!/usr/bin/env bash
# Written for rlhf-plan's tests (not AReaL's): AReaL's published GRPO example
# (gsm8k_grpo_megatron.yaml, next to this script) run synchronously, as our plans are, on
# Qwen2.5-7B (a model we have a preset for), with a KL term so that the reference runs.
python3 examples/math/gsm8k_rl.py --config gsm8k_grpo_megatron.yaml \
    scheduler.type=local \
    rollout.max_head_offpolicyness=0 \
    actor.recompute_logprob=false \
    actor.use_decoupled_loss=false \
    actor.path=Qwen/Qwen2.5-7B-Instruct \
    actor.kl_ctl=0.01
