"""The plan a verl 0.7.0 config implies: a shell script of Hydra overrides for
`python3 -m verl.trainer.main_ppo` (as verl's examples are) or a YAML config (the merged
config, or any part of it), read on top of verl's default config of its strategy
(planner/frameworks/verl_keys.py, which names the sources).

Mapping (verl_rules.py says where each rule comes from):
- pools: the global pool is trainer.nnodes x trainer.n_gpus_per_node GPUs from the first
  device; the reward model's own pool (reward_model.enable_resource_pool) the next ones;
- FSDP (actor.strategy fsdp / fsdp2): the actor's training and the reference's inference
  on all pool devices with dp = devices, shard_parameters_over_dp (fsdp_size -1 or the
  pool size: one shard group; a smaller fsdp_size, hybrid sharding, is refused); the
  critic alike; recomputation full when model.enable_gradient_checkpointing, else none;
- Megatron: dp x tp x pp from the role's megatron.* keys (dp = pool / (tp x pp)),
  ZeRO-1 from use_distributed_optimizer, recomputation from override_transformer_config;
- rollout (and the reward loop's engine): tp from tensor_model_parallel_size, dp = pool /
  tp; the rollout's micro-batches ceil(sequences per engine / min(max_num_seqs, the rows
  the KV pool of rollout.gpu_memory_utilization holds)) (planner.frameworks.
  engine_batching), the reward loop's ceil(sequences per engine / max_num_seqs): static
  micro-batches as an upper bound of continuous batching;
- batch: data.train_batch_size prompts x rollout.n samples, ppo_minibatches =
  train_batch_size / actor.ppo_mini_batch_size, lengths from data.max_*_length;
  micro-batches from *_micro_batch_size_per_gpu; with use_dynamic_bsz, the count that
  holds the longest sequences within the token budget per GPU (an upper bound);
- workflow: adv_estimator gae -> ppo, grpo, rloo, remax; no reward model
  (reward_model.enable false) -> no reward calls (rule-based rewards are not priced); no
  KL term -> no reference call.
Anything that changes cost and that we cannot represent is refused with one line.
"""

from __future__ import annotations

import math
from pathlib import Path

from planner.domain.builtin_workflows import (
    BUILTIN_INPUTS,
    VALUE_HEAD_ROLES,
    builtin_calls_without,
)
from planner.domain.cluster import ClusterSpec
from planner.domain.errors import InputError
from planner.domain.input_files import read_input_text
from planner.domain.layout import Execution
from planner.domain.workflow import BatchSpec, ModelRole, Workflow
from planner.domain.yamlio import parse_yaml
from planner.frameworks.config_reader import ConfigReader, flat_overrides, nested
from planner.frameworks.engine_batching import engine_batching, rows_per_engine
from planner.frameworks.hydra_overrides import apply_overrides, command_in_script
from planner.frameworks.model_reference import model_spec_for
from planner.frameworks.target import ImportedConfig
from planner.frameworks.verl_keys import (
    AR,
    CONFIG_NAMES,
    DEFAULT_CONFIG_NAME,
    DEFAULTS,
)
from planner.frameworks.verl_rules import (
    ADV_ESTIMATOR,
    REF_CALLS,
    REWARD_CALLS,
    engine_micro_batches,
    global_pool,
    reward_pool,
)

ENTRY_MODULE = "verl.trainer.main_ppo"
ENGINES = ("vllm", "sglang")
STRATEGIES = {"fsdp": "fsdp", "fsdp2": "fsdp", "megatron": "megatron"}


def read_config(path: Path) -> tuple[ConfigReader, list[str]]:
    """The merged config of a script or YAML file, and notes from reading it."""
    source = str(path)
    text = read_input_text(path, "verl config")
    if path.suffix in (".yaml", ".yml"):
        data = parse_yaml(text, path)
        if not isinstance(data, dict):
            raise InputError(f"{source}: (top level): expected a verl config mapping")
        if "defaults" in data:
            raise InputError(f"{source}: defaults: a Hydra defaults list is not read; give the "
                             f"merged config (verl's scripts/print_cfg.py prints it)")
        actor = data.get(AR, {}).get("actor", {}) if isinstance(data.get(AR), dict) else {}
        strategy = STRATEGIES.get(actor.get("strategy", "fsdp") if isinstance(actor, dict)
                                  else "fsdp", "fsdp")
        overrides, notes = flat_overrides(data), []
    else:
        command = command_in_script(text, source, ENTRY_MODULE)
        if command.config_path not in (None, "config"):
            raise InputError(f"{source}: --config-path {command.config_path}: only verl's "
                             f"own config folder ('config') is read; give the merged config")
        name = command.config_name or DEFAULT_CONFIG_NAME
        name = name if name.endswith(".yaml") else name + ".yaml"
        by_name = {v: k for k, v in CONFIG_NAMES.items()}
        if name not in by_name:
            raise InputError(f"{source}: --config-name {name}: supported: "
                             f"{', '.join(CONFIG_NAMES.values())}")
        strategy, overrides, notes = by_name[name], list(command.overrides), command.notes
    defaults = DEFAULTS[strategy]
    merged = apply_overrides(nested(defaults), overrides, source)
    unread = sorted({o.key for o in overrides} - set(defaults))
    if unread:
        notes.append(f"{source}: not read, as they do not change what we price: "
                     f"{', '.join(unread)}")
    return ConfigReader(merged, source, [o.key for o in overrides]), notes


def _refuse_unsupported(cfg: ConfigReader, strategy: str) -> None:
    """Features that change cost and that our plans cannot represent."""
    cfg.require(f"{AR}.hybrid_engine", (True,), "verl 0.7.0 runs the hybrid engine only")
    cfg.require(f"{AR}.actor.ppo_epochs", (1,), "our plans train one epoch per batch")
    cfg.require(f"{AR}.model.lora_rank", (0,), "LoRA is not modelled")
    cfg.require(f"{AR}.rollout.multi_turn.enable", (False,), "multi-turn / tool rollouts "
                "are not modelled")
    cfg.require(f"{AR}.rollout.name", ENGINES, "rollout engine")
    cfg.require(f"{AR}.rollout.pipeline_model_parallel_size", (1,), "verl's vLLM / SGLang "
                "rollouts run pp 1")
    cfg.require(f"{AR}.rollout.expert_parallel_size", (1,), "dense models only")
    for role in (f"{AR}.actor", f"{AR}.ref", "critic"):
        cfg.require(f"{role}.strategy", tuple(k for k, v in STRATEGIES.items()
                                              if v == strategy),
                    f"verl's {CONFIG_NAMES[strategy]} runs one strategy for every role")
    if strategy == "megatron":
        cfg.require(f"{AR}.model.lora.rank", (0,), "LoRA is not modelled")
        for prefix in (f"{AR}.actor", f"{AR}.ref", "critic"):
            engine = f"{prefix}.megatron"
            cfg.require(f"{engine}.context_parallel_size", (1,), "context parallelism is not "
                        "modelled")
            if prefix != f"{AR}.ref":
                cfg.require(f"{engine}.expert_model_parallel_size", (1,), "dense models only")
                cfg.require(f"{engine}.virtual_pipeline_model_parallel_size", (None,),
                            "interleaved pipelines are not modelled")
                for offload in ("param_offload", "grad_offload", "optimizer_offload"):
                    cfg.require(f"{engine}.{offload}", (False,), "offloading is not modelled")
    else:
        for key in (f"{AR}.actor.fsdp_config.param_offload",
                    f"{AR}.actor.fsdp_config.optimizer_offload",
                    f"{AR}.ref.fsdp_config.param_offload",
                    "critic.model.fsdp_config.param_offload",
                    "critic.model.fsdp_config.optimizer_offload"):
            cfg.require(key, (False,), "offloading is not modelled")
        for key in (f"{AR}.actor.ulysses_sequence_parallel_size",
                    f"{AR}.ref.ulysses_sequence_parallel_size",
                    "critic.ulysses_sequence_parallel_size"):
            cfg.require(key, (1,), "sequence parallelism is not modelled")


def _micro_batches(cfg: ConfigReader, per_gpu_key: str, global_key: str | None,
                   dynamic_key: str, tokens_key: str, seqs: int, dp: int, seq_len: int,
                   notes: list[str]) -> int:
    """Micro-batches per dp rank per step of `seqs` sequences (module docstring)."""
    per_rank = seqs // dp
    if cfg.get(dynamic_key):
        budget = cfg.count(tokens_key)
        count = min(per_rank, max(1, math.ceil(per_rank * seq_len / budget)))
        notes.append(f"{dynamic_key}: true: priced as {count} micro-batch(es) per GPU, the "
                     f"count that holds {per_rank} longest sequences of {seq_len} tokens in "
                     f"{tokens_key} {budget} (an upper bound)")
        return count
    per_gpu = cfg.get(per_gpu_key)
    if per_gpu is None and global_key and cfg.get(global_key) is not None:
        per_gpu = cfg.count(global_key) // dp
    if not isinstance(per_gpu, int) or isinstance(per_gpu, bool) or per_gpu < 1:
        raise InputError(f"{cfg.source}: {per_gpu_key}: {per_gpu!r}: give the micro-batch "
                         f"size per GPU (a whole number), or {dynamic_key}=True")
    if per_gpu >= per_rank:
        return 1
    if per_rank % per_gpu:
        raise cfg.refuse(per_gpu_key, f"does not divide the {per_rank} sequences per GPU per "
                         f"step; uneven micro-batches are not modelled")
    return per_rank // per_gpu


def _layout(cfg: ConfigReader, prefix: str, strategy: str, pool: tuple[int, ...],
            train: bool) -> Execution:
    """Devices, degrees and (train) policy of a role on the pool; micro-batches later."""
    size = len(pool)
    if strategy == "fsdp":
        fsdp_key = f"{prefix}.fsdp_config.fsdp_size" if prefix != "critic" \
            else "critic.model.fsdp_config.fsdp_size"
        cfg.require(fsdp_key, (-1, size), "hybrid sharding (shard groups smaller than the "
                    "pool) is not modelled")
        checkpointing = f"{AR}.model" if prefix != "critic" else "critic.model"
        recompute = "full" if cfg.get(f"{checkpointing}.enable_gradient_checkpointing") \
            else "none"
        policy = {"recompute": recompute} if train else {}
        return Execution(devices=pool, dp=size, tp=1, pp=1, shard_parameters_over_dp=True,
                         **policy)
    tp = cfg.count(f"{prefix}.megatron.tensor_model_parallel_size")
    pp = cfg.count(f"{prefix}.megatron.pipeline_model_parallel_size")
    if size % (tp * pp):
        raise cfg.refuse(f"{prefix}.megatron.tensor_model_parallel_size",
                         f"tp {tp} x pp {pp} does not divide the pool's {size} GPUs")
    policy = {}
    if train:
        transformer = f"{prefix}.megatron.override_transformer_config"
        granularity = cfg.require(f"{transformer}.recompute_granularity",
                                  (None, "selective", "full"), "recompute granularity")
        if granularity == "full":
            cfg.require(f"{transformer}.recompute_method", ("uniform",), "full recomputation "
                        "of every layer")
            cfg.require(f"{transformer}.recompute_num_layers", (1,), "full recomputation of "
                        "every layer")
        policy = {"recompute": granularity or "none",
                  "shard_optimizer_over_dp": bool(cfg.get(
                      f"{prefix}.megatron.use_distributed_optimizer"))}
    return Execution(devices=pool, dp=size // (tp * pp), tp=tp, pp=pp, **policy)


def _engine(cfg: ConfigReader, prefix: str, pool: tuple[int, ...], workflow: Workflow,
            call: str, cluster: ClusterSpec, notes: list[str]) -> Execution:
    """An engine's execution: tp from its key, dp = pool / tp, micro-batches from
    max_num_seqs and, for the rollout's generation, the KV pool that
    gpu_memory_utilization leaves (planner.frameworks.engine_batching)."""
    tp = cfg.count(f"{prefix}.tensor_model_parallel_size")
    if len(pool) % tp:
        raise cfg.refuse(f"{prefix}.tensor_model_parallel_size",
                         f"does not divide the pool's {len(pool)} GPUs")
    dp = len(pool) // tp
    max_num_seqs = cfg.count(f"{prefix}.max_num_seqs")
    if workflow.call_by_name[call].kind != "generate":
        micro = engine_micro_batches(workflow.batch.n_seqs, dp, max_num_seqs)
        notes.append(f"{prefix}.max_num_seqs {max_num_seqs}: an engine's "
                     f"{rows_per_engine(workflow.batch.n_seqs, dp)} sequences priced as {micro} "
                     f"micro-batch(es) of at most max_num_seqs")
        return Execution(devices=pool, dp=dp, tp=tp, pp=1, micro_batches=micro)
    memory_key = f"{prefix}.gpu_memory_utilization"
    batching = engine_batching(workflow, call, cluster, pool, dp, tp, max_num_seqs,
                               f"{prefix}.max_num_seqs", cfg.number(memory_key, 0.0, 1.0),
                               memory_key)
    if batching.problem():
        raise cfg.refuse(memory_key, batching.problem())
    notes.append(f"{cfg.source}: {batching.note()}")
    return Execution(devices=pool, dp=dp, tp=tp, pp=1, micro_batches=batching.micro_batches)


def _workflow(cfg: ConfigReader, algorithm: str, with_ref: bool, with_reward: bool,
              base_dir: Path) -> Workflow:
    dropped = set(REF_CALLS if not with_ref else ()) | set(REWARD_CALLS if not with_reward
                                                           else ())
    calls = builtin_calls_without(algorithm, dropped)
    paths = {"actor": f"{AR}.model.path", "ref": f"{AR}.model.path",
             "critic": "critic.model.path", "reward": "reward_model.model.path"}
    models = {}
    for role in sorted({c.model for c in calls}):
        spec = model_spec_for(str(cfg.get(paths[role])), cfg.source, paths[role], base_dir)
        models[role] = ModelRole(spec=spec, head="value" if role in VALUE_HEAD_ROLES else "lm")
    prompts = cfg.count("data.train_batch_size")
    group = cfg.count(f"{AR}.rollout.n")
    mini = cfg.count(f"{AR}.actor.ppo_mini_batch_size")
    if prompts % mini:
        raise cfg.refuse(f"{AR}.actor.ppo_mini_batch_size", f"does not divide "
                         f"data.train_batch_size {prompts}")
    if algorithm == "ppo":
        cfg.require("critic.ppo_mini_batch_size", (mini,), "the critic's minibatches must be "
                    "the actor's (one ppo_minibatches per plan)")
        cfg.require("critic.ppo_epochs", (1,), "our plans train one epoch per batch")
    batch = BatchSpec(n_seqs=prompts * group, prompt_len=cfg.count("data.max_prompt_length"),
                      gen_len=cfg.count("data.max_response_length"),
                      ppo_minibatches=prompts // mini, group_size=group)
    return Workflow(algorithm=algorithm, models=models, batch=batch,
                    inputs=BUILTIN_INPUTS[algorithm], calls=calls)


def import_verl(path: Path, cluster: ClusterSpec) -> ImportedConfig:
    """The plan of a verl config on `cluster` (module docstring)."""
    path = Path(path)
    cfg, notes = read_config(path)
    strategy = STRATEGIES.get(cfg.get(f"{AR}.actor.strategy"))
    if strategy is None:
        raise cfg.refuse(f"{AR}.actor.strategy", f"supported: {', '.join(STRATEGIES)}")
    _refuse_unsupported(cfg, strategy)
    by_estimator = {v: k for k, v in ADV_ESTIMATOR.items()}
    algorithm = by_estimator[cfg.require("algorithm.adv_estimator", tuple(by_estimator),
                                         "advantage estimator")]
    with_ref = bool(cfg.get("algorithm.use_kl_in_reward") or cfg.get(f"{AR}.actor.use_kl_loss"))
    with_reward = bool(cfg.get("reward_model.enable"))
    if algorithm != "ppo" and cfg.get("critic.enable"):
        raise cfg.refuse("critic.enable", f"a critic with adv_estimator "
                         f"{ADV_ESTIMATOR[algorithm]} is not a workflow we model")
    workflow = _workflow(cfg, algorithm, with_ref, with_reward, path.parent)
    pool = global_pool(cfg.count("trainer.nnodes"), cfg.count("trainer.n_gpus_per_node"),
                       cluster)
    if isinstance(pool, str):
        raise InputError(f"{cfg.source}: trainer.nnodes: {pool}")
    batch, seq_len = workflow.batch, workflow.batch.seq_len
    train_seqs = batch.n_seqs // batch.ppo_minibatches
    executions: dict[str, Execution] = {}
    gen = _engine(cfg, f"{AR}.rollout", pool, workflow, "actor_gen", cluster, notes)
    executions["actor_gen"] = gen
    if algorithm == "remax":
        executions["actor_greedy_gen"] = gen
    actor = f"{AR}.actor"
    train = _layout(cfg, actor, strategy, pool, train=True)
    executions["actor_train"] = train.model_copy(update={"micro_batches": _micro_batches(
        cfg, f"{actor}.ppo_micro_batch_size_per_gpu", f"{actor}.ppo_micro_batch_size",
        f"{actor}.use_dynamic_bsz", f"{actor}.ppo_max_token_len_per_gpu", train_seqs,
        train.dp, seq_len, notes)})
    if with_ref:
        ref_prefix = f"{AR}.ref"
        ref = _layout(cfg, ref_prefix, strategy, pool, train=False)
        executions["ref_inf"] = ref.model_copy(update={"micro_batches": _micro_batches(
            cfg, f"{ref_prefix}.log_prob_micro_batch_size_per_gpu",
            f"{ref_prefix}.log_prob_micro_batch_size", f"{ref_prefix}.log_prob_use_dynamic_bsz",
            f"{ref_prefix}.log_prob_max_token_len_per_gpu", batch.n_seqs, ref.dp, seq_len,
            notes)})
    if algorithm == "ppo":
        critic = _layout(cfg, "critic", strategy, pool, train=True)
        critic_train = critic.model_copy(update={"micro_batches": _micro_batches(
            cfg, "critic.ppo_micro_batch_size_per_gpu", "critic.ppo_micro_batch_size",
            "critic.use_dynamic_bsz", "critic.ppo_max_token_len_per_gpu", train_seqs,
            critic.dp, seq_len, notes)})
        inf_key = "critic.forward_micro_batch_size_per_gpu" if strategy == "fsdp" \
            else "critic.ppo_micro_batch_size_per_gpu"
        inf_tokens = "critic.forward_max_token_len_per_gpu" if strategy == "fsdp" \
            else "critic.ppo_max_token_len_per_gpu"
        inf = _layout(cfg, "critic", strategy, pool, train=False)
        executions["critic_inf"] = inf.model_copy(update={"micro_batches": _micro_batches(
            cfg, inf_key, None, "critic.use_dynamic_bsz", inf_tokens, batch.n_seqs, inf.dp,
            seq_len, notes)})
        executions["critic_train"] = critic_train
    if with_reward:
        cfg.require("reward_model.use_reward_loop", (True,), "the reward model is read as "
                    "served by the reward loop's engine")
        cfg.require("reward_model.rollout.name", ENGINES, "reward engine")
        reward_devices = pool
        if cfg.get("reward_model.enable_resource_pool"):
            nnodes, per_node = (cfg.count("reward_model.nnodes"),
                                cfg.count("reward_model.n_gpus_per_node"))
            found = reward_pool(pool, nnodes * per_node, cluster)
            if found is None or (nnodes > 1 and per_node != cluster.node_devices_per_node[0]):
                raise cfg.refuse("reward_model.nnodes", f"a reward pool of {nnodes} x "
                                 f"{per_node} GPUs does not fit after the global pool on "
                                 f"{cluster.describe()}")
            reward_devices = found
        rew = _engine(cfg, "reward_model.rollout", reward_devices, workflow, "rew_inf",
                      cluster, notes)
        executions.update({name: rew for name in REWARD_CALLS
                           if name in workflow.call_by_name})
    else:
        notes.append(f"{cfg.source}: reward_model.enable false: rewards are rule-based "
                     f"(reward function on the driver), not priced")
    if not with_ref:
        notes.append(f"{cfg.source}: no KL term (algorithm.use_kl_in_reward, "
                     f"actor.use_kl_loss false): verl runs no reference model")
    return ImportedConfig(workflow=workflow, executions=executions, notes=notes)
