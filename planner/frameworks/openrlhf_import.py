"""An OpenRLHF v0.11.0 train_ppo_ray command line as a workflow and one execution per call.

Defaults, checks and meanings are train_ppo_ray's (OpenRLHF/OpenRLHF,
openrlhf/cli/train_ppo_ray.py, tag v0.11.0; copy in tests/frameworks/data/openrlhf/):
- workflow: --algo.advantage.estimator gae is PPO (with a critic: --critic.model_name_or_path,
  else the reward model's path, as train_ppo_ray sets it), group_norm is GRPO, rloo is
  RLOO (both need --rollout.n_samples_per_prompt > 1, which OpenRLHF asserts); the
  reference model is the actor's checkpoint;
- batch: n_seqs = --rollout.batch_size (prompts) x --rollout.n_samples_per_prompt;
  ppo_minibatches = n_seqs / --train.batch_size (samples a step); gen_len =
  --rollout.max_new_tokens, prompt_len = --data.max_len (prompt + response) - gen_len;
- micro-batches: --train.micro_batch_size / --rollout.micro_batch_size per GPU; with
  --train.dynamic_batch_enable, as many full-length sequences as fit in
  --train.max_tokens_per_gpu (--rollout.max_tokens_per_gpu, default the former) x AutoTP
  (openrlhf/utils/seqlen_balancing.py get_minimum_num_micro_batch_size, first fit), the
  rollout's count rounded down to a multiple of the actor's dp ranks and at least that
  (openrlhf/trainer/ppo_utils/experience_maker.py split_rollout_samples);
- generation: micro-batches of at most min(vLLM's default max_num_seqs, the rows the KV
  pool of --vllm.gpu_memory_utilization holds) per engine (openrlhf_layout.rollout_batching);
- placement and layouts: planner/frameworks/openrlhf_layout.py.
A flag that changes the cost in a way we cannot represent is refused (REFUSED); the others
are read or listed in the notes as not priced.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from planner.domain.builtin_workflows import (
    BUILTIN_CALLS,
    BUILTIN_INPUTS,
    VALUE_HEAD_ROLES,
)
from planner.domain.cluster import ClusterSpec
from planner.domain.errors import InputError
from planner.domain.layout import Execution, execution_problem
from planner.domain.workflow import BatchSpec, ModelRole, Workflow
from planner.frameworks.model_reference import model_spec_for
from planner.frameworks.openrlhf_cmdline import Flag, read_flags
from planner.frameworks.openrlhf_layout import (
    VLLM_GPU_MEMORY_UTILIZATION,
    OpenRLHFLayout,
    executions_of,
    rollout_batching,
)
from planner.frameworks.target import ImportedConfig

ALGORITHMS = {"gae": "ppo", "group_norm": "grpo", "rloo": "rloo"}
# train_ppo_ray.py defaults of the flags we read.
DEFAULTS = {
    "actor.num_nodes": 1, "actor.num_gpus_per_node": 8, "ref.num_nodes": 1,
    "ref.num_gpus_per_node": 8, "reward.num_nodes": 1, "reward.num_gpus_per_node": 8,
    "critic.num_nodes": 1, "critic.num_gpus_per_node": 8, "vllm.tensor_parallel_size": 1,
    "ds.zero_stage": 2, "ds.tensor_parallel_size": 1, "rollout.batch_size": 1024,
    "rollout.n_samples_per_prompt": 1, "train.batch_size": 128, "train.micro_batch_size": 1,
    "rollout.micro_batch_size": 1, "data.max_len": 2048, "train.max_tokens_per_gpu": 16192,
}
SWITCH_SUPPORTED = "off"
# flag -> (is the value one we refuse, what is supported)
REFUSED: dict[str, tuple[Callable[[tuple[str, ...]], bool], str]] = {
    "train.max_epochs": (lambda v: v[0] != "1", "1 (our workflows train once per rollout)"),
    "ds.ring_attn_size": (lambda v: v[0] != "1", "1 (no context parallelism in our layouts)"),
    "ds.lora.rank": (lambda v: v[0] != "0", "0 (LoRA is not priced)"),
    "ds.load_in_4bit": (lambda v: True, "off (4-bit weights are not priced)"),
    "ds.adam_offload": (lambda v: True, "off (CPU offload is not priced)"),
    "ref.offload": (lambda v: True, "off (CPU offload is not priced)"),
    "reward.offload": (lambda v: True, "off (CPU offload is not priced)"),
    "train.async_enable": (lambda v: True, "off (we price synchronous iterations)"),
    "train.partial_rollout_enable": (lambda v: True, "off (we price synchronous iterations)"),
    "reward.remote_url": (lambda v: True, "unset: our workflows price a reward model"),
    "train.agent_func_path": (lambda v: True, "unset: our workflows price a reward model"),
    "data.max_images_per_prompt": (lambda v: v[0] != "0", "0 (text only)"),
    "algo.dynamic_filtering_enable": (lambda v: True, "off (it changes the samples trained)"),
    "algo.kl.init_coef": (lambda v: float(v[0]) == 0.0,
                          "> 0: our workflows price the reference model"),
    "actor.optim": (lambda v: v[0] != "adam", "adam (the optimizer memory we price)"),
    "critic.optim": (lambda v: v[0] != "adam", "adam (the optimizer memory we price)"),
}
# Read but not priced: they change speed or memory in ways the cost model leaves out.
NOT_PRICED = ("vllm.enforce_eager", "vllm.enable_prefix_caching", "ds.deepcompile", "ds.use_liger_kernel",
              "ds.overlap_comm", "ds.attn_implementation", "ds.zpg", "ds.grad_accum_dtype")
READ = set(DEFAULTS) | set(REFUSED) | {
    "vllm.num_engines", "train.colocate_all", "train.colocate_actor_ref",
    "train.colocate_critic_reward", "actor.gradient_checkpointing_enable",
    "actor.model_name_or_path", "reward.model_name_or_path", "critic.model_name_or_path",
    "algo.advantage.estimator", "rollout.max_new_tokens", "train.dynamic_batch_enable",
    "rollout.max_tokens_per_gpu", "rollout.vllm_generate_batch_size", "ds.packing_samples",
    "vllm.enable_sleep", "ds.enable_sleep", "vllm.gpu_memory_utilization"}


class FlagReader:
    """Typed reads of the parsed flags, each error one line naming file, line and flag."""

    def __init__(self, flags: dict[str, Flag], source: str):
        self.flags, self.source = flags, source

    def where(self, name: str) -> str:
        flag = self.flags.get(name)
        return f"{self.source}:{flag.line}" if flag else self.source

    def refuse(self, name: str, what: str, supported: str) -> InputError:
        return InputError(f"{self.where(name)}: --{name} {what}; supported: {supported}")

    def integer(self, name: str, minimum: int = 1) -> int | None:
        if name not in self.flags:
            return DEFAULTS.get(name)
        text = self.flags[name].values[0]
        try:
            value = int(text)
        except ValueError:
            raise self.refuse(name, f"{text!r} is not an integer", f"an integer >= {minimum}") \
                from None
        if value < minimum:
            raise self.refuse(name, f"{value}", f"an integer >= {minimum}")
        return value

    def fraction(self, name: str, default: float) -> float:
        """A number in (0, 1] (a memory fraction), `default` when the flag is absent."""
        if name not in self.flags:
            return default
        text = self.flags[name].values[0]
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 < value <= 1.0:
            raise self.refuse(name, f"{text!r}", "a number in (0, 1]")
        return value

    def text(self, name: str, default: str | None = None) -> str | None:
        return self.flags[name].values[0] if name in self.flags else default

    def on(self, name: str) -> bool:
        return name in self.flags


def check_refused(reader: FlagReader) -> None:
    for name, (refused, supported) in REFUSED.items():
        if name not in reader.flags:
            continue
        values = reader.flags[name].values
        try:
            bad = refused(values)
        except ValueError:
            raise reader.refuse(name, f"{' '.join(values)!r} is not a number",
                                supported) from None
        if bad:
            raise reader.refuse(name, " ".join(values) or "is set", supported)


def read_workflow(reader: FlagReader, base_dir: Path) -> Workflow:
    estimator = reader.text("algo.advantage.estimator", "gae")
    if estimator not in ALGORITHMS:
        raise reader.refuse("algo.advantage.estimator", estimator,
                            ", ".join(f"{e} ({a})" for e, a in ALGORITHMS.items()))
    algorithm = ALGORITHMS[estimator]
    group = reader.integer("rollout.n_samples_per_prompt")
    if algorithm != "ppo" and group < 2:
        raise reader.refuse("rollout.n_samples_per_prompt", str(group),
                            f"> 1 with --algo.advantage.estimator {estimator}")
    prompts = reader.integer("rollout.batch_size")
    generate = reader.text("rollout.vllm_generate_batch_size")
    if generate is not None and generate != str(prompts):
        raise reader.refuse("rollout.vllm_generate_batch_size", generate,
                            f"--rollout.batch_size ({prompts}); larger needs async training")
    gen_len = reader.integer("rollout.max_new_tokens")
    if gen_len is None:
        raise reader.refuse("rollout.max_new_tokens", "is not given (each response may then "
                            "fill --data.max_len less its prompt)", "a response length")
    max_len = reader.integer("data.max_len")
    if max_len <= gen_len:
        raise reader.refuse("data.max_len", f"{max_len} leaves no prompt beside "
                            f"--rollout.max_new_tokens {gen_len}", f"> {gen_len}")
    n_seqs = prompts * group
    per_step = reader.integer("train.batch_size")
    if n_seqs % per_step:
        raise reader.refuse("train.batch_size", str(per_step), f"a divisor of the {n_seqs} "
                            f"samples a rollout (--rollout.batch_size x n_samples_per_prompt)")
    actor_path = reader.text("actor.model_name_or_path")
    reward_path = reader.text("reward.model_name_or_path")
    for name, value in (("actor.model_name_or_path", actor_path),
                        ("reward.model_name_or_path", reward_path)):
        if value is None:
            raise reader.refuse(name, "is not given", "a checkpoint directory or hub id")
    if "," in reward_path:
        raise reader.refuse("reward.model_name_or_path", reward_path, "one reward model")
    paths = {"actor": ("actor.model_name_or_path", actor_path),
             "ref": ("actor.model_name_or_path", actor_path),
             "reward": ("reward.model_name_or_path", reward_path)}
    if algorithm == "ppo":
        critic = "critic.model_name_or_path"
        paths["critic"] = (critic, reader.text(critic)) if reader.on(critic) \
            else ("reward.model_name_or_path", reward_path)
    models = {role: ModelRole(spec=model_spec_for(path, reader.where(flag), f"--{flag}",
                                                  base_dir),
                              head="value" if role in VALUE_HEAD_ROLES else "lm")
              for role, (flag, path) in paths.items()}
    try:
        batch = BatchSpec(n_seqs=n_seqs, prompt_len=max_len - gen_len, gen_len=gen_len,
                          ppo_minibatches=n_seqs // per_step, group_size=group)
    except ValidationError as err:
        raise InputError(f"{reader.source}: batch flags give an invalid batch "
                         f"({err.errors()[0]['msg']})") from None
    return Workflow(algorithm=algorithm, models=models, batch=batch,
                    inputs=BUILTIN_INPUTS[algorithm], calls=BUILTIN_CALLS[algorithm])


def read_layout(reader: FlagReader, workflow: Workflow) -> OpenRLHFLayout:
    engines = reader.integer("vllm.num_engines", minimum=0)
    if not engines:
        raise reader.refuse("vllm.num_engines", "is 0 or not given (generation in DeepSpeed)",
                            "vLLM engines, >= 1")
    stage = reader.integer("ds.zero_stage", minimum=0)
    if stage > 3:
        raise reader.refuse("ds.zero_stage", str(stage), "0, 1, 2 or 3")

    def gpus(role: str) -> int:
        return reader.integer(f"{role}.num_nodes") * reader.integer(f"{role}.num_gpus_per_node")

    return OpenRLHFLayout(
        actor_gpus=gpus("actor"), ref_gpus=gpus("ref"), reward_gpus=gpus("reward"),
        critic_gpus=gpus("critic") if "critic" in workflow.models else None,
        vllm_engines=engines, vllm_tp=reader.integer("vllm.tensor_parallel_size"),
        colocate_all=reader.on("train.colocate_all"),
        colocate_actor_ref=reader.on("train.colocate_actor_ref"),
        colocate_critic_reward=reader.on("train.colocate_critic_reward"),
        zero_stage=stage, ds_tp=reader.integer("ds.tensor_parallel_size"),
        gradient_checkpointing=reader.on("actor.gradient_checkpointing_enable"),
        train_micro_batch_size=reader.integer("train.micro_batch_size"),
        rollout_micro_batch_size=reader.integer("rollout.micro_batch_size"),
        vllm_gpu_memory_utilization=reader.fraction("vllm.gpu_memory_utilization",
                                                    VLLM_GPU_MEMORY_UTILIZATION))


def dynamic_micro_batches(reader: FlagReader, workflow: Workflow, layout: OpenRLHFLayout,
                          executions: dict) -> dict:
    """Executions with the micro-batch counts of --train.dynamic_batch_enable (module
    docstring), every sequence at its full length."""
    seq_len = workflow.batch.seq_len
    train_tokens = reader.integer("train.max_tokens_per_gpu")
    rollout_tokens = reader.integer("rollout.max_tokens_per_gpu") or train_tokens
    per_step = workflow.batch.n_seqs // workflow.batch.ppo_minibatches
    actor_ranks = layout.actor_gpus // layout.ds_tp
    fit = max(1, rollout_tokens * layout.ds_tp // seq_len)
    rollout_batches = max(math.ceil(workflow.batch.n_seqs / fit) // actor_ranks * actor_ranks,
                          actor_ranks)
    updated = {}
    for name, ex in executions.items():
        kind = workflow.call_by_name[name].kind
        if kind == "train":
            fit_train = max(1, train_tokens * layout.ds_tp // seq_len)
            micro = math.ceil(per_step // ex.dp / fit_train)
        elif kind == "inference":
            micro = math.ceil(rollout_batches / ex.dp)
        else:
            micro = ex.micro_batches
        updated[name] = ex.model_copy(update={"micro_batches": micro})
    return updated


def notes_of(reader: FlagReader, layout: OpenRLHFLayout, workflow: Workflow,
             cluster: ClusterSpec, executions: dict[str, Execution]) -> list[str]:
    gen = executions["actor_gen"]
    batching = rollout_batching(workflow, cluster, "actor_gen", gen.devices, gen.dp, gen.tp,
                                layout.vllm_gpu_memory_utilization)
    notes = [("placement: colocated roles share their placement group's GPUs; every other "
              "role gets its own GPUs, largest pool first (Ray's PACK fixes nodes, not ids)"),
             (f"vLLM engines (no max_num_seqs is passed, so vLLM's default applies): "
              f"{batching.note()}")]
    if layout.zero_stage == 2:
        notes.append("--ds.zero_stage 2 priced as ZeRO-1 (optimizer states sharded over dp, "
                     "gradients reduce-scattered); ZeRO-2's smaller gradient memory is not "
                     "counted")
    if layout.zero_stage == 3:
        notes.append("--ds.zero_stage 3: parameters sharded over dp on every DeepSpeed role "
                     "(the inference-only models too, as OpenRLHF's eval config does)")
    if reader.on("train.dynamic_batch_enable"):
        notes.append("--train.dynamic_batch_enable: micro-batches counted with every "
                     "sequence at its full length (prompt + response)")
    if reader.on("ds.packing_samples"):
        notes.append("--ds.packing_samples: no padding; priced at the batch's lengths as "
                     "given (full length here), which packing processes as they are")
    sleep = [f"--{n}" for n in ("vllm.enable_sleep", "ds.enable_sleep") if reader.on(n)]
    if sleep:
        notes.append(f"{', '.join(sleep)}: offloading while other roles run is not priced; "
                     f"colocated models stay resident")
    unpriced = [f"--{n}" for n in NOT_PRICED if n in reader.flags]
    if unpriced:
        notes.append(f"read, not priced: {', '.join(unpriced)}")
    ignored = sorted(n for n in reader.flags if n not in READ and n not in NOT_PRICED)
    if ignored:
        notes.append(f"no effect on what we price: {', '.join('--' + n for n in ignored)}")
    return notes


def import_command(path: Path, cluster: ClusterSpec) -> ImportedConfig:
    reader = FlagReader(read_flags(path), str(path))
    check_refused(reader)
    workflow = read_workflow(reader, Path(path).parent)
    layout = read_layout(reader, workflow)
    dynamic = reader.on("train.dynamic_batch_enable")
    if dynamic:   # micro-batches come from the token budgets below, not the per-GPU sizes
        layout = OpenRLHFLayout(**{**layout.__dict__, "train_micro_batch_size": 1,
                                   "rollout_micro_batch_size": 1})
    executions, problems = executions_of(layout, workflow, cluster)
    if problems:
        raise InputError(f"{path}: {'; '.join(problems)}")
    if dynamic:
        executions = dynamic_micro_batches(reader, workflow, layout, executions)
    for name, ex in executions.items():
        call = workflow.call_by_name[name]
        problem = execution_problem(ex, workflow.models[call.model].spec, cluster, call,
                                    workflow.batch)
        if problem:
            raise InputError(f"{path}: {name}: {problem}")
    return ImportedConfig(workflow=workflow, executions=executions,
                          notes=notes_of(reader, layout, workflow, cluster, executions))
