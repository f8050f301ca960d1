"""What AReaL v1.0.4 can run: its workflows, where its engines' GPUs are, per-role layouts.

From inclusionAI/AReaL v1.0.4:
- areal/trainer/rl_trainer.py (PPOTrainer, which examples/math/gsm8k_rl.py runs for GRPO
  and PPO): engines for the actor (train), an optional critic (compute_values, ppo_update),
  an optional reference (compute_logp, created only when actor.kl_ctl > 0 and a `ref`
  section is given) and the rollout (SGLang or vLLM servers). Rewards come from a reward
  function inside the rollout workflow (reward_fn, e.g. areal.reward.gsm8k.gsm8k_reward_fn):
  there is no reward-model engine, so a plan with a reward-model call is not expressible.
  Engines are created in the order actor, critic, ref (then teacher), rollout.
- areal/infra/scheduler/local.py (LocalScheduler.create_workers): a `separation` engine gets
  the next GPUs in that order (a counter from GPU 0); a `colocation` engine (critic / ref
  with target actor, the examples' choice for ref) reuses the target's GPUs and must have as
  many workers (train engines: one per GPU, so the same world size). Colocating the rollout
  with the actor offloads each engine between phases (torch_memory_saver, weight updates by
  disk, _validate_cfg): not modelled, so the rollout always has its own GPUs. Ray / Slurm
  schedulers pick real GPUs of the same shape; we place them as the local scheduler does.
- each engine has its own backend (areal_backend.py): a rollout server is t x p GPUs (pp 1
  for SGLang), d servers; a train engine is Megatron (dp x tp x pp; ZeRO-1 from
  megatron.ddp.use_distributed_optimizer; recomputation from gradient_checkpointing and
  megatron.recompute_granularity) or FSDP (our shard_parameters_over_dp, dp x tp, pp 1;
  gradient_checkpointing recomputes whole layers, so no selective mode).
- micro-batches (areal/utils/data.py split_padded_tensor_dict_into_mb_list, MicroBatchSpec;
  megatron_engine.py _prepare_mb_list): a train engine splits each dp rank's batch into
  at least mb_spec.n_mbs micro-batches of at most mb_spec.max_tokens_per_mb tokens; Megatron
  with pp > 1 makes at least 2 pp of them and a multiple of pp. One mb_spec serves both of a
  critic's calls, so critic_inf runs ppo_minibatches times critic_train's count.
- rollout (areal/infra/controller/rollout_controller.py, staleness_manager.py): one rollout
  is one prompt's group of n_samples sequences; at most max_concurrent_rollouts (default
  consumer_batch_size) are in flight, and with max_head_offpolicyness 0 at most
  consumer_batch_size per weight version, which must be train_dataset.batch_size for a step
  to take one batch. The servers batch what is in flight continuously, so a generate call's
  micro-batches are the waves of in-flight prompts: prompts / concurrent rollouts.
Export writes the plan's staleness as rollout.max_head_offpolicyness, with the decoupled loss
when it is >= 1 (areal_export.py); import reads it as the plan's staleness (areal_import.py).
Asynchronous (max_head_offpolicyness >= 1) the servers refill a finished row's slot with the
next prompt: continuous batching (rollout_batching).
"""

from __future__ import annotations

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.workflow import Workflow
from planner.frameworks.areal_keys import CALL_ROLE, ROLE_ORDER
from planner.frameworks.space_common import steps
from planner.frameworks.workflow_fit import builtin_call_problems

ALGORITHMS = ("ppo", "grpo")       # PPOTrainer with a critic (GAE) / without one
OPTIONAL_CALLS = ("ref_inf",)      # the reference runs only with a KL term
REWARD_CALLS = ("rew_inf", "rew_greedy_inf")
COLOCATABLE = ("critic", "ref")    # engines that may share the actor's GPUs
TRAIN_ROLES = ("actor", "critic", "ref")


def _reward_problems(workflow: Workflow) -> list[str]:
    rewards = sorted(set(workflow.call_by_name) & set(REWARD_CALLS))
    return [(f"workflow: calls {rewards}: AReaL computes rewards with a reward function inside "
            f"the rollout workflow (e.g. areal.reward.gsm8k.gsm8k_reward_fn); a reward-model "
            f"call is not expressible (leave it out of the workflow)")] if rewards else []


def _shape_problems(workflow: Workflow) -> list[str]:
    """Problems of the workflow's calls other than its reward calls."""
    if workflow.algorithm not in ALGORITHMS:
        return [(f"workflow: algorithm {workflow.algorithm}: AReaL's PPOTrainer runs ppo (with "
                f"a critic) and grpo (without); {', '.join(ALGORITHMS)} are expressible")]
    # reward calls are _reward_problems' to report: here they count as optional
    return builtin_call_problems(workflow, "AReaL", OPTIONAL_CALLS + REWARD_CALLS)


def workflow_problems(workflow: Workflow) -> list[str]:
    """Why AReaL's PPOTrainer cannot run `workflow` as it stands."""
    return _reward_problems(workflow) + _shape_problems(workflow)


def role_devices(sizes: dict[str, int], colocated: set[str]) -> dict[str, tuple[int, ...]]:
    """GPUs of each engine (role -> world size) as the scheduler hands them out (module
    docstring): separated engines take consecutive ranges from GPU 0 in creation order,
    colocated ones the actor's."""
    devices: dict[str, tuple[int, ...]] = {}
    start = 0
    for role in ROLE_ORDER:
        if role not in sizes:
            continue
        if role in colocated:
            devices[role] = devices["actor"]
            continue
        devices[role] = tuple(range(start, start + sizes[role]))
        start += sizes[role]
    return devices


def min_micro_batches(pp: int, megatron: bool) -> int:
    """The fewest micro-batches an engine makes (megatron_engine.py _prepare_mb_list)."""
    return 2 * pp if megatron and pp > 1 else 1


def _placement_problems(cluster: ClusterSpec, executions: dict[str, Execution]) -> list[str]:
    actor = executions["actor_train"].devices
    by_role = {CALL_ROLE[name]: ex.devices for name, ex in executions.items()}
    problems = []
    rollout_shares = bool(set(executions["actor_gen"].devices) & set(actor))
    if rollout_shares:
        problems.append("executions.actor_gen: shares GPUs with actor_train: colocating "
                        "AReaL's rollout with the actor offloads both between phases "
                        "(torch_memory_saver, weight updates by disk), which is not modelled")
    colocated = {r for r in COLOCATABLE if by_role.get(r) == actor}
    sizes = {role: len(devices) for role, devices in by_role.items()}
    expected = role_devices(sizes, colocated)
    for name, ex in executions.items():
        role = CALL_ROLE[name]
        if ex.devices != expected[role] and not (role == "rollout" and rollout_shares):
            want = expected[role]
            past = f", past the cluster's {cluster.num_devices}" \
                if want[-1] >= cluster.num_devices else ""
            problems.append(f"executions.{name}: devices {ex.devices[0]}-{ex.devices[-1]}: "
                            f"AReaL gives the {role} engine GPUs {want[0]}-{want[-1]}{past} "
                            f"(engines {', '.join(ROLE_ORDER)} take consecutive GPUs from 0 "
                            f"in that order; critic and ref may share the actor's)")
    if len(set(cluster.node_devices_per_node)) > 1:
        problems.append(f"cluster: {cluster.describe()}: AReaL's cluster.n_gpus_per_node is one "
                        f"count for every node")
    return problems


def _call_problems(workflow: Workflow, name: str, ex: Execution) -> list[str]:
    call = workflow.call_by_name[name]
    if call.kind == "generate":
        prompts = workflow.batch.n_seqs // workflow.batch.group_size
        return [] if prompts % ex.micro_batches == 0 else [
            (f"executions.{name}: micro_batches {ex.micro_batches}: AReaL's rollout runs waves "
             f"of rollout.max_concurrent_rollouts prompts; {prompts} prompts make no whole "
             f"number of {ex.micro_batches} waves")]
    problems = []
    megatron = not ex.shard_parameters_over_dp
    if not megatron and call.kind == "train" and ex.recompute == "selective":
        problems.append(f"executions.{name}: recompute selective: AReaL's FSDP engine "
                        f"checkpoints whole layers (gradient_checkpointing) or none")
    seqs = steps(workflow, name)
    if seqs % (ex.dp * ex.micro_batches):
        problems.append(f"executions.{name}: {seqs} sequences per step / (dp {ex.dp} x "
                        f"micro_batches {ex.micro_batches}) is no whole micro-batch, which "
                        f"mb_spec.max_tokens_per_mb is written for")
    least = min_micro_batches(ex.pp, megatron)
    if megatron and (ex.micro_batches < least or ex.micro_batches % ex.pp):
        problems.append(f"executions.{name}: micro_batches {ex.micro_batches}: AReaL's Megatron "
                        f"engine with pp {ex.pp} makes at least {least} micro-batches, a "
                        f"multiple of pp")
    return problems


def _critic_problems(workflow: Workflow, executions: dict[str, Execution]) -> list[str]:
    if "critic_train" not in executions:
        return []
    inf, train = executions["critic_inf"], executions["critic_train"]
    if (inf.devices, inf.dp, inf.tp, inf.pp, inf.shard_parameters_over_dp) != \
            (train.devices, train.dp, train.tp, train.pp, train.shard_parameters_over_dp):
        return [(f"executions.critic_inf: {inf.call_layout_text('inference')} on devices "
                f"{inf.devices[0]}-{inf.devices[-1]} differs from critic_train's "
                f"{train.call_layout_text('train')}: AReaL's critic is one engine")]
    minibatches = workflow.batch.ppo_minibatches
    if inf.micro_batches != train.micro_batches * minibatches:
        return [(f"executions.critic_inf: micro_batches {inf.micro_batches}: AReaL's critic "
                f"splits both calls by one mb_spec, so critic_inf needs critic_train's "
                f"{train.micro_batches} x ppo_minibatches {minibatches}")]
    return []


def unexpressible(workflow: Workflow, cluster: ClusterSpec,
                  executions: dict[str, Execution]) -> list[str]:
    """One line per feature of the plan AReaL v1.0.4 cannot express (module docstring); a
    plan with reward-model calls is also checked for the rest of its calls."""
    problems = _reward_problems(workflow)
    shape = _shape_problems(workflow)
    if shape:
        return problems + shape
    executions = {n: ex for n, ex in executions.items() if n not in REWARD_CALLS}
    problems += _placement_problems(cluster, executions)
    for name, ex in executions.items():
        problems.extend(_call_problems(workflow, name, ex))
    return problems + _critic_problems(workflow, executions)


def rollout_batching(workflow: Workflow) -> str:
    """How the rollout servers decode as the plan prices them: asynchronous (max_staleness
    k >= 1, max_head_offpolicyness k) they refill a finished row's slot with the next
    prompt (continuous), synchronous they run waves of in-flight prompts (static; module
    docstring)."""
    return "continuous" if workflow.max_staleness else "static"
