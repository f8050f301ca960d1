"""What an OpenRLHF train_ppo_ray run's resource flags imply: the device pools of its roles
and one execution per call. Import, export and the target's plan space all go through
`executions_of`, so that what we export is what we read back.

Sources (OpenRLHF/OpenRLHF, tag v0.11.0):
- openrlhf/cli/train_ppo_ray.py `train()`: the creation order and the placement groups.
  With --train.colocate_actor_ref or --train.colocate_all one PACK placement group of
  actor.num_nodes x actor.num_gpus_per_node bundles is made first and the actor and the
  reference share it (equal sizes asserted when --algo.kl.init_coef > 0); with colocate_all
  the vLLM engines share it too (num_engines x tensor_parallel_size == actor GPUs
  asserted), and so do the critic and the reward model (on its first bundles) unless
  --train.colocate_critic_reward gives those two a placement group of their own (equal
  sizes asserted). Every other role gets its own PACK group (openrlhf/trainer/ray/
  launcher.py RayActorGroup), the vLLM engines theirs (openrlhf/trainer/ray/
  vllm_engine.py create_vllm_engines: engine i on tp consecutive bundles).
- openrlhf/utils/deepspeed/deepspeed.py: one strategy for every DeepSpeed role:
  --ds.zero_stage for training (get_train_ds_config), stage 3 for the inference-only
  models when the stage is 3 and stage 0 otherwise (get_ds_eval_config); AutoTP degree
  --ds.tensor_parallel_size, dp = GPUs / tp (setup_distributed's device mesh).
- openrlhf/trainer/ppo_utils/experience_maker.py split_rollout_samples: inference runs in
  micro-batches of --rollout.micro_batch_size samples per GPU, dealt round-robin to the dp
  ranks; training in --train.micro_batch_size per GPU, --train.batch_size samples a step.

- openrlhf/trainer/ray/vllm_engine.py create_vllm_engines: the engines are
  vllm.AsyncEngineArgs with no max_num_seqs, and train_ppo_ray has no flag for it, so
  vLLM's default applies: AsyncLLMEngine.from_engine_args runs under
  UsageContext.ENGINE_CONTEXT, which vLLM's EngineArgs.get_batch_defaults does not list
  (it lists LLM_CLASS and OPENAI_API_SERVER), so max_num_seqs falls back to
  SchedulerConfig.DEFAULT_MAX_NUM_SEQS = 128 (vllm-project/vllm vllm/engine/arg_utils.py,
  vllm/config/scheduler.py; OpenRLHF v0.11.0's setup.py pins vllm==0.27.1).
  openrlhf/trainer/ppo_utils/samples_generator.py deals the prompts to the engines by
  load, so each gets an even share. An engine holds at most min(max_num_seqs, the rows
  its KV pool holds) at once, the pool being what --vllm.gpu_memory_utilization (default
  0.95, train_ppo_ray.py) leaves after the weights; its rows are priced as ceil(rows /
  that) static micro-batches (rollout_batching; planner.frameworks.engine_batching).

Ray's PACK strategy fixes which node each bundle lands on, not which device ids: we place
the pools largest first (equal sizes in creation order), on consecutive devices, so that
every pool of a power-of-two size or of whole nodes is an aligned mesh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution, parallel_degrees_problem
from planner.domain.mesh import mesh_problem
from planner.domain.workflow import Workflow
from planner.frameworks.engine_batching import EngineBatching, engine_batching

TRAIN_CALLS = {"actor_train": "actor", "critic_train": "critic"}
VLLM_GPU_MEMORY_UTILIZATION = 0.95   # --vllm.gpu_memory_utilization's default (train_ppo_ray)
INFERENCE_CALLS = {"ref_inf": "ref", "rew_inf": "reward", "critic_inf": "critic"}


@dataclass(frozen=True)
class OpenRLHFLayout:
    """The cost-relevant resource flags of one run (role GPUs = num_nodes x
    num_gpus_per_node). critic_gpus is None without a critic (estimators other than gae).
    Micro-batch sizes are per GPU, as OpenRLHF counts them."""

    actor_gpus: int
    ref_gpus: int
    reward_gpus: int
    critic_gpus: int | None
    vllm_engines: int
    vllm_tp: int
    colocate_all: bool
    colocate_actor_ref: bool
    colocate_critic_reward: bool
    zero_stage: int
    ds_tp: int
    gradient_checkpointing: bool
    train_micro_batch_size: int
    rollout_micro_batch_size: int
    vllm_gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION


@dataclass(frozen=True)
class Pool:
    """One placement group (or a role's own devices) and the roles on it, in order."""

    size: int
    roles: tuple[str, ...]


def role_sizes(layout: OpenRLHFLayout) -> dict[str, int]:
    sizes = {"vllm": layout.vllm_engines * layout.vllm_tp, "actor": layout.actor_gpus,
             "ref": layout.ref_gpus, "reward": layout.reward_gpus}
    if layout.critic_gpus is not None:
        sizes["critic"] = layout.critic_gpus
    return sizes


def pools_of(layout: OpenRLHFLayout) -> tuple[list[Pool], list[str]]:
    """The pools in train()'s creation order, and a line per assertion OpenRLHF would fail."""
    sizes = role_sizes(layout)
    has_critic = "critic" in sizes
    problems: list[str] = []
    pools: list[Pool] = []
    if layout.colocate_all or layout.colocate_actor_ref:
        shared = ["actor", "ref"]
        if layout.colocate_all:
            shared.insert(0, "vllm")
        pools.append(Pool(sizes["actor"], tuple(shared)))
        if not layout.colocate_all:
            pools.append(Pool(sizes["vllm"], ("vllm",)))
    else:
        pools += [Pool(sizes["vllm"], ("vllm",)), Pool(sizes["actor"], ("actor",)),
                  Pool(sizes["ref"], ("ref",))]
    if layout.colocate_actor_ref or layout.colocate_all:
        if layout.colocate_all and sizes["vllm"] != sizes["actor"]:
            problems.append(f"--train.colocate_all needs vllm.num_engines x "
                            f"vllm.tensor_parallel_size ({layout.vllm_engines} x "
                            f"{layout.vllm_tp}) = actor GPUs ({sizes['actor']})")
        if sizes["ref"] != sizes["actor"]:
            problems.append(f"colocating actor and ref needs equal GPU counts (actor "
                            f"{sizes['actor']}, ref {sizes['ref']})")
    pair = ("critic", "reward") if has_critic else ("reward",)
    if has_critic and layout.colocate_critic_reward:
        if sizes["critic"] != sizes["reward"]:
            problems.append(f"--train.colocate_critic_reward needs equal GPU counts "
                            f"(critic {sizes['critic']}, reward {sizes['reward']})")
        pools.append(Pool(sizes["critic"], pair))
    elif layout.colocate_all:
        pools[0] = Pool(pools[0].size, pools[0].roles + pair)
        too_big = [r for r in pair if sizes[r] > sizes["actor"]]
        if too_big:
            problems.append(f"--train.colocate_all puts {too_big[0]} ({sizes[too_big[0]]} "
                            f"GPUs) on the actor's {sizes['actor']} bundles")
    else:
        pools += [Pool(sizes[r], (r,)) for r in pair]
    return pools, problems


def role_devices(layout: OpenRLHFLayout, cluster: ClusterSpec
                 ) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Devices of each role (module docstring: largest pool first), and a line per reason
    the layout cannot run on `cluster` (including OpenRLHF's own assertions)."""
    pools, problems = pools_of(layout)
    sizes = role_sizes(layout)
    needed = sum(p.size for p in pools)
    if needed > cluster.num_devices:
        problems.append(f"the roles need {needed} GPUs, the cluster {cluster.name} has "
                        f"{cluster.num_devices}")
        return {}, problems
    order = sorted(range(len(pools)), key=lambda i: -pools[i].size)
    devices: dict[str, tuple[int, ...]] = {}
    start = 0
    for i in order:
        for role in pools[i].roles:
            devices[role] = tuple(range(start, start + sizes[role]))
        start += pools[i].size
    for role, ids in devices.items():
        problem = mesh_problem(ids, cluster)
        if problem:
            problems.append(f"{role} on {sizes[role]} GPUs (devices {ids[0]}-{ids[-1]}): "
                            f"{problem}")
    return devices, problems


VLLM_DEFAULT_MAX_NUM_SEQS = 128   # module docstring: vLLM's default for OpenRLHF's engines


def rollout_batching(workflow: Workflow, cluster: ClusterSpec, call: str,
                     devices: tuple[int, ...], engines: int, tp: int,
                     gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION
                     ) -> EngineBatching:
    """How `engines` vLLM engines of `tp` GPUs batch generate call `call` (module
    docstring): at most min(vLLM's default max_num_seqs, KV-pool rows) rows at once."""
    return engine_batching(workflow, call, cluster, devices, engines, tp,
                           VLLM_DEFAULT_MAX_NUM_SEQS, "max_num_seqs (vLLM's default)",
                           gpu_memory_utilization, "--vllm.gpu_memory_utilization")


def train_micro_batches(workflow: Workflow, dp: int, per_gpu: int) -> int | None:
    """Micro-batches per dp rank per optimizer step, or None when they do not divide."""
    per_step = workflow.batch.n_seqs // workflow.batch.ppo_minibatches
    if per_step % (dp * per_gpu):
        return None
    return per_step // (dp * per_gpu)


def inference_micro_batches(workflow: Workflow, dp: int, per_gpu: int) -> int:
    """Micro-batches the busiest dp rank runs: ceil(n_seqs / per_gpu) dealt round-robin."""
    return math.ceil(math.ceil(workflow.batch.n_seqs / per_gpu) / dp)


@lru_cache(maxsize=1 << 16)
def _execution(devices: tuple[int, ...], dp: int, tp: int, micro_batches: int,
               train: bool, zero_stage: int, recompute: str) -> Execution:
    """One call's execution; cached, since the plans of a target space share most of them."""
    if train:
        return Execution(devices=devices, dp=dp, tp=tp, pp=1, micro_batches=micro_batches,
                         shard_optimizer_over_dp=zero_stage >= 1, recompute=recompute,
                         shard_parameters_over_dp=zero_stage == 3)
    return Execution(devices=devices, dp=dp, tp=tp, pp=1, micro_batches=micro_batches,
                     shard_parameters_over_dp=zero_stage == 3)


def executions_of(layout: OpenRLHFLayout, workflow: Workflow, cluster: ClusterSpec
                  ) -> tuple[dict[str, Execution], list[str]]:
    """One execution per call of `workflow`, and a line per reason there is none."""
    devices, problems = role_devices(layout, cluster)
    if problems:
        return {}, problems
    return executions_on(layout, workflow, cluster, devices)


def executions_on(layout: OpenRLHFLayout, workflow: Workflow, cluster: ClusterSpec,
                  devices: dict[str, tuple[int, ...]]) -> tuple[dict[str, Execution], list[str]]:
    """executions_of with the roles' devices given (role_devices of the same layout)."""
    problems: list[str] = []
    recompute = "full" if layout.gradient_checkpointing else "none"
    executions: dict[str, Execution] = {}
    for name in workflow.call_order:
        call = workflow.call_by_name[name]
        if call.kind == "generate":
            problem = parallel_degrees_problem(workflow.models[call.model].spec,
                                               layout.vllm_tp, 1)
            if problem:
                problems.append(f"{name}: --vllm.tensor_parallel_size: {problem}")
                continue
            batching = rollout_batching(workflow, cluster, name, devices["vllm"],
                                        layout.vllm_engines, layout.vllm_tp,
                                        layout.vllm_gpu_memory_utilization)
            if batching.problem():
                problems.append(f"{name}: {batching.problem()}")
                continue
            executions[name] = _execution(devices["vllm"], layout.vllm_engines,
                                          layout.vllm_tp, batching.micro_batches, False, 0,
                                          recompute)
            continue
        role = TRAIN_CALLS.get(name) or INFERENCE_CALLS.get(name)
        if role is None or role not in devices:
            problems.append(f"call {name} of model {call.model} has no OpenRLHF role")
            continue
        ids = devices[role]
        if len(ids) % layout.ds_tp:
            problems.append(f"{role}: {len(ids)} GPUs are not a multiple of "
                            f"--ds.tensor_parallel_size {layout.ds_tp}")
            continue
        dp = len(ids) // layout.ds_tp
        if call.kind == "train":
            micro = train_micro_batches(workflow, dp, layout.train_micro_batch_size)
            if micro is None:
                problems.append(
                    f"{name}: {workflow.batch.n_seqs // workflow.batch.ppo_minibatches} "
                    f"samples a step do not split into dp {dp} x --train.micro_batch_size "
                    f"{layout.train_micro_batch_size}")
                continue
            executions[name] = _execution(ids, dp, layout.ds_tp, micro, True,
                                          layout.zero_stage, recompute)
        else:
            micro = inference_micro_batches(workflow, dp, layout.rollout_micro_batch_size)
            executions[name] = _execution(ids, dp, layout.ds_tp, micro, False,
                                          layout.zero_stage, recompute)
    return executions, problems
