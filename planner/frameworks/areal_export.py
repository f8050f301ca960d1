"""A plan as AReaL v1.0.4 runs it: the keys of an experiment config (nested YAML, as
AReaL's examples/math/*.yaml are) that fix the plan's engines, GPUs, batch and lengths.

Keys and sources: planner/frameworks/areal_keys.py; what is expressible: areal_rules.py.
Choices made here:
- backends: a generate call with pp 1 runs on SGLang (AReaL's examples' engine), with
  pp > 1 on vLLM (SGLang takes no p); a sharded train / inference call on FSDP, the others
  on Megatron;
- micro-batches: mb_spec.max_tokens_per_mb = (sequences per dp rank per step / micro_batches)
  x the longest sequence (prompt_len + gen_len), so that the engine's count for the longest
  sequences is the plan's (n_mbs keeps its default 1); the critic's budget is its training
  call's (critic_inf then runs ppo_minibatches times as many);
- recomputation: gradient_checkpointing; Megatron's selective mode through
  megatron.recompute_granularity (its full mode is AReaL's default: uniform, 1 layer);
- staleness: a synchronous plan (s = 0) writes rollout.max_head_offpolicyness 0 and no
  recomputed proximal log-probabilities (actor.recompute_logprob, use_decoupled_loss false),
  since a synchronous rollout's log-probabilities are the current actor's. An asynchronous
  plan (s >= 1: generation on weights up to s versions old, on its own GPUs, as AReaL's
  rollout servers always are) writes max_head_offpolicyness s and AReaL's decoupled PPO as
  our runtime runs it (runtime/algorithms/common.py): use_decoupled_loss and
  recompute_logprob true, prox_logp_method recompute (the proximal forward the cost model
  prices), and the behaviour importance weight clamped at BEHAVIOUR_WEIGHT_CAP per token
  (actor.rejection_sampling: level token, action clamp, metric ratio, upper the cap; AReaL
  v1.0.4's replacement of behav_imp_weight_cap);
- the reference's KL coefficient is AReaL's default kl_ctl 0.1 (0.0 and no ref section
  without a reference call);
- the rollout's micro-batches (waves of in-flight prompts, areal_rules.py):
  rollout.max_concurrent_rollouts = prompts / micro_batches, consumer_batch_size = prompts;
- scheduler.type local on one node, ray on several.
"""

from __future__ import annotations

from typing import Any

import yaml

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.workflow import BEHAVIOUR_WEIGHT_CAP, Workflow
from planner.frameworks.areal_backend import Backend
from planner.frameworks.areal_keys import ACTOR_ONLY, AREAL_TAG, AREAL_VERSION
from planner.frameworks.config_reader import nested
from planner.frameworks.model_reference import model_path_for
from planner.frameworks.space_common import steps

NO_KL = 0.0


def backend_of(workflow: Workflow, name: str, ex: Execution) -> Backend:
    """The AReaL backend that runs call `name` with execution `ex` (module docstring)."""
    if workflow.call_by_name[name].kind == "generate":
        engine = "sglang" if ex.pp == 1 else "vllm"
    else:
        engine = "fsdp" if ex.shard_parameters_over_dp else "megatron"
    return Backend(name=engine, dp=ex.dp, tp=ex.tp, pp=ex.pp)


def max_tokens_per_mb(workflow: Workflow, name: str, ex: Execution) -> int:
    """The token budget per micro-batch that gives `ex.micro_batches` (module docstring)."""
    per_rank = steps(workflow, name) // ex.dp
    return per_rank // ex.micro_batches * workflow.batch.seq_len


def _engine_keys(workflow: Workflow, role: str, name: str, ex: Execution,
                 notes: list[str]) -> dict[str, Any]:
    """An engine's backend, model, micro-batch budget and (train calls) policy."""
    backend = backend_of(workflow, name, ex)
    keys: dict[str, Any] = {"backend": backend.text(),
                            "path": model_path_for(workflow, role, notes),
                            "mb_spec.max_tokens_per_mb": max_tokens_per_mb(workflow, name, ex)}
    if workflow.call_by_name[name].kind == "train":
        keys["gradient_checkpointing"] = ex.recompute != "none"
        keys["ppo_n_minibatches"] = workflow.batch.ppo_minibatches
        if backend.name == "megatron":
            keys["megatron.ddp.use_distributed_optimizer"] = ex.shard_optimizer_over_dp
            if ex.recompute == "selective":
                keys["megatron.recompute_granularity"] = "selective"
    return keys


def _colocation(role_devices: tuple[int, ...], actor_devices: tuple[int, ...]) -> dict:
    if role_devices == actor_devices:
        return {"scheduling_strategy.type": "colocation", "scheduling_strategy.target": "actor"}
    return {"scheduling_strategy.type": "separation"}


def config_for(workflow: Workflow, cluster: ClusterSpec, executions: dict[str, Execution],
               staleness: int = 0) -> tuple[dict[str, Any], list[str]]:
    """({dotted key: value}, notes) of an expressible plan at `staleness`."""
    notes: list[str] = []
    batch = workflow.batch
    train = executions["actor_train"]
    prompts = batch.n_seqs // batch.group_size
    keys: dict[str, Any] = {
        "cluster.n_nodes": cluster.num_nodes,
        "cluster.n_gpus_per_node": cluster.node_devices_per_node[0],
        "scheduler.type": "local" if cluster.num_nodes == 1 else "ray",
        "rollout.backend": backend_of(workflow, "actor_gen", executions["actor_gen"]).text(),
        "rollout.max_head_offpolicyness": staleness,
        "rollout.consumer_batch_size": prompts,
        "rollout.max_concurrent_rollouts": prompts // executions["actor_gen"].micro_batches,
        "gconfig.n_samples": batch.group_size,
        "gconfig.max_new_tokens": batch.gen_len,
        "train_dataset.batch_size": prompts,
        "train_dataset.max_length": batch.prompt_len,
    }
    actor = _engine_keys(workflow, "actor", "actor_train", train, notes)
    actor.update({"kl_ctl": ACTOR_ONLY["kl_ctl"] if "ref_inf" in executions else NO_KL,
                  "recompute_logprob": staleness > 0, "use_decoupled_loss": staleness > 0})
    if staleness:
        actor.update({"prox_logp_method": "recompute",
                      "rejection_sampling": {"level": "token", "action": "clamp",
                                             "metric": "ratio",
                                             "upper": BEHAVIOUR_WEIGHT_CAP}})
    keys.update({f"actor.{k}": v for k, v in actor.items()})
    if "ref_inf" in executions:
        ref = executions["ref_inf"]
        ref_keys = {**_engine_keys(workflow, "ref", "ref_inf", ref, notes),
                    **_colocation(ref.devices, train.devices), "optimizer": None}
        keys.update({f"ref.{k}": v for k, v in ref_keys.items()})
    else:
        keys["ref"] = None
    if "critic_train" in executions:
        critic = executions["critic_train"]
        critic_keys = {"is_critic": True,
                       **_engine_keys(workflow, "critic", "critic_train", critic, notes),
                       **_colocation(critic.devices, train.devices)}
        keys.update({f"critic.{k}": v for k, v in critic_keys.items()})
    return keys, notes


def config_text(workflow: Workflow, cluster: ClusterSpec, executions: dict[str, Execution],
                staleness: int = 0) -> str:
    """The YAML text (module docstring), with a header naming the version."""
    keys, notes = config_for(workflow, cluster, executions, staleness)
    timing = ([f"# Asynchronous: rollout.max_head_offpolicyness {staleness} (the plan's "
               f"staleness), with the decoupled",
               "# PPO loss (proximal log-probabilities recomputed, behaviour weights clamped "
               f"at {BEHAVIOUR_WEIGHT_CAP:g})."]
              if staleness else
              ["# Synchronous: rollout.max_head_offpolicyness 0 (the plan's staleness), so",
               "# actor.recompute_logprob / use_decoupled_loss are false."])
    header = [
        (f"# {AREAL_VERSION} (inclusionAI/AReaL, tag {AREAL_TAG}): the keys of an experiment "
        f"config"),
        f"# for {workflow.algorithm} on {cluster.describe()}, written by rlhf-plan.",
        "# Copy them into your config (e.g. AReaL's examples/math/gsm8k_grpo_megatron.yaml) and",
        "# run: python3 examples/math/gsm8k_rl.py --config <that config>.",
        *timing,
        "# Set train_dataset.path (and your reward function) before running.",
        *[f"# Note: {note}" for note in notes],
    ]
    body = yaml.safe_dump(nested(keys), sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body
