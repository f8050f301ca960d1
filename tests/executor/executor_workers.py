"""Plans and a multi-plan worker for the executor tests (module-level, picklable)."""

from __future__ import annotations

from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.modelspec import ModelSpec
from planner.domain.plan import Plan, Provenance, plan_to_mapping
from planner.domain.workflow import Workflow
from planner.domain.workflow_file import builtin_workflow
from runtime.executor.config import RunConfig
from runtime.executor.worker import execute

PPO_BATCH = {"n_seqs": 8, "prompt_len": 16, "gen_len": 8, "ppo_minibatches": 2}
CALLS = ("actor_gen", "rew_inf", "ref_inf", "critic_inf", "actor_train", "critic_train")


def ex(devices, dp=1, tp=1, pp=1, micro_batches=1) -> Execution:
    return Execution(devices=tuple(devices), dp=dp, tp=tp, pp=pp, micro_batches=micro_batches)


def make_plan(cluster: str, executions: dict, algorithm: str = "ppo", batch=None,
              model: str = "llama-tiny") -> Plan:
    wf = builtin_workflow(algorithm, model, batch or PPO_BATCH)
    return Plan(workflow=wf, cluster=cluster_preset(cluster), executions=executions,
                provenance=Provenance(created_by="tests/executor"))


def single_process_ppo() -> Plan:
    return make_plan("cpu1", {c: ex([0]) for c in CALLS})


def four_process_ppo_plans() -> dict[str, Plan]:
    """Three layouts on cpu4: overlapping and disjoint meshes, tp, pp and dp, reallocations."""
    return {
        # actor generates dp4 on all devices, trains tp2 x pp2 (overlapping reallocation);
        # critic tp2 on {0,1} and {2,3} (disjoint reallocation); ref pp2 on {2,3}.
        "overlap": make_plan("cpu4", {
            "actor_gen": ex(range(4), dp=4), "rew_inf": ex([0, 1], dp=2),
            "ref_inf": ex([2, 3], pp=2), "critic_inf": ex([0, 1], tp=2),
            "actor_train": ex(range(4), tp=2, pp=2, micro_batches=2),
            "critic_train": ex([2, 3], tp=2)}),
        # disjoint pools: actor {0,1} (gen dp2, train tp2), critic/ref/reward on {2,3}.
        "disjoint": make_plan("cpu4", {
            "actor_gen": ex([0, 1], dp=2, micro_batches=2), "rew_inf": ex([2]),
            "ref_inf": ex([3]), "critic_inf": ex([2, 3], dp=2),
            "actor_train": ex([0, 1], tp=2), "critic_train": ex([2, 3], dp=2)}),
        # everything colocated dp2 x tp2, actor generation pp2 x tp2 (same devices).
        "colocated": make_plan("cpu4", {
            "actor_gen": ex(range(4), tp=2, pp=2, micro_batches=2),
            "rew_inf": ex(range(4), dp=2, tp=2), "ref_inf": ex(range(4), dp=2, tp=2),
            "critic_inf": ex(range(4), dp=2, tp=2),
            "actor_train": ex(range(4), dp=2, tp=2), "critic_train": ex(range(4), dp=2, tp=2)}),
    }


def run_plans(rank: int, world_size: int, plans: list[dict], config: RunConfig) -> list[dict]:
    """Execute several plans (as mappings) one after another in one world."""
    out = []
    for plan_data in plans:
        messages: list[dict] = []
        result = execute(rank, world_size, messages.append, plan_data, config)
        out.append({"messages": messages, **result})
    return out


def as_mappings(plans) -> list[dict]:
    return [plan_to_mapping(p) for p in plans]


# A model small enough that the programmatic reward (target token 7 of 32) is hit by chance
# (~3% of tokens) and learning shows within seconds.
MICRO = ModelSpec(name="llama-micro", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                  intermediate_size=128, vocab_size=32, max_positions=64)
LEARNING_BATCH = {"ppo": {"n_seqs": 16, "prompt_len": 4, "gen_len": 8, "ppo_minibatches": 1},
                  "grpo": {"n_seqs": 16, "prompt_len": 4, "gen_len": 8, "ppo_minibatches": 1,
                           "group_size": 4}}


def learning_plan(algorithm: str) -> Plan:
    wf = builtin_workflow(algorithm, "llama-tiny", LEARNING_BATCH[algorithm])
    wf = wf.model_copy(update={"models": {r: m.model_copy(update={"spec": MICRO})
                                          for r, m in wf.models.items()}})
    wf = Workflow.model_validate(wf.model_dump())
    return Plan(workflow=wf, cluster=cluster_preset("cpu1"),
                executions={c: ex([0]) for c in wf.call_order},
                provenance=Provenance(created_by="tests/executor: learning demo"))
