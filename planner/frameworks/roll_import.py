"""The plan a ROLL 0.3.0 RLVR pipeline config (a YAML file such as ROLL's
examples/qwen2.5-7B-rlvr_megatron/rlvr_config_8gpus.yaml) implies on a cluster.

Mapping (roll_rules.py gives the rules and their sources, roll_keys.py the defaults):
- workflow: adv_estimator gae -> PPO (with the critic), grpo -> GRPO, reinforce -> GRPO's
  calls (its advantage arithmetic differs, not the calls it runs); the reference runs when
  use_kl_loss, init_kl_coef > 0 or enable_reference (PPOConfig); rewards without a
  device_mapping are rule / API workers on CPU, so the workflow has no reward call (not
  priced); a reward domain of roll.pipeline.base_worker.RewardWorker on GPUs is rew_inf;
  an LLM judge on GPUs (it generates) is refused;
- batch: rollout_batch_size prompts x num_return_sequences_in_group, prompt_length,
  response_length (or sequence_length - prompt_length); ppo_minibatches = sequences /
  (actor dp x per_device_train_batch_size x gradient_accumulation_steps);
- layouts: a role's device_mapping (roll_devices.py) is its mesh; megatron_* dp x tp x pp,
  ZeRO-1 from use_distributed_optimizer (mcore_adapter's default false), recomputation from
  recompute_granularity; fsdp2_* parameters sharded over all the role's devices,
  recomputation full unless model_args.disable_gradient_checkpointing; hf_infer dp only;
  vllm / sglang tp from tensor_parallel_size, dp = devices / tp;
- generation micro-batches: ceil(sequences per engine / min(the engine's concurrency, the
  rows its KV pool holds)) (planner.frameworks.engine_batching): vLLM's
  strategy_config.max_num_seqs and gpu_memory_utilization (vLLM's defaults, roll_keys.py,
  where left out; max_num_seqs above max_num_batched_tokens, which vLLM refuses, is
  refused), SGLang's max_running_requests (when left out, only the KV pool limits the rows)
  and mem_fraction_static (required, as ROLL's SGLang strategy indexes it);
- micro-batches: gradient_accumulation_steps per train step; sequences per rank /
  infer_batch_size for inference.
A key that changes cost and that we cannot represent is refused with one line (file, key,
value, what is supported); keys that do not change what we price are listed in a note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from planner.domain.builtin_workflows import (
    BUILTIN_INPUTS,
    VALUE_HEAD_ROLES,
    builtin_calls_without,
)
from planner.domain.cluster import ClusterSpec
from planner.domain.errors import InputError
from planner.domain.input_files import read_input_text
from planner.domain.layout import Execution, execution_problem
from planner.domain.mesh import mesh_problem
from planner.domain.workflow import BatchSpec, ModelFunctionCall, ModelRole, Workflow
from planner.domain.yamlio import parse_yaml
from planner.frameworks.engine_batching import engine_batching, rows_per_engine
from planner.frameworks.hydra_overrides import MISSING, lookup, raw_value
from planner.frameworks.model_reference import model_spec_for
from planner.frameworks.roll_devices import parse_device_mapping
from planner.frameworks.roll_keys import (
    ALGORITHM_OF_ESTIMATOR,
    DEFAULTS,
    ENGINES,
    FIXED_STRATEGY_KEYS,
    INFER_STRATEGIES,
    LLM_JUDGE_WORKER,
    REWARD_MODEL_WORKER,
    ROLE_DEFAULTS,
    ROLL_MAX_NUM_BATCHED_TOKENS,
    SGLANG_CONCURRENCY_KEY,
    SGLANG_MEMORY_KEY,
    STRATEGY_NAMES,
    TRAIN_STRATEGIES,
    VLLM_GPU_MEMORY_UTILIZATION,
    VLLM_MAX_NUM_SEQS,
)
from planner.frameworks.target import ImportedConfig

REQUIRED = {"ppo_epochs": ((1,), "our plans train one epoch per batch"),
            "async_generation_ratio": ((0, 0.0), "we price synchronous iterations"),
            "is_offload_states": ((False,), "offloading states after every call is not priced"),
            "use_opd": ((False, None), "on-policy distillation is not a workflow we model"),
            "is_pure_opd": ((False, None), "on-policy distillation is not a workflow we model")}
ROLE_REQUIRED = {
    "model_args.dtype": (("bf16", "fp16"), "we price 16-bit weights and activations"),
    "model_args.lora_rank": ((None, 0), "LoRA is not modelled"),
    "model_args.ulysses_size": ((None, 1), "sequence (Ulysses) parallelism is not modelled"),
    "use_dynamic_batching_in_train": ((False,), "dynamic batching is not modelled"),
    "use_dynamic_batching_in_infer": ((False,), "dynamic batching is not modelled"),
    "use_sequence_packing": ((False,), "sequence packing is not modelled"),
}


class RollConfig:
    """A ROLL config mapping and its file, read key by key (ROLL's defaults for keys it
    leaves out); remembers which keys were read."""

    def __init__(self, data: dict[str, Any], source: str):
        self.data, self.source, self.read = data, source, set()

    def get(self, key: str, default: Any = MISSING) -> Any:
        self.read.add(key)
        if raw_value(self.data, key) is MISSING:
            if default is not MISSING:
                return default
            if key in DEFAULTS:
                return DEFAULTS[key]
            for role_key, value in ROLE_DEFAULTS.items():
                if key.endswith("." + role_key):
                    return value
        return lookup(self.data, key, self.source)

    def has(self, key: str) -> bool:
        return raw_value(self.data, key) is not MISSING

    def refuse(self, key: str, what: str, value: Any = MISSING) -> InputError:
        value = self.get(key) if value is MISSING else value
        return InputError(f"{self.source}: {key}: {value!r}: {what}")

    def require(self, key: str, allowed: tuple, what: str, default: Any = MISSING) -> Any:
        value = self.get(key, default)
        # True == 1 and False == 0 in Python: a boolean matches only a boolean.
        matches = [a for a in allowed if a == value
                   and isinstance(a, bool) == isinstance(value, bool)]
        if not matches:
            raise self.refuse(key, f"{what}; supported: {', '.join(map(repr, allowed))}", value)
        return value

    def count(self, key: str, minimum: int = 1, default: Any = MISSING) -> int:
        value = self.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.refuse(key, f"expected a whole number of at least {minimum}", value)
        return value

    def fraction(self, key: str, default: Any = MISSING) -> float:
        """A number in (0, 1]."""
        value = self.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not 0 < value <= 1:
            raise self.refuse(key, "expected a fraction of device memory in (0, 1]", value)
        return float(value)


def read_config(path: Path) -> RollConfig:
    data = parse_yaml(read_input_text(path, "ROLL config"), path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: (top level): expected a ROLL pipeline config mapping")
    if "defaults" in data:
        raise InputError(f"{path}: defaults: a Hydra defaults list is not read; give the "
                         f"config with its defaults merged in")
    return RollConfig(data, str(path))


def _devices(cfg: RollConfig, role: str, cluster: ClusterSpec) -> tuple[int, ...]:
    key = f"{role}.device_mapping"
    devices = parse_device_mapping(cfg.get(key), f"{cfg.source}: {key}")
    if max(devices) >= cluster.num_devices:
        raise cfg.refuse(key, f"GPU {max(devices)} needs {max(devices) + 1} devices; "
                         f"{cluster.describe()} has {cluster.num_devices}")
    problem = mesh_problem(devices, cluster)
    if problem:
        raise cfg.refuse(key, f"not a mesh we model: {problem}")
    return devices


def _strategy(cfg: RollConfig, role: str, allowed: tuple[str, ...]) -> tuple[str, str]:
    """(strategy name, strategy_config key prefix) of a role, checked."""
    key = f"{role}.strategy_args.strategy_name"
    name = cfg.get(key, None)
    if name not in STRATEGY_NAMES or name not in allowed:
        raise cfg.refuse(key, f"strategy of {role}; supported: {', '.join(allowed)}", name)
    prefix = f"{role}.strategy_args.strategy_config"
    for sub, (values, what) in FIXED_STRATEGY_KEYS.items():
        if cfg.has(f"{prefix}.{sub}"):
            cfg.require(f"{prefix}.{sub}", values, what)
    for sub, (values, what) in ROLE_REQUIRED.items():
        cfg.require(f"{role}.{sub}", values, what)
    return name, prefix


def _layout(cfg: RollConfig, role: str, devices: tuple[int, ...], train: bool) -> Execution:
    """Devices, degrees and (train) policy of a Megatron / FSDP2 / HF role."""
    allowed = TRAIN_STRATEGIES if train else INFER_STRATEGIES
    name, prefix = _strategy(cfg, role, allowed)
    size = len(devices)
    if name.startswith("fsdp2"):
        fsdp = cfg.get(f"{prefix}.fsdp_size", 1)
        if not isinstance(fsdp, int) or 1 < fsdp < size:
            raise cfg.refuse(f"{prefix}.fsdp_size", f"hybrid sharding (shard groups smaller "
                             f"than the role's {size} GPUs) is not modelled; supported: 1 or "
                             f">= {size}", fsdp)
        policy = {"recompute": "none" if cfg.get(f"{role}.model_args."
                                                 f"disable_gradient_checkpointing")
                  else "full"} if train else {}
        return Execution(devices=devices, dp=size, tp=1, pp=1, shard_parameters_over_dp=True,
                         **policy)
    if name == "hf_infer":
        cfg.require(f"{role}.num_gpus_per_worker", (1,), "hf_infer with one GPU per worker")
        return Execution(devices=devices, dp=size, tp=1, pp=1)
    tp = cfg.count(f"{prefix}.tensor_model_parallel_size", default=1)
    pp = cfg.count(f"{prefix}.pipeline_model_parallel_size", default=1)
    if size % (tp * pp):
        raise cfg.refuse(f"{prefix}.tensor_model_parallel_size", f"tp {tp} x pp {pp} does not "
                         f"divide {role}'s {size} GPUs", tp)
    policy = {}
    if train:
        granularity = cfg.require(f"{prefix}.recompute_granularity", (None, "full", "selective"),
                                  "recompute granularity", default=None)
        if granularity == "full":
            cfg.require(f"{prefix}.recompute_method", (None, "uniform"), "full recomputation "
                        "of every layer", default=None)
            cfg.require(f"{prefix}.recompute_num_layers", (None, 1), "full recomputation of "
                        "every layer", default=None)
        policy = {"recompute": granularity or "none", "shard_optimizer_over_dp": bool(
            cfg.get(f"{prefix}.use_distributed_optimizer", False))}
    return Execution(devices=devices, dp=size // (tp * pp), tp=tp, pp=pp, **policy)


def _engine(cfg: RollConfig, devices: tuple[int, ...]) -> Execution:
    name, prefix = _strategy(cfg, "actor_infer", ENGINES)
    per_worker = cfg.count("actor_infer.num_gpus_per_worker")
    tp = cfg.count(f"{prefix}.tensor_parallel_size",
                   default=per_worker if name == "sglang" else 1)
    if len(devices) % tp:
        raise cfg.refuse(f"{prefix}.tensor_parallel_size", f"does not divide actor_infer's "
                         f"{len(devices)} GPUs", tp)
    return Execution(devices=devices, dp=len(devices) // tp, tp=tp, pp=1)


def _engine_limits(cfg: RollConfig, rows: int) -> tuple[int, str, float, str]:
    """(concurrency, its key, memory fraction, its key) of actor_infer's engines, which get
    `rows` sequences each (module docstring)."""
    name = cfg.get("actor_infer.strategy_args.strategy_name")
    prefix = "actor_infer.strategy_args.strategy_config"
    if name == "sglang":
        memory_key, concurrency_key = f"{prefix}.{SGLANG_MEMORY_KEY}", \
            f"{prefix}.{SGLANG_CONCURRENCY_KEY}"
        if not cfg.has(memory_key):
            raise cfg.refuse(memory_key, "ROLL's SGLang strategy requires it (the KV pool's "
                             "share of device memory)", None)
        if cfg.has(concurrency_key):
            concurrency = cfg.count(concurrency_key)
        else:   # no limit but the KV pool: the engine's rows bound nothing
            concurrency, concurrency_key = rows, f"{concurrency_key} (left out: the rows)"
        return concurrency, concurrency_key, cfg.fraction(memory_key), memory_key
    concurrency_key, memory_key = f"{prefix}.max_num_seqs", f"{prefix}.gpu_memory_utilization"
    concurrency = cfg.count(concurrency_key, default=VLLM_MAX_NUM_SEQS)
    batched_key = f"{prefix}.max_num_batched_tokens"
    batched = cfg.count(batched_key, default=ROLL_MAX_NUM_BATCHED_TOKENS)
    if concurrency > batched:
        raise cfg.refuse(concurrency_key, f"more than {batched_key} {batched}, which vLLM "
                         f"refuses (max_num_batched_tokens >= max_num_seqs)", concurrency)
    return (concurrency, concurrency_key,
            cfg.fraction(memory_key, default=VLLM_GPU_MEMORY_UTILIZATION), memory_key)


def _engine_micro(cfg: RollConfig, workflow: Workflow, cluster: ClusterSpec, ex: Execution,
                  notes: list[str]) -> Execution:
    """`ex` (actor_gen) with the micro-batches its engines run (engine_batching)."""
    rows = rows_per_engine(workflow.batch.n_seqs, ex.dp)
    concurrency, concurrency_key, fraction, memory_key = _engine_limits(cfg, rows)
    batching = engine_batching(workflow, "actor_gen", cluster, ex.devices, ex.dp, ex.tp,
                               concurrency, concurrency_key, fraction, memory_key)
    if batching.problem():
        raise cfg.refuse(memory_key, batching.problem(), fraction)
    notes.append(f"{cfg.source}: {batching.note()}")
    return ex.model_copy(update={"micro_batches": batching.micro_batches})


def _inference_micro(cfg: RollConfig, role: str, seqs: int, dp: int) -> int:
    key = f"{role}.infer_batch_size"
    size = cfg.count(key)
    if seqs % dp:
        raise cfg.refuse(f"{role}.device_mapping", f"dp {dp} does not divide the {seqs} "
                         f"sequences; uneven shards are not modelled")
    per_rank = seqs // dp
    if size >= per_rank:
        return 1
    if per_rank % size:
        raise cfg.refuse(key, f"does not divide the {per_rank} sequences per GPU; uneven "
                         f"micro-batches are not modelled", size)
    return per_rank // size


def _train_steps(cfg: RollConfig, role: str, seqs: int, dp: int) -> tuple[int, int]:
    """(ppo_minibatches, micro_batches) of a train role (roll_rules.py)."""
    per_device = cfg.count(f"{role}.training_args.per_device_train_batch_size")
    accumulation = cfg.count(f"{role}.training_args.gradient_accumulation_steps")
    per_step = dp * per_device * accumulation
    if seqs % per_step:
        raise cfg.refuse(f"{role}.training_args.gradient_accumulation_steps",
                         f"dp {dp} x per_device_train_batch_size {per_device} x "
                         f"{accumulation} = {per_step} does not divide the {seqs} sequences of "
                         f"an iteration into whole optimizer steps", accumulation)
    return seqs // per_step, accumulation


def _reward_domain(cfg: RollConfig) -> str | None:
    """The reward domain that runs a reward model on GPUs (rew_inf), or None."""
    if cfg.has("reward_model.device_mapping") and cfg.get("reward_model.device_mapping"):
        raise cfg.refuse("reward_model.device_mapping", "the shared reward_model cluster "
                         "serves an LLM judge, which generates; supported: rule rewards or a "
                         f"{REWARD_MODEL_WORKER} domain")
    rewards = raw_value(cfg.data, "rewards")
    rewards = {} if rewards is MISSING or rewards is None else rewards
    if not isinstance(rewards, dict):
        raise cfg.refuse("rewards", "expected a mapping of reward domains")
    found = []
    for domain in rewards:
        if not cfg.get(f"rewards.{domain}.device_mapping", None):
            continue
        worker = cfg.get(f"rewards.{domain}.worker_cls", None)
        if worker == LLM_JUDGE_WORKER:
            raise cfg.refuse(f"rewards.{domain}.device_mapping", "an LLM judge on GPUs "
                             "generates its verdicts, which no reward call we model does; "
                             f"supported: rule rewards (no device_mapping) or a "
                             f"{REWARD_MODEL_WORKER} domain",
                             cfg.get(f"rewards.{domain}.device_mapping"))
        if worker != REWARD_MODEL_WORKER:
            raise cfg.refuse(f"rewards.{domain}.worker_cls", f"a reward worker on GPUs; "
                             f"supported: {REWARD_MODEL_WORKER}", worker)
        found.append(domain)
    if len(found) > 1:
        raise cfg.refuse("rewards", f"reward models in domains {found}; supported: one",
                         found)
    return found[0] if found else None


def _models(cfg: RollConfig, calls: tuple[ModelFunctionCall, ...], reward: str | None,
            base_dir: Path) -> dict[str, ModelRole]:
    pretrain = "actor_train.model_args.model_name_or_path" \
        if cfg.get("actor_train.model_args.model_name_or_path", None) else "pretrain"
    critic = "critic.model_args.model_name_or_path" \
        if cfg.get("critic.model_args.model_name_or_path", None) else "reward_pretrain"
    keys = {"actor": pretrain, "ref": pretrain, "critic": critic,
            "reward": f"rewards.{reward}.model_args.model_name_or_path"}
    models = {}
    for role in sorted({c.model for c in calls}):
        reference = cfg.get(keys[role], None)
        if not isinstance(reference, str):
            raise cfg.refuse(keys[role], "give the model's checkpoint directory or hub id",
                             reference)
        spec = model_spec_for(reference, cfg.source, keys[role], base_dir)
        models[role] = ModelRole(spec=spec, head="value" if role in VALUE_HEAD_ROLES else "lm")
    return models


def _batch(cfg: RollConfig, ppo_minibatches: int) -> BatchSpec:
    prompts = cfg.count("rollout_batch_size")
    group = cfg.count("num_return_sequences_in_group")
    prompt_len = cfg.count("prompt_length")
    if cfg.get("response_length") is not None:
        gen_len = cfg.count("response_length")
    else:
        gen_len = cfg.count("sequence_length", minimum=prompt_len + 1) - prompt_len
    try:
        return BatchSpec(n_seqs=prompts * group, prompt_len=prompt_len, gen_len=gen_len,
                         ppo_minibatches=ppo_minibatches, group_size=group)
    except ValidationError as err:
        raise InputError(f"{cfg.source}: rollout_batch_size: the batch keys give an invalid "
                         f"batch ({err.errors()[0]['msg']})") from None


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [prefix[:-1]]


def _unread_note(cfg: RollConfig) -> str | None:
    """A note naming the keys no reading looked at: a two-level prefix when none of its
    keys was read, else each key."""
    def is_read(leaf: str) -> bool:
        parts = leaf.split(".")
        return any(".".join(parts[:i]) in cfg.read for i in range(1, len(parts) + 1))

    by_prefix: dict[str, list[str]] = {}
    for leaf in _leaves(cfg.data):
        by_prefix.setdefault(".".join(leaf.split(".")[:2]), []).append(leaf)
    unread = []
    for prefix, leaves in by_prefix.items():
        missed = [leaf for leaf in leaves if not is_read(leaf)]
        unread.extend([prefix] if len(missed) == len(leaves) else missed)
    if not unread:
        return None
    return (f"{cfg.source}: not read, as they do not change what we price: "
            f"{', '.join(sorted(unread))}")


def import_roll(path: Path, cluster: ClusterSpec) -> ImportedConfig:
    """The plan of a ROLL config on `cluster` (module docstring)."""
    path = Path(path)
    cfg = read_config(path)
    for key, (allowed, what) in REQUIRED.items():
        cfg.require(key, allowed, what)
    estimator = cfg.require("adv_estimator", tuple(ALGORITHM_OF_ESTIMATOR),
                            "advantage estimator")
    algorithm = ALGORITHM_OF_ESTIMATOR[estimator]
    kl_coef = cfg.get("init_kl_coef")
    if not isinstance(kl_coef, (int, float)) or isinstance(kl_coef, bool):
        raise cfg.refuse("init_kl_coef", "expected a number")
    with_ref = bool(cfg.get("use_kl_loss") or cfg.get("enable_reference") or kl_coef > 0)
    reward = _reward_domain(cfg)
    dropped = ({"ref_inf"} if not with_ref else set()) | ({"rew_inf"} if reward is None
                                                          else set())
    calls = builtin_calls_without(algorithm, dropped)
    notes = []
    if estimator == "reinforce":
        notes.append(f"{cfg.source}: adv_estimator reinforce: priced with GRPO's calls (no "
                     f"critic); its advantages differ in arithmetic only")
    executions: dict[str, Execution] = {}
    train = _layout(cfg, "actor_train", _devices(cfg, "actor_train", cluster), train=True)
    batch = _batch(cfg, 1)
    minibatches, train_micro = _train_steps(cfg, "actor_train", batch.n_seqs, train.dp)
    prompts = batch.n_seqs // batch.group_size
    if not train.shard_parameters_over_dp and prompts % train.dp:
        raise cfg.refuse("rollout_batch_size", f"not divisible by actor_train's Megatron dp "
                         f"{train.dp}, which ROLL requires (validate_megatron_batch_size)",
                         prompts)
    batch = batch.model_copy(update={"ppo_minibatches": minibatches})
    executions["actor_gen"] = _engine(cfg, _devices(cfg, "actor_infer", cluster))
    executions["actor_train"] = train.model_copy(update={"micro_batches": train_micro})
    if with_ref:
        ref = _layout(cfg, "reference", _devices(cfg, "reference", cluster), train=False)
        executions["ref_inf"] = ref.model_copy(update={"micro_batches": _inference_micro(
            cfg, "reference", batch.n_seqs, ref.dp)})
    else:
        notes.append(f"{cfg.source}: no KL term (use_kl_loss false, init_kl_coef 0): ROLL runs "
                     f"no reference model")
    if algorithm == "ppo":
        critic = _layout(cfg, "critic", _devices(cfg, "critic", cluster), train=True)
        critic_minibatches, critic_micro = _train_steps(cfg, "critic", batch.n_seqs, critic.dp)
        if critic_minibatches != minibatches:
            raise cfg.refuse("critic.training_args.gradient_accumulation_steps",
                             f"gives {critic_minibatches} optimizer steps per iteration, the "
                             f"actor {minibatches}; one ppo_minibatches per plan",
                             critic_micro)
        inference = Execution(devices=critic.devices, dp=critic.dp, tp=critic.tp, pp=critic.pp,
                              shard_parameters_over_dp=critic.shard_parameters_over_dp)
        executions["critic_inf"] = inference.model_copy(update={"micro_batches":
                                                                _inference_micro(
            cfg, "critic", batch.n_seqs, critic.dp)})
        executions["critic_train"] = critic.model_copy(update={"micro_batches": critic_micro})
    if reward is None:
        notes.append(f"{cfg.source}: rewards: rule / API reward workers on CPU (no "
                     f"device_mapping), not priced")
    else:
        role = f"rewards.{reward}"
        rew = _layout(cfg, role, _devices(cfg, role, cluster), train=False)
        executions["rew_inf"] = rew.model_copy(update={"micro_batches": _inference_micro(
            cfg, role, batch.n_seqs, rew.dp)})
        if len(raw_value(cfg.data, "rewards")) > 1:
            notes.append(f"{cfg.source}: {role}: priced on every sequence; ROLL routes only "
                         f"its tag_included domains to it (an upper bound)")
    if minibatches > 1 or kl_coef > 0:
        notes.append(f"{cfg.source}: ROLL recomputes the old log-probs with actor_train "
                     f"(enable_old_logprobs_recompute); our workflows have no such pass, not "
                     f"priced")
    per_node = cfg.get("num_gpus_per_node")
    if per_node != cluster.node_devices_per_node[0]:
        notes.append(f"{cfg.source}: num_gpus_per_node {per_node}: ROLL sets it from the "
                     f"node's device count; read as {cluster.node_devices_per_node[0]}")
    models = _models(cfg, calls, reward, path.parent)
    workflow = Workflow(algorithm=algorithm, models=models, batch=batch,
                        inputs=BUILTIN_INPUTS[algorithm], calls=calls)
    executions["actor_gen"] = _engine_micro(cfg, workflow, cluster, executions["actor_gen"],
                                            notes)
    for name, ex in executions.items():
        call = workflow.call_by_name[name]
        problem = execution_problem(ex, workflow.models[call.model].spec, cluster, call, batch)
        if problem:
            raise InputError(f"{cfg.source}: {name}: {problem}")
    unread = _unread_note(cfg)
    return ImportedConfig(workflow=workflow, executions=executions,
                          notes=notes + ([unread] if unread else []))
