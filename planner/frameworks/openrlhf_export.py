"""A plan as OpenRLHF train_ppo_ray resource flags (OpenRLHFLayout), or the reasons it has
none: one line per feature OpenRLHF v0.11.0 cannot express.

What it can express (planner/frameworks/openrlhf_layout.py says where each rule is from):
generation on vLLM engines (data x tensor parallel, no pipeline, micro-batches of at most
min(vLLM's default max_num_seqs, which no flag changes, the rows the KV pool of the default
--vllm.gpu_memory_utilization holds): openrlhf_layout.rollout_batching);
every other call under one DeepSpeed strategy: the same ZeRO stage and AutoTP degree for
every role, no pipeline parallelism, gradient checkpointing of whole layers on or off for
the actor and the critic together (--actor.gradient_checkpointing_enable is read by both,
openrlhf/trainer/ray/ppo_critic.py), one per-GPU micro-batch size for training and one for
inference; the critic's inference and training on the same DeepSpeed group; the
placement of openrlhf_layout.role_devices. The plan is then rebuilt from the flags and
compared call by call, so that an exported plan reads back as itself.
"""

from __future__ import annotations

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.workflow import Workflow
from planner.frameworks.openrlhf_layout import (
    INFERENCE_CALLS,
    TRAIN_CALLS,
    OpenRLHFLayout,
    executions_of,
    rollout_batching,
)
from planner.frameworks.workflow_fit import builtin_call_problems

ESTIMATORS = {"ppo": "gae", "grpo": "group_norm", "rloo": "rloo"}


def workflow_problems(workflow: Workflow) -> list[str]:
    """Why train_ppo_ray cannot run `workflow` at all: an algorithm other than
    ESTIMATORS', or calls other than its built-in ones (OpenRLHF v0.11.0 always runs the
    reward model, and the reference: plan import refuses --algo.kl.init_coef 0 and remote
    rewards)."""
    if workflow.algorithm not in ESTIMATORS:
        return [(f"workflow: algorithm {workflow.algorithm}: train_ppo_ray runs ppo (gae), "
                 f"grpo (group_norm) and rloo")]
    return builtin_call_problems(workflow, "OpenRLHF", ())


def _one(values: dict[str, object], what: str, reasons: list[str]) -> object | None:
    """The single value all calls share, or None with a reason naming each call's."""
    distinct = set(values.values())
    if len(distinct) == 1:
        return distinct.pop()
    listed = ", ".join(f"{name} {value}" for name, value in values.items())
    reasons.append(f"OpenRLHF has one {what} for all DeepSpeed roles; the plan has {listed}")
    return None


def _per_gpu(seqs: int, ex: Execution) -> int | None:
    return seqs // (ex.dp * ex.micro_batches) if seqs % (ex.dp * ex.micro_batches) == 0 \
        else None


def layout_from_plan(workflow: Workflow, cluster: ClusterSpec,
                     executions: dict[str, Execution]) -> tuple[OpenRLHFLayout | None, list[str]]:
    reasons = workflow_problems(workflow)
    if reasons:
        return None, reasons
    for name in workflow.call_order:
        if executions[name].pp > 1:
            reasons.append(f"{name}: pp {executions[name].pp}; OpenRLHF has no pipeline "
                           f"parallelism (vLLM and DeepSpeed run tp x dp)")
    gen = executions["actor_gen"]
    engines = rollout_batching(workflow, cluster, "actor_gen", gen.devices, gen.dp, gen.tp)
    if gen.micro_batches != engines.micro_batches:
        reasons.append(f"actor_gen: micro_batches {gen.micro_batches}; OpenRLHF v0.11.0 sets "
                       f"no max_num_seqs for its vLLM engines (no flag): {gen.dp} engines run "
                       f"micro_batches {engines.micro_batches} ({engines.note()})")
    deepspeed = {n: executions[n] for n in workflow.call_order
                 if n in TRAIN_CALLS or n in INFERENCE_CALLS}
    train = {n: ex for n, ex in deepspeed.items() if n in TRAIN_CALLS}
    inference = {n: ex for n, ex in deepspeed.items() if n in INFERENCE_CALLS}
    ds_tp = _one({n: ex.tp for n, ex in deepspeed.items()},
                 "AutoTP degree (--ds.tensor_parallel_size)", reasons)
    sharded = _one({n: ex.shard_parameters_over_dp for n, ex in deepspeed.items()},
                   "ZeRO-3 setting (--ds.zero_stage 3: parameters sharded)", reasons)
    optimizer = _one({n: ex.shard_optimizer_over_dp for n, ex in train.items()},
                     "optimizer sharding (--ds.zero_stage >= 1)", reasons)
    modes = {n: ex.recompute for n, ex in train.items()}
    selective = [n for n, mode in modes.items() if mode == "selective"]
    if selective:
        reasons.append(f"{selective[0]}: recompute selective; OpenRLHF checkpoints whole "
                       f"layers (--actor.gradient_checkpointing_enable) or nothing")
    recompute = _one(modes, "gradient checkpointing switch", reasons)
    per_step = workflow.batch.n_seqs // workflow.batch.ppo_minibatches
    train_mbs = _one({n: _per_gpu(per_step, ex) for n, ex in train.items()},
                     "--train.micro_batch_size (samples per GPU)", reasons)
    rollout_mbs = _one({n: _per_gpu(workflow.batch.n_seqs, ex) for n, ex in inference.items()},
                       "--rollout.micro_batch_size (samples per GPU)", reasons)
    for what, value in (("train", train_mbs), ("rollout", rollout_mbs)):
        if value is None and not any(f"--{what}.micro_batch_size" in r for r in reasons):
            reasons.append(f"the {what} calls' micro-batches do not give a whole number of "
                           f"samples per GPU (--{what}.micro_batch_size)")
    has_critic = "critic_train" in executions
    if has_critic and executions["critic_inf"].placement != executions["critic_train"].placement:
        reasons.append("critic_inf and critic_train run on different layouts; OpenRLHF runs "
                       "both on the critic's one DeepSpeed group")
    if reasons:
        return None, reasons
    devices = {role: executions[call].devices for call, role in
               {**INFERENCE_CALLS, **TRAIN_CALLS}.items() if call in executions}
    colocate_all = gen.devices == devices["actor"]
    critic_reward_together = has_critic and devices["critic"] == devices["reward"]
    actor_prefix = devices["actor"][:len(devices["reward"])]
    layout = OpenRLHFLayout(
        actor_gpus=len(devices["actor"]), ref_gpus=len(devices["ref"]),
        reward_gpus=len(devices["reward"]),
        critic_gpus=len(devices["critic"]) if has_critic else None,
        vllm_engines=gen.dp, vllm_tp=gen.tp, colocate_all=colocate_all,
        colocate_actor_ref=not colocate_all and devices["ref"] == devices["actor"],
        colocate_critic_reward=critic_reward_together
        and not (colocate_all and devices["reward"] == actor_prefix),
        zero_stage=3 if sharded else (1 if optimizer else 0), ds_tp=ds_tp,
        gradient_checkpointing=recompute == "full",
        train_micro_batch_size=train_mbs, rollout_micro_batch_size=rollout_mbs)
    return layout, placement_differences(layout, workflow, cluster, executions)


def placement_differences(layout: OpenRLHFLayout, workflow: Workflow, cluster: ClusterSpec,
                          executions: dict[str, Execution]) -> list[str]:
    """A line per call whose execution OpenRLHF would not give it under `layout`."""
    rebuilt, problems = executions_of(layout, workflow, cluster)
    if problems:
        return problems
    reasons = []
    for name in workflow.call_order:
        want, got = executions[name], rebuilt[name]
        if want != got:
            reasons.append(
                f"{name}: OpenRLHF would run it on devices {got.devices[0]}-{got.devices[-1]} "
                f"as {got.layout_text()} (its placement groups: colocated roles share GPUs, "
                f"others get their own, largest first); the plan has devices "
                f"{want.devices[0]}-{want.devices[-1]} as {want.layout_text()}")
    return reasons
