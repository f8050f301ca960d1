"""What ROLL 0.3.0's RLVR pipeline can run: its workflows and per-role layouts.

From alibaba/ROLL v0.3.0 (roll_keys.py names the files):
- placement: every role (actor_infer, actor_train, reference, critic, a reward domain) has
  its own device_mapping of global GPU ids; the resource manager places each worker on the
  GPU its id names, and roles may share GPUs in any way (colocated roles offload their
  states between calls), so any allowed mesh per role is expressible. A role's calls share
  its mesh and its strategy: the critic's values (compute_values) and its training run on
  one worker group with one layout.
- generation (actor_infer, vLLM / SGLang): num_gpus_per_worker = tensor_parallel_size x
  pipeline_parallel_size GPUs per engine, device_mapping / that many engines; we write
  pipeline_parallel_size 1. An engine holds at most min(strategy_config.max_num_seqs, the
  rows its KV pool holds) at once and is priced as ceil(rows per engine / that) static
  micro-batches (planner.frameworks.engine_batching), so a generation micro-batch count is
  expressible when some max_num_seqs gives it (engine_max_num_seqs) and that max_num_seqs
  is at most ROLL's max_num_batched_tokens 8192 (vLLM refuses a larger one, roll_keys.py).
- Megatron roles (megatron_train, megatron_infer): dp = devices / (tp x pp); the actor's dp
  must divide rollout_batch_size (base_config.py, validate_megatron_batch_size).
- FSDP2 roles (fsdp2_train, fsdp2_infer): parameters sharded over all the role's devices
  (fsdp_size 1 or >= devices: one shard group), tp 1, pp 1; activation checkpointing of
  whole layers (model_args.disable_gradient_checkpointing false) or none.
- micro-batches: a train step of a rank is gradient_accumulation_steps micro-batches of
  per_device_train_batch_size sequences (roll/pipeline/base_worker.py, train_step:
  backward_batch_size = per_device_train_batch_size x gradient_accumulation_steps), so
  ppo_minibatches = sequences / (dp x backward_batch_size); inference (log-probs, values,
  rewards) runs micro-batches of infer_batch_size sequences per rank. Both sizes are whole
  numbers, so each call's sequences per step must split evenly over dp x micro_batches.
- workflows: adv_estimator gae (PPO, with the critic), grpo / reinforce (no critic); the
  reference is left out when no KL term needs it; rewards are rule workers (no GPU, not
  priced) or a reward model domain (roll.pipeline.base_worker.RewardWorker, a
  sequence-classification forward pass: our rew_inf).
"""

from __future__ import annotations

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.workflow import Workflow
from planner.frameworks.engine_batching import concurrency_for, rows_per_engine
from planner.frameworks.roll_keys import ADV_ESTIMATOR, ROLL_MAX_NUM_BATCHED_TOKENS
from planner.frameworks.space_common import steps
from planner.frameworks.workflow_fit import builtin_call_problems, reference_problem

OPTIONAL_CALLS = ("rew_inf", "ref_inf")   # rule rewards; no KL term
ENGINE_CALLS = ("actor_gen",)


def workflow_problems(workflow: Workflow) -> list[str]:
    """Why ROLL's RLVR pipeline cannot run `workflow` as it stands."""
    if workflow.algorithm not in ADV_ESTIMATOR:
        runs = ", ".join(f"{a} (adv_estimator {e})" for a, e in ADV_ESTIMATOR.items())
        return [f"workflow: algorithm {workflow.algorithm}: ROLL's RLVR pipeline runs {runs}"]
    return builtin_call_problems(workflow, "ROLL", OPTIONAL_CALLS) + reference_problem(
        workflow, "ROLL", "`pretrain`")


def engine_max_num_seqs(n_seqs: int, ex: Execution) -> int | None:
    """The max_num_seqs that splits each of `ex.dp` engines' rows into `ex.micro_batches`
    static micro-batches (engine_batching.concurrency_for), or None when none does."""
    return concurrency_for(n_seqs, ex.dp, ex.micro_batches)


def engine_problem(n_seqs: int, ex: Execution) -> str | None:
    """Why no ROLL vLLM engine config gives `ex`'s generation micro-batches, or None."""
    rows = rows_per_engine(n_seqs, ex.dp)
    max_num_seqs = engine_max_num_seqs(n_seqs, ex)
    if max_num_seqs is None:
        return (f"micro_batches {ex.micro_batches}: no max_num_seqs splits an engine's {rows} "
                f"sequences into that many (ROLL's vLLM engines run ceil({rows} / "
                f"max_num_seqs))")
    if max_num_seqs > ROLL_MAX_NUM_BATCHED_TOKENS:
        return (f"micro_batches {ex.micro_batches}: needs max_num_seqs {max_num_seqs}, more "
                f"than ROLL's max_num_batched_tokens {ROLL_MAX_NUM_BATCHED_TOKENS}, which vLLM "
                f"refuses")
    return None


def cluster_problem(cluster: ClusterSpec) -> str | None:
    sizes = set(cluster.node_devices_per_node)
    if len(sizes) > 1:
        return (f"cluster: nodes of {sorted(sizes)} devices: ROLL numbers GPUs with one "
                f"num_gpus_per_node")
    return None


def _call_problems(workflow: Workflow, name: str, ex: Execution) -> list[str]:
    kind = workflow.call_by_name[name].kind
    problems = []
    if name in ENGINE_CALLS:
        if ex.pp != 1:
            problems.append(f"executions.{name}: pp {ex.pp}: we write ROLL's vLLM engines with "
                            f"pipeline_parallel_size 1 (tensor_parallel_size only)")
        problem = engine_problem(workflow.batch.n_seqs, ex)
        if problem:
            problems.append(f"executions.{name}: {problem}")
        return problems
    if ex.shard_parameters_over_dp and (ex.tp, ex.pp) != (1, 1):
        problems.append(f"executions.{name}: {ex.layout_text()} with parameters sharded: "
                        f"ROLL's FSDP2 strategies run tp 1, pp 1")
    if ex.shard_parameters_over_dp and kind == "train" and ex.recompute == "selective":
        problems.append(f"executions.{name}: recompute selective: ROLL's fsdp2_train "
                        f"checkpoints whole layers (disable_gradient_checkpointing false) or none")
    seqs = steps(workflow, name)
    if seqs % (ex.dp * ex.micro_batches):
        size = "per_device_train_batch_size" if kind == "train" else "infer_batch_size"
        problems.append(f"executions.{name}: {seqs} sequences per step / (dp {ex.dp} x "
                        f"micro_batches {ex.micro_batches}) is no whole {size}, which ROLL's "
                        f"micro-batch size must be")
    return problems


def unexpressible(workflow: Workflow, cluster: ClusterSpec,
                  executions: dict[str, Execution]) -> list[str]:
    """One line per feature of the plan ROLL 0.3.0 cannot express (module docstring)."""
    problems = workflow_problems(workflow)
    if problems:
        return problems
    problem = cluster_problem(cluster)
    if problem:
        return [problem]
    for name, ex in executions.items():
        problems.extend(_call_problems(workflow, name, ex))
    train = executions["actor_train"]
    prompts = workflow.batch.n_seqs // workflow.batch.group_size
    if not train.shard_parameters_over_dp and prompts % train.dp:
        problems.append(f"executions.actor_train: dp {train.dp} does not divide the {prompts} "
                        f"prompts (rollout_batch_size), which ROLL's Megatron check requires")
    if {"critic_inf", "critic_train"} <= set(executions):
        inf, train = executions["critic_inf"], executions["critic_train"]
        if (inf.devices, inf.dp, inf.tp, inf.pp, inf.shard_parameters_over_dp) != \
                (train.devices, train.dp, train.tp, train.pp, train.shard_parameters_over_dp):
            problems.append(f"executions.critic_inf: {inf.call_layout_text('inference')} on "
                            f"devices {inf.devices[0]}-{inf.devices[-1]} differs from "
                            f"critic_train's {train.call_layout_text('inference')} on "
                            f"{train.devices[0]}-{train.devices[-1]}: ROLL's critic is one "
                            f"worker group with one device_mapping and strategy")
    return problems
