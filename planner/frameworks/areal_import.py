"""The plan an AReaL v1.0.4 experiment config implies: a YAML config (as AReaL's
examples/math/*.yaml are, or any part of one), or a launch script that runs it with Hydra
overrides (areal_launch.py), read on top of AReaL's defaults (areal_keys.py).

Mapping (areal_rules.py says where each rule comes from):
- engines: actor (actor.backend), critic (a `critic` section), reference (a `ref` section
  and actor.kl_ctl > 0), rollout (rollout.backend); their GPUs as the scheduler hands them
  out: separated engines consecutive from GPU 0 in the order actor, critic, ref, rollout,
  colocated ones (scheduling_strategy colocation, target actor) on the actor's;
- layouts from the backend strings: a rollout of d servers x t x p GPUs, its micro-batches
  the waves of in-flight prompts (prompts / min(max_concurrent_rollouts or
  consumer_batch_size, consumer_batch_size), rounded up), or more where a server's KV pool
  (sglang.mem_fraction_static / vllm.gpu_memory_utilization: engine_batching) holds fewer
  rows than a wave gives it; a
  Megatron engine dp x tp x pp with ZeRO-1 from megatron.ddp.use_distributed_optimizer; an
  FSDP engine dp x tp with shard_parameters_over_dp;
- recomputation from gradient_checkpointing (Megatron: recompute_granularity full with
  method uniform and 1 layer -> full, selective -> selective; FSDP: full);
- micro-batches from mb_spec: at least n_mbs (Megatron with pp > 1: at least 2 pp, a multiple
  of pp); with max_tokens_per_mb, the count that holds the longest sequences (prompt +
  generation maximum) within the budget (an upper bound, noted);
- workflow: a critic -> ppo, none -> grpo; no reward call (AReaL's rewards are a reward
  function); batch: train_dataset.batch_size prompts x gconfig.n_samples, ppo_minibatches =
  actor.ppo_n_minibatches, prompt length train_dataset.max_length (the dataset's filter),
  generation length gconfig.max_new_tokens.
- staleness: rollout.max_head_offpolicyness k is the workflow's max_staleness and the plan's
  staleness; with k >= 1 the rollout batches continuously (its servers refill a finished
  row's slot) and the actor must run the decoupled loss with the proximal forward
  (use_decoupled_loss, prox_logp_method recompute or metrics), as our asynchronous plans do.
Anything that changes cost and that we cannot represent is refused with one line: an
asynchronous rollout without the decoupled loss or with a forward-free proximal method, the
recomputed proximal log-probabilities of a synchronous run, offloading, LoRA, disk weight
updates, a teacher, dynamic batches, the deprecated allocation_mode, context / expert
parallelism, interleaved pipelines.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import ValidationError

from planner.domain.builtin_workflows import (
    BUILTIN_INPUTS,
    VALUE_HEAD_ROLES,
    builtin_calls_without,
)
from planner.domain.cluster import ClusterSpec
from planner.domain.errors import InputError
from planner.domain.layout import Execution, layout_problem
from planner.domain.mesh import mesh_problem
from planner.domain.workflow import (
    BEHAVIOUR_WEIGHT_CAP,
    MAX_STALENESS,
    BatchSpec,
    ModelRole,
    Workflow,
)
from planner.frameworks.areal_backend import Backend, parse_backend
from planner.frameworks.areal_keys import MEMORY_FRACTION_KEYS, ROLE_ORDER
from planner.frameworks.areal_launch import read_config
from planner.frameworks.areal_rules import (
    COLOCATABLE,
    REWARD_CALLS,
    min_micro_batches,
    role_devices,
    rollout_batching,
)
from planner.frameworks.config_reader import ConfigReader
from planner.frameworks.engine_batching import engine_batching
from planner.frameworks.model_reference import model_spec_for
from planner.frameworks.space_common import steps
from planner.frameworks.target import ImportedConfig

ROLE_CALLS = {"actor": ("actor_train",), "ref": ("ref_inf",), "rollout": ("actor_gen",),
              "critic": ("critic_inf", "critic_train")}
PROX_LOGP_FORWARD_FREE = ("loglinear",)   # areal/utils/constants.py ProxLogpMethod
PROX_LOGP_FORWARD = ("recompute", "metrics")   # ... the two that run the proximal forward


def staleness_of(cfg: ConfigReader) -> int:
    """rollout.max_head_offpolicyness: the plan's staleness (0 to MAX_STALENESS)."""
    value = cfg.count("rollout.max_head_offpolicyness", minimum=0)
    if value > MAX_STALENESS:
        raise cfg.refuse("rollout.max_head_offpolicyness", f"expected a whole number from 0 "
                         f"to {MAX_STALENESS} (the staleness bound we price)")
    return value


def _refuse_unsupported(cfg: ConfigReader, roles: list[str]) -> None:
    """Features that change cost and that our plans cannot represent."""
    if cfg.get("allocation_mode"):
        raise cfg.refuse("allocation_mode", "deprecated (AReaL's SPMD launchers only; the "
                         "single-controller scheduler ignores it): give per-engine backends "
                         "(rollout.backend, actor.backend) and leave it empty")
    cfg.require("teacher", (None,), "a distillation teacher is not modelled")
    cfg.require("dynamic_bs", (False,), "dynamic batch sizes are not modelled")
    staleness = staleness_of(cfg)
    decoupled = cfg.get("actor.use_decoupled_loss")
    if staleness:
        # Our asynchronous plans run AReaL's decoupled PPO with the proximal forward priced.
        cfg.require("actor.use_decoupled_loss", (True,), "an asynchronous rollout "
                    "(max_head_offpolicyness >= 1) without the decoupled loss is not "
                    "modelled: our asynchronous plans recompute the proximal log-"
                    "probabilities")
        cfg.require("actor.prox_logp_method", PROX_LOGP_FORWARD, "asynchronous plans price the "
                    "proximal forward pass; a forward-free approximation is not modelled")
    elif decoupled and cfg.get("actor.prox_logp_method") not in PROX_LOGP_FORWARD_FREE:
        raise cfg.refuse("actor.use_decoupled_loss", "recomputing the proximal log-"
                         "probabilities (an extra actor forward pass) is priced only in "
                         "asynchronous plans (max_head_offpolicyness >= 1); set it false (a "
                         "synchronous run does not need it)")
    if not decoupled:
        cfg.require("actor.recompute_logprob", (False,), "recomputing the log-probabilities "
                    "(an extra actor forward pass) is not modelled; a synchronous run does not "
                    "need it")
    cfg.require("actor.weight_update_mode", ("xccl",), "weight updates through disk are not "
                "modelled")
    for key in ("rollout.scheduling_strategy.type", "actor.scheduling_strategy.type"):
        cfg.require(key, ("separation",), "colocating the rollout with the actor (offloading "
                    "both between phases) is not modelled")
    for role in roles:
        cfg.require(f"{role}.offload", (False,), "offloading is not modelled")
        cfg.require(f"{role}.use_lora", (False,), "LoRA is not modelled")
        cfg.require(f"{role}.megatron.virtual_pipeline_parallel_size", (1,),
                    "interleaved pipelines are not modelled")
        if role in COLOCATABLE:
            kind = cfg.require(f"{role}.scheduling_strategy.type", ("separation", "colocation"),
                               "scheduling strategy")
            if kind == "colocation":
                cfg.require(f"{role}.scheduling_strategy.target", ("actor",), "engines "
                            "colocate with the actor only")


def _roles(cfg: ConfigReader, notes: list[str]) -> list[str]:
    """The train engines AReaL creates (rl_trainer.py PPOTrainer.__init__)."""
    roles = ["actor"]
    if isinstance(cfg.get("critic"), dict):
        roles.append("critic")
    has_ref = isinstance(cfg.get("ref"), dict)
    kl = cfg.get("actor.kl_ctl")
    if not isinstance(kl, (int, float)) or isinstance(kl, bool):
        raise cfg.refuse("actor.kl_ctl", "expected a number")
    if has_ref and kl > 0:
        roles.append("ref")
    elif has_ref:
        notes.append(f"{cfg.source}: actor.kl_ctl {kl}: AReaL creates no reference engine "
                     f"without a KL term; the ref section is not used")
    else:
        notes.append(f"{cfg.source}: no ref section: AReaL runs no reference model")
    return roles


def _backends(cfg: ConfigReader, roles: list[str]) -> dict[str, Backend]:
    backends = {}
    for role in roles + ["rollout"]:
        parsed = parse_backend(cfg.get(f"{role}.backend"), inference=role == "rollout")
        if isinstance(parsed, str):
            raise cfg.refuse(f"{role}.backend", parsed)
        backends[role] = parsed
    return backends


def _devices(cfg: ConfigReader, backends: dict[str, Backend],
             cluster: ClusterSpec) -> dict[str, tuple[int, ...]]:
    """Each engine's GPUs on `cluster`; InputError when they do not fit."""
    actor_size = backends["actor"].world_size
    colocated = {r for r in COLOCATABLE if r in backends
                 and cfg.get(f"{r}.scheduling_strategy.type") == "colocation"}
    for role in sorted(colocated):
        if backends[role].world_size != actor_size:
            raise cfg.refuse(f"{role}.backend", f"world size {backends[role].world_size}: "
                             f"colocated with the actor it needs the actor's {actor_size} GPUs "
                             f"(one worker per GPU)")
    per_node = cfg.count("cluster.n_gpus_per_node")
    nodes = cfg.count("cluster.n_nodes")
    if set(cluster.node_devices_per_node) != {per_node}:
        raise cfg.refuse("cluster.n_gpus_per_node", f"{cluster.describe()} has "
                         f"{sorted(set(cluster.node_devices_per_node))} GPUs per node")
    separated = [r for r in ROLE_ORDER if r in backends and r not in colocated]
    need = sum(backends[r].world_size for r in separated)
    have = min(nodes * per_node, cluster.num_devices)
    if need > have:
        parts = " + ".join(f"{r} {backends[r].world_size}" for r in separated)
        raise InputError(f"{cfg.source}: cluster.n_nodes: the engines need {parts} = {need} "
                         f"GPUs; cluster.n_nodes {nodes} x n_gpus_per_node {per_node} and "
                         f"{cluster.describe()} give {have}")
    devices = role_devices({r: b.world_size for r, b in backends.items()}, colocated)
    for role, mesh in devices.items():
        problem = mesh_problem(mesh, cluster)
        if problem:
            raise cfg.refuse(f"{role}.backend", f"GPUs {mesh[0]}-{mesh[-1]} (after the "
                             f"engines before it) are not a mesh we model: {problem}")
    return devices


def _workflow(cfg: ConfigReader, roles: list[str], base_dir: Path) -> Workflow:
    algorithm = "ppo" if "critic" in roles else "grpo"
    calls = builtin_calls_without(algorithm, set(REWARD_CALLS) | (set() if "ref" in roles
                                                                 else {"ref_inf"}))
    models = {}
    for role in sorted({c.model for c in calls}):
        key = f"{role}.path"
        spec = model_spec_for(str(cfg.get(key)), cfg.source, key, base_dir)
        models[role] = ModelRole(spec=spec, head="value" if role in VALUE_HEAD_ROLES else "lm")
    minibatches = cfg.count("actor.ppo_n_minibatches")
    if "critic" in roles:
        cfg.require("critic.ppo_n_minibatches", (minibatches,), "the critic's minibatches must "
                    "be the actor's (one ppo_minibatches per plan)")
    if cfg.get("train_dataset.max_length") is None:
        raise cfg.refuse("train_dataset.max_length", "give the longest prompt in tokens (the "
                         "dataset's filter), which the plan is priced for")
    group = cfg.count("gconfig.n_samples")
    try:
        batch = BatchSpec(n_seqs=cfg.count("train_dataset.batch_size") * group,
                          prompt_len=cfg.count("train_dataset.max_length"),
                          gen_len=cfg.count("gconfig.max_new_tokens"),
                          ppo_minibatches=minibatches, group_size=group)
    except ValidationError as err:
        message = err.errors()[0]["msg"]
        raise InputError(f"{cfg.source}: actor.ppo_n_minibatches: {message}") from None
    return Workflow(algorithm=algorithm, models=models, batch=batch,
                    inputs=BUILTIN_INPUTS[algorithm], calls=calls,
                    max_staleness=staleness_of(cfg))


def _micro_batches(cfg: ConfigReader, role: str, seqs: int, backend: Backend, seq_len: int,
                   notes: list[str]) -> int:
    """Micro-batches per dp rank per step of `seqs` sequences (module docstring)."""
    if seqs % backend.dp:
        raise cfg.refuse(f"{role}.backend", f"d{backend.dp} does not divide the {seqs} "
                         f"sequences per step")
    per_rank = seqs // backend.dp
    count = max(cfg.count(f"{role}.mb_spec.n_mbs"),
                min_micro_batches(backend.pp, backend.name == "megatron"))
    budget_key = f"{role}.mb_spec.max_tokens_per_mb"
    if cfg.get(budget_key) is not None:
        budget = cfg.count(budget_key)
        count = max(count, math.ceil(per_rank * seq_len / budget))
    if backend.name == "megatron":
        count = math.ceil(count / backend.pp) * backend.pp   # n_mbs_divisor = pp
    count = min(count, per_rank)
    if cfg.get(budget_key) is not None:
        notes.append(f"{budget_key}: priced as {count} micro-batch(es) per GPU, the count that "
                     f"holds {per_rank} longest sequences of {seq_len} tokens (an upper bound)")
    return count


def _rollout_waves(cfg: ConfigReader, workflow: Workflow, backend: Backend,
                   devices: tuple[int, ...], cluster: ClusterSpec, notes: list[str]) -> int:
    """Micro-batches of the generate call: waves of in-flight prompts (areal_rules.py), each
    server holding at most what its KV pool holds (planner.frameworks.engine_batching:
    SGLang's sglang.mem_fraction_static, vLLM's vllm.gpu_memory_utilization)."""
    prompts = workflow.batch.n_seqs // workflow.batch.group_size
    consumer = cfg.require("rollout.consumer_batch_size", (prompts,), "a step consumes "
                           "train_dataset.batch_size prompts; other consumer batch sizes are "
                           "not modelled")
    given = cfg.get("rollout.max_concurrent_rollouts")
    concurrent = consumer if given is None else min(cfg.count(
        "rollout.max_concurrent_rollouts"), consumer)
    waves = math.ceil(prompts / concurrent)
    if prompts % concurrent:
        notes.append(f"rollout.max_concurrent_rollouts {concurrent}: {prompts} prompts priced "
                     f"as {waves} full waves (the last one is partial)")
    memory_key = MEMORY_FRACTION_KEYS[backend.name]
    batching = engine_batching(
        workflow, "actor_gen", cluster, devices, backend.dp, backend.tp,
        concurrent * workflow.batch.group_size / backend.dp,
        "rollout.max_concurrent_rollouts x n_samples / servers", cfg.number(memory_key, 0.0, 1.0),
        memory_key)
    if batching.problem():
        raise cfg.refuse(memory_key, batching.problem())
    notes.append(f"{cfg.source}: {batching.note()}")
    return max(waves, batching.micro_batches)


def _train_policy(cfg: ConfigReader, role: str, backend: Backend) -> dict:
    if backend.name == "fsdp":
        recompute = "full" if cfg.get(f"{role}.gradient_checkpointing") else "none"
        return {"recompute": recompute, "shard_optimizer_over_dp": True}
    recompute = "none"
    if cfg.get(f"{role}.gradient_checkpointing"):
        prefix = f"{role}.megatron"
        recompute = cfg.require(f"{prefix}.recompute_granularity", ("full", "selective"),
                                "recompute granularity")
        if recompute == "full":
            cfg.require(f"{prefix}.recompute_method", ("uniform",), "full recomputation of "
                        "every layer")
            cfg.require(f"{prefix}.recompute_num_layers", (1,), "full recomputation of every "
                        "layer")
    return {"recompute": recompute, "shard_optimizer_over_dp": bool(
        cfg.get(f"{role}.megatron.ddp.use_distributed_optimizer"))}


def _executions(cfg: ConfigReader, workflow: Workflow, backends: dict[str, Backend],
                devices: dict[str, tuple[int, ...]], cluster: ClusterSpec,
                notes: list[str]) -> dict[str, Execution]:
    batch = workflow.batch
    executions = {}
    for role, backend in backends.items():
        for name in ROLE_CALLS[role]:
            call = workflow.call_by_name[name]
            fields = {"devices": devices[role], "dp": backend.dp, "tp": backend.tp,
                      "pp": backend.pp}
            if role == "rollout":
                fields["micro_batches"] = _rollout_waves(cfg, workflow, backend,
                                                         devices[role], cluster, notes)
                fields["decode_batching"] = rollout_batching(workflow)
            else:
                fields["micro_batches"] = _micro_batches(cfg, role, steps(workflow, name),
                                                         backend, batch.seq_len, notes)
                fields["shard_parameters_over_dp"] = backend.name == "fsdp"
                if call.kind == "train":
                    fields.update(_train_policy(cfg, role, backend))
            ex = Execution(**fields)
            problem = layout_problem(ex, workflow.models[call.model].spec, cluster, call, batch)
            if problem:
                raise cfg.refuse(f"{role}.backend", f"{name}: {problem}")
            executions[name] = ex
    return executions


def import_areal(path: Path, cluster: ClusterSpec) -> ImportedConfig:
    """The plan of an AReaL config on `cluster` (module docstring)."""
    path = Path(path)
    cfg, notes = read_config(path)
    roles = _roles(cfg, notes)
    _refuse_unsupported(cfg, roles)
    backends = _backends(cfg, roles)
    devices = _devices(cfg, backends, cluster)
    workflow = _workflow(cfg, roles, path.parent)
    executions = _executions(cfg, workflow, backends, devices, cluster, notes)
    notes.append(f"{cfg.source}: rewards come from the rollout workflow's reward function "
                 f"(rule-based), not priced")
    if workflow.max_staleness:
        notes.append(f"{cfg.source}: asynchronous at staleness {workflow.max_staleness}; "
                     f"actor.rejection_sampling shapes the loss, not its cost (`plan run` "
                     f"clamps each token's behaviour weight at {BEHAVIOUR_WEIGHT_CAP:g})")
    return ImportedConfig(workflow=workflow, executions=executions, notes=notes,
                          staleness=workflow.max_staleness)
