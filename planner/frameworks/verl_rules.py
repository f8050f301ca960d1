"""What verl 0.7.0 can run: its workflows, resource pools and per-role layouts.

From volcengine/verl v0.7.0:
- verl/trainer/main_ppo.py: the actor, its rollout, the reference and the critic are all
  mapped to `global_pool` (trainer.nnodes x trainer.n_gpus_per_node GPUs); only the reward
  model may get its own pool (`reward_model.enable_resource_pool`, reward_model.nnodes x
  reward_model.n_gpus_per_node). The reference runs only when a KL term needs it
  (algorithm.use_kl_in_reward or actor.use_kl_loss); the reward model only when
  reward_model.enable (else rewards are rule-based, computed on the driver).
- verl/trainer/ppo/ray_trainer.py: every role of a pool is colocated on all its GPUs (the
  hybrid engine; RayResourcePool placement groups of STRICT_PACK bundles per node), so a
  role's layout covers the whole pool: Megatron's dp = pool / (tp x pp), FSDP's dp = pool.
- verl/workers/config/rollout.py: vLLM and SGLang rollouts refuse
  pipeline_model_parallel_size > 1; a rollout replica is tp x dp x pp GPUs and the pool
  holds pool / (tp x pp) data-parallel engines; each engine runs at most
  rollout.max_num_seqs sequences at once (reward_model.rollout.max_num_seqs for the reward
  loop; both 1024 in verl's configs), passed to vLLM / SGLang as its scheduler limit.
  We price an engine as micro-batches of at most max_num_seqs rows (engine_micro_batches).
- verl/workers/megatron_workers.py, fsdp_workers.py: ppo_mini_batch_size counts prompts
  (x rollout.n, / dp per rank); *_micro_batch_size_per_gpu counts sequences per GPU; the
  Megatron critic computes values with its ppo_micro_batch_size_per_gpu (the FSDP critic
  has forward_micro_batch_size_per_gpu); ref, actor and rollout share one worker class, so
  the reference trains with the actor's strategy; the reward model here is served by the
  reward loop (reward_model.use_reward_loop, a vLLM engine: tp x dp, one micro-batch).
- verl's two base configs (ppo_trainer.yaml, ppo_megatron_trainer.yaml) set one strategy
  for every role: FSDP (our shard_parameters_over_dp, tp 1, pp 1) or Megatron.
Where our pool places the devices: the global pool is devices 0.. of the cluster, the
reward pool the first allowed mesh of its size after it (Ray picks real GPUs; any choice of
that shape prices the same).
"""

from __future__ import annotations

from planner.domain.builtin_workflows import BUILTIN_CALLS
from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.mesh import allowed_meshes, mesh_problem
from planner.domain.workflow import Workflow
from planner.frameworks.engine_batching import (
    concurrency_for,
    micro_batches_for,
    rows_per_engine,
)
from planner.frameworks.workflow_fit import builtin_call_problems, reference_problem

ADV_ESTIMATOR = {"ppo": "gae", "grpo": "grpo", "rloo": "rloo", "remax": "remax"}
CALL_ROLE = {"actor_gen": "rollout", "actor_greedy_gen": "rollout", "actor_train": "actor",
             "ref_inf": "ref", "critic_inf": "critic", "critic_train": "critic",
             "rew_inf": "reward", "rew_greedy_inf": "reward"}
# Calls verl leaves out with a config switch: the reward model (rule-based rewards) and the
# reference (no KL term).
REWARD_CALLS = ("rew_inf", "rew_greedy_inf")
REF_CALLS = ("ref_inf",)
# Roles on one strategy's engines (ref shares the actor's worker class).
SHARDED_ROLES = ("actor", "ref", "critic")


def workflow_problems(workflow: Workflow) -> list[str]:
    """Why verl's main_ppo cannot run `workflow` as it stands."""
    if workflow.algorithm not in ADV_ESTIMATOR:
        runs = ", ".join(f"{a} (adv_estimator {e})" for a, e in ADV_ESTIMATOR.items())
        return [f"workflow: algorithm {workflow.algorithm}: verl's main_ppo runs {runs}"]
    problems = builtin_call_problems(workflow, "verl", REWARD_CALLS + REF_CALLS)
    rewards = [n for c in BUILTIN_CALLS[workflow.algorithm] if (n := c.name) in REWARD_CALLS]
    if 0 < sum(n in workflow.call_by_name for n in rewards) < len(rewards):
        problems.append(f"workflow: calls {sorted(workflow.call_by_name)}: verl's reward model "
                        f"runs all of {rewards} or none")
    return problems + reference_problem(workflow, "verl", "actor_rollout_ref.model.path")


def pool_shape(devices: tuple[int, ...], cluster: ClusterSpec) -> tuple[int, int] | None:
    """(nnodes, n_gpus_per_node) of a resource pool on `devices`, or None when no pool
    [n_gpus_per_node] * nnodes is that mesh."""
    if mesh_problem(devices, cluster):
        return None
    nodes = sorted({cluster.device_node[d] for d in devices})
    per_node = {cluster.node_devices_per_node[n] for n in nodes}
    if len(nodes) == 1:
        return 1, len(devices)
    return (len(nodes), per_node.pop()) if len(per_node) == 1 else None


def global_pool(nnodes: int, n_gpus_per_node: int,
                cluster: ClusterSpec) -> tuple[int, ...] | str:
    """Devices of verl's global pool on `cluster` (its first devices), or why it does not
    fit."""
    size = nnodes * n_gpus_per_node
    node = cluster.node_devices_per_node[0]
    devices = tuple(range(size))
    if (nnodes > 1 and n_gpus_per_node != node) or n_gpus_per_node > node \
            or size > cluster.num_devices or mesh_problem(devices, cluster):
        return (f"trainer.nnodes {nnodes} x trainer.n_gpus_per_node {n_gpus_per_node} = {size} "
                f"GPUs do not fit {cluster.describe()} as whole nodes of {node} (or one "
                f"power-of-two slice of a node)")
    return devices


def reward_pool(global_devices: tuple[int, ...], size: int,
                cluster: ClusterSpec) -> tuple[int, ...] | None:
    """The first allowed mesh of `size` devices after the global pool (module docstring)."""
    end = max(global_devices) + 1
    for mesh in allowed_meshes(cluster):
        if len(mesh) == size and mesh[0] >= end:
            return mesh
    return None


def engine_micro_batches(n_seqs: int, dp: int, max_num_seqs: int) -> int:
    """Micro-batches per engine when max_num_seqs is all that limits its rows:
    ceil(rows per engine / max_num_seqs) (planner.frameworks.engine_batching, which also
    bounds a generation engine's rows by its KV pool). Every micro-batch
    (ceil(n_seqs / (dp x m)) rows, memory.micro_batch_seqs) holds at most max_num_seqs
    rows.
    """
    return micro_batches_for(rows_per_engine(n_seqs, dp), max_num_seqs)


def engine_max_num_seqs(n_seqs: int, ex: Execution) -> int | None:
    """The max_num_seqs that gives `ex`'s micro-batches (the inverse of
    engine_micro_batches: engine_batching.concurrency_for), or None when no value does."""
    return concurrency_for(n_seqs, ex.dp, ex.micro_batches)


def _micro_problem(name: str, seqs: int, ex: Execution) -> str | None:
    if seqs % (ex.dp * ex.micro_batches):
        return (f"executions.{name}: {seqs} sequences per step / (dp {ex.dp} x micro_batches "
                f"{ex.micro_batches}) is no whole micro-batch size per GPU, which verl's "
                f"*_micro_batch_size_per_gpu must be")
    return None


def _role_problems(workflow: Workflow, executions: dict[str, Execution],
                   sharded: bool) -> list[str]:
    batch = workflow.batch
    problems = []
    for name, ex in executions.items():
        role = CALL_ROLE[name]
        call = workflow.call_by_name[name]
        if role in ("rollout", "reward"):
            if ex.pp != 1:
                problems.append(f"executions.{name}: pp {ex.pp}: verl's vLLM / SGLang engines "
                                f"(rollout, reward loop) run pipeline_model_parallel_size 1")
            if engine_max_num_seqs(batch.n_seqs, ex) is None:
                rows = rows_per_engine(batch.n_seqs, ex.dp)
                problems.append(f"executions.{name}: micro_batches {ex.micro_batches}: no "
                                f"max_num_seqs splits an engine's {rows} sequences into that "
                                f"many (verl's engines run ceil({rows} / max_num_seqs))")
            continue
        if ex.shard_parameters_over_dp != sharded:
            problems.append(f"executions.{name}: shard_parameters_over_dp "
                            f"{ex.shard_parameters_over_dp}: verl sets one strategy for actor, "
                            f"ref and critic (FSDP: all sharded, Megatron: none)")
        if sharded and call.kind == "train" and ex.recompute == "selective":
            problems.append(f"executions.{name}: recompute selective: verl's FSDP engine "
                            f"checkpoints whole layers (enable_gradient_checkpointing) or none")
        seqs = batch.n_seqs // batch.ppo_minibatches if call.kind == "train" else batch.n_seqs
        problem = _micro_problem(name, seqs, ex)
        if problem:
            problems.append(problem)
    if {"critic_inf", "critic_train"} <= set(executions):
        inf, train = executions["critic_inf"], executions["critic_train"]
        if (inf.dp, inf.tp, inf.pp) != (train.dp, train.tp, train.pp):
            problems.append(f"executions.critic_inf: {inf.layout_text()} differs from "
                            f"critic_train's {train.layout_text()}: verl's critic is one worker "
                            f"with one layout")
        elif not sharded and batch.n_seqs * train.micro_batches != \
                batch.n_seqs // batch.ppo_minibatches * inf.micro_batches:
            problems.append("executions.critic_inf: verl's Megatron critic computes values "
                            "with its training micro-batch size (ppo_micro_batch_size_per_gpu); "
                            f"critic_inf needs micro_batches {inf.micro_batches} = critic_train's "
                            f"{train.micro_batches} x ppo_minibatches {batch.ppo_minibatches}")
    for first, second in (("actor_greedy_gen", "actor_gen"), ("rew_greedy_inf", "rew_inf")):
        if first in executions and executions[first] != executions[second]:
            problems.append(f"executions.{first}: verl runs it on {second}'s engines; give it "
                            f"{second}'s execution")
    return problems


def unexpressible(workflow: Workflow, cluster: ClusterSpec,
                  executions: dict[str, Execution]) -> list[str]:
    """One line per feature of the plan verl 0.7.0 cannot express (module docstring)."""
    problems = workflow_problems(workflow)
    if problems:
        return problems
    batch = workflow.batch
    prompts = batch.n_seqs // batch.group_size
    if prompts % batch.ppo_minibatches:
        problems.append(f"batch: {prompts} prompts (data.train_batch_size) / ppo_minibatches "
                        f"{batch.ppo_minibatches} is no whole actor.ppo_mini_batch_size (prompts)")
    pool = executions["actor_train"].devices
    if pool[0] != 0 or pool_shape(pool, cluster) is None:
        problems.append(f"executions.actor_train: devices {pool[0]}-{pool[-1]}: verl's global "
                        f"pool is trainer.nnodes x n_gpus_per_node GPUs from the first device")
    reward = [n for n in REWARD_CALLS if n in executions]
    for name, execution in executions.items():
        devices = execution.devices
        if name in reward and devices != pool:
            expected = reward_pool(pool, len(devices), cluster)
            if expected != devices:
                where = f"{expected[0]}-{expected[-1]}" if expected else "none fits"
                problems.append(f"executions.{name}: devices {devices[0]}-{devices[-1]}: "
                                f"verl's reward pool is the global pool or the next "
                                f"{len(devices)} GPUs after it ({where})")
        elif name not in reward and devices != pool:
            problems.append(f"executions.{name}: devices {devices[0]}-{devices[-1]}: verl "
                            f"keeps actor, rollout, ref and critic on one pool (the hybrid "
                            f"engine), actor_train's devices {pool[0]}-{pool[-1]}")
    sharded = executions["actor_train"].shard_parameters_over_dp
    return problems + _role_problems(workflow, executions, sharded)
