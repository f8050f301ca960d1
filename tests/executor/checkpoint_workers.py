"""Tiny transformers checkpoints, plans over them, and the rank work of the checkpoint tests
(module-level, picklable).

The checkpoints are built locally from transformers' config classes and `save_pretrained`
(nothing is downloaded): a LlamaForCausalLM of llama-micro's shape, with its norm weights
perturbed away from ones so that a norm read wrong shows, and a LlamaForSequenceClassification
(num_labels 1) of the same shape, a reward model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from executor_workers import CALLS, ex

from planner.domain.cluster import cluster_preset
from planner.domain.model_files import resolve_model
from planner.domain.plan import Plan, Provenance, plan_from_mapping
from planner.domain.workflow import Workflow
from planner.domain.workflow_file import builtin_workflow
from runtime.batch import MicroBatch
from runtime.device import rank_device_config
from runtime.executor.config import RunConfig
from runtime.executor.worker import RankState, execute
from runtime.inference import full_logits, inference
from runtime.model import ParallelModel
from runtime.parallel_context import create_contexts

HF_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 32,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
BATCH = {"n_seqs": 8, "prompt_len": 8, "gen_len": 8, "ppo_minibatches": 2}
NUM_SEQS, SEQ_LEN = 4, 12


def save_transformers_models(root: Path) -> dict[str, Path]:
    """{"lm": causal-LM dir, "reward": sequence-classification dir} under `root`."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    torch.manual_seed(0)
    dirs = {"lm": root / "lm", "reward": root / "reward"}
    lm = LlamaForCausalLM(LlamaConfig(**HF_SHAPE))
    reward = LlamaForSequenceClassification(LlamaConfig(**HF_SHAPE, num_labels=1,
                                                        pad_token_id=0))
    for model, directory in ((lm, dirs["lm"]), (reward, dirs["reward"])):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.add_(0.1 * torch.randn_like(param))
        model.save_pretrained(directory)
    return dirs


def token_ids() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed input ids (no pad id 0, full mask, so transformers pools the last token)."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, HF_SHAPE["vocab_size"], (NUM_SEQS, SEQ_LEN), generator=g)
    return ids, torch.ones_like(ids)


def plan_on(directory: Path, executions: dict) -> Plan:
    """A tiny PPO plan on cpu2 whose every role has the checkpoint's architecture."""
    spec = resolve_model(str(directory))
    wf = builtin_workflow("ppo", "llama-tiny", BATCH)
    wf = wf.model_copy(update={"models": {r: m.model_copy(update={"spec": spec})
                                          for r, m in wf.models.items()}})
    return Plan(workflow=Workflow.model_validate(wf.model_dump()), cluster=cluster_preset("cpu2"),
                executions=executions, provenance=Provenance(created_by="tests/executor"))


def tp2_plan(directory: Path) -> Plan:
    return plan_on(directory, {c: ex([0, 1], tp=2) for c in CALLS})


def pp2_plan(directory: Path) -> Plan:
    return plan_on(directory, {c: ex([0, 1], pp=2) for c in CALLS})


def training_plan(directory: Path) -> Plan:
    """Actor generates at tp 2 and trains at pp 2 (its home); the critic trains at tp 2."""
    executions = {c: ex([0, 1], tp=2) for c in CALLS}
    executions["actor_train"] = ex([0, 1], pp=2, micro_batches=2)
    return plan_on(directory, executions)


def loaded_outputs(rank: int, world_size: int, plans: list[dict], config: RunConfig
                   ) -> list[dict]:
    """Per plan: the actor's logits and the reward model's values, as the executor created
    them (RankState with config.load) on the home placements."""
    ids, mask = token_ids()
    out = []
    for plan_data in plans:
        plan = plan_from_mapping(plan_data, "plan")
        state = RankState(plan, config, rank, rank_device_config(plan.cluster, rank, rank))
        actor = state.models["actor"][state.homes["actor"]]
        reward = state.models["reward"][state.homes["reward"]]
        out.append({"logits": full_logits(actor, [MicroBatch(ids, mask)])[0],
                    "values": inference(reward, [MicroBatch(ids, mask)])[0].values})
    return out


def train_and_save(rank: int, world_size: int, plan_data: dict, config: RunConfig) -> dict:
    return execute(rank, world_size, lambda message: None, plan_data, config)


def engine_outputs(rank: int, world_size: int, saved: str, config: RunConfig) -> dict:
    """Single process: the engine's actor logits and critic values from the saved dirs."""
    ids, mask = token_ids()
    plan = plan_on(Path(saved) / "actor", {c: ex([0]) for c in CALLS})
    plan = plan.model_copy(update={"cluster": cluster_preset("cpu1")})
    ctx = create_contexts([plan.executions["actor_gen"].placement])[0]
    device = rank_device_config(plan.cluster, rank, rank)
    actor = ParallelModel.from_hf(Path(saved) / "actor", plan.workflow.models["actor"].spec,
                                  "lm", ctx, device)
    critic = ParallelModel.from_hf(Path(saved) / "critic", plan.workflow.models["critic"].spec,
                                   "value", ctx, device)
    return {"logits": full_logits(actor, [MicroBatch(ids, mask)])[0],
            "values": inference(critic, [MicroBatch(ids, mask)])[0].values,
            "value_bias": critic.params["value_head.bias"].clone()}
