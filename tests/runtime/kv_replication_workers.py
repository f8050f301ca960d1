"""Work run on every spawned rank by the kv-replication tests: tiny Qwen2-like models whose
kv heads are fewer than the tp ranks (2 kv heads at tp 4, and 1 kv head at tp 4, where the
ranks sharing a head are the whole TP group), and the same models at tp 1. Each case returns
full logits, greedy tokens, the stats of one Adam step and the parameter shards after it."""

from __future__ import annotations

import torch

from planner.domain.modelspec import ModelSpec
from planner.domain.placement import Placement
from planner.sharding.param_shards import model_params, shard_slice
from runtime.batch import MicroBatch, ModelOutputs
from runtime.device import CPU_FP32
from runtime.generate import GenerationConfig, generate
from runtime.inference import full_logits
from runtime.model import ParallelModel
from runtime.optimizer import Adam, AdamConfig
from runtime.parallel_context import create_contexts
from runtime.train import train_step

WORLD_SIZE = 4
VOCAB = 256
NUM_SEQS, SEQ_LEN, PROMPT_LEN = 4, 16, 6
GREEDY = GenerationConfig(max_new_tokens=8, pad_token_id=0)
ADAM = AdamConfig(lr=1e-3, max_grad_norm=None)
# Qwen2-like: q/k/v biases, tied embeddings; 4 query heads of head_dim 16.
QWEN2_TINY = ModelSpec(name="qwen2-tiny-kv2", num_layers=2, hidden_size=64, num_heads=4,
                       num_kv_heads=2, intermediate_size=128, vocab_size=VOCAB,
                       max_positions=128, rope_theta=1e6, norm_eps=1e-6, attention_bias=True,
                       tie_embeddings=True)
SPECS = {"kv2": QWEN2_TINY,
         "kv1": QWEN2_TINY.model_copy(update={"name": "qwen2-tiny-kv1", "num_kv_heads": 1})}
CASES = [(spec, tp) for spec in SPECS for tp in (1, 4)]


def token_ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (NUM_SEQS, SEQ_LEN), generator=torch.Generator().manual_seed(3))


def nll(outputs: ModelOutputs, mb: MicroBatch) -> torch.Tensor:
    return -(outputs.logprobs * mb.loss_mask).sum()


def _run(model: ParallelModel) -> dict:
    ids = token_ids()
    mask = torch.ones_like(ids)
    prompts = ids[:, :PROMPT_LEN]
    out = {"logits": full_logits(model, [MicroBatch(ids, mask)])[0],
           "greedy": generate(model, [MicroBatch(prompts, torch.ones_like(prompts))],
                              GREEDY)[0].tokens}
    mbs = [MicroBatch(ids[i:i + 2], mask[i:i + 2], loss_mask=torch.ones(2, SEQ_LEN - 1))
           for i in range(0, NUM_SEQS, 2)]
    out["unsummed"] = None
    if model.ctx.tp > model.spec.num_kv_heads:
        try:   # an optimizer that does not know the kv heads would leave the copies unsummed
            train_step(model, Adam(dict(model.params), ADAM, model.ctx), mbs, nll)
        except ValueError as err:
            out["unsummed"] = str(err)
    optimizer = Adam(model.params, ADAM, model.ctx, num_kv_heads=model.spec.num_kv_heads)
    out["stats"] = train_step(model, optimizer, mbs, nll)
    infos = {p.name: p for p in model_params(model.spec, model.head, 1)}
    out["shards"] = {name: (shard_slice(model.spec, infos[name], model.ctx.coord.tp_rank,
                                        model.ctx.tp), p.detach().clone())
                     for name, p in model.params.items()}
    return out


def kv_cases(rank: int, world_size: int) -> dict:
    """{(spec key, tp): result} of the cases this rank belongs to."""
    layouts = [Placement(tuple(range(tp)), 1, tp, 1) for _, tp in CASES]
    results = {}
    for (key, tp), ctx in zip(CASES, create_contexts(layouts)):
        if ctx is not None:
            model = ParallelModel.from_seed(SPECS[key], "lm", ctx, seed=7, device=CPU_FP32)
            results[(key, tp)] = {"tp_rank": ctx.coord.tp_rank, **_run(model)}
    return results
