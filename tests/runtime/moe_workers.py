"""Work run on every spawned rank by the MoE runtime tests (test_runtime_moe.py): tiny
Qwen3-MoE, Mixtral and Qwen2-MoE checkpoints saved by transformers, loaded under their
layouts; each rank returns the logits and greedy tokens of its data-parallel rows, and where
asked the gradients of its rows' loss, its all-to-all ledger, or its seeded-init shards. No
transformers import here: the ranks only need ours (the test builds the checkpoints from
HF_CONFIGS)."""

from __future__ import annotations

import torch

from planner.domain.layout import RecomputeMode
from planner.domain.modelspec import ModelSpec, MoeSpec
from planner.domain.placement import Placement
from runtime.batch import MicroBatch
from runtime.device import CPU_FP32
from runtime.generate import GenerationConfig, generate
from runtime.inference import full_logits, outputs_from_head
from runtime.model import ParallelModel
from runtime.parallel_context import create_contexts

WORLD_SIZE = 4
VOCAB = 256
HIDDEN = 64
NUM_SEQS, SEQ_LEN, PROMPT_LEN = 4, 12, 5
GREEDY = GenerationConfig(max_new_tokens=6, pad_token_id=0)
SEED = 7
_COMMON = {"hidden_size": HIDDEN, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_hidden_layers": 2, "vocab_size": VOCAB, "max_position_embeddings": 128,
           "initializer_range": 0.1}
# transformers config class name and keyword arguments of each tiny checkpoint; spec_of
# states the same model as our ModelSpec
HF_CONFIGS = {
    "qwen3_moe": ("Qwen3MoeConfig", {**_COMMON, "head_dim": 16, "intermediate_size": 96,
                                     "num_experts": 4, "num_experts_per_tok": 2,
                                     "moe_intermediate_size": 32, "norm_topk_prob": True,
                                     "rms_norm_eps": 1e-6}),
    "mixtral": ("MixtralConfig", {**_COMMON, "intermediate_size": 32, "num_local_experts": 4,
                                  "num_experts_per_tok": 2, "rms_norm_eps": 1e-5}),
    "qwen2_moe": ("Qwen2MoeConfig", {**_COMMON, "intermediate_size": 96, "num_experts": 4,
                                     "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                     "shared_expert_intermediate_size": 48,
                                     "norm_topk_prob": False, "rms_norm_eps": 1e-6}),
}
FAMILIES = tuple(HF_CONFIGS)
# (family, (dp, tp, pp, ep)), all on ranks 0 .. dp tp pp - 1: ep 2 (uneven rows per dp
# rank), ep 2 x tp 2, pp 2, ep 2 x pp 2, and ep 2 of dp 4 (ep groups unlike the dp group)
CASES = ([(f, (2, 1, 1, 2)) for f in FAMILIES] + [(f, (2, 2, 1, 2)) for f in FAMILIES]
         + [(f, (1, 1, 2, 1)) for f in FAMILIES]
         + [("qwen2_moe", (2, 1, 2, 2)), ("qwen3_moe", (4, 1, 1, 2))])
GRADIENT_CASE = ("qwen2_moe", (2, 2, 1, 2))
RECOMPUTE_MODES: tuple[RecomputeMode, ...] = ("none", "full")
INIT_DEGREES = (2, 2, 1, 2)
INIT_FAMILY = "qwen2_moe"
LAYER0 = "model.layers.0."
GRADIENT_NAMES = (f"{LAYER0}mlp.gate.weight", f"{LAYER0}mlp.experts.gate_proj",
                  f"{LAYER0}mlp.experts.up_proj", f"{LAYER0}mlp.experts.down_proj",
                  f"{LAYER0}mlp.shared_expert.down_proj.weight",
                  f"{LAYER0}mlp.shared_expert_gate.weight", f"{LAYER0}self_attn.q_proj.weight")


def spec_of(family: str) -> ModelSpec:
    """Our spec of the checkpoint HF_CONFIGS[family] describes."""
    _, c = HF_CONFIGS[family]
    experts = c.get("num_experts", c.get("num_local_experts"))
    moe = MoeSpec(family=family, num_experts=experts,
                  experts_per_token=c["num_experts_per_tok"],
                  expert_intermediate_size=c.get("moe_intermediate_size",
                                                 c["intermediate_size"]),
                  shared_expert_intermediate_size=c.get("shared_expert_intermediate_size", 0),
                  normalize_top_k=c.get("norm_topk_prob", True))
    return ModelSpec(name=f"tiny-{family}", num_layers=c["num_hidden_layers"],
                     hidden_size=c["hidden_size"], num_heads=c["num_attention_heads"],
                     num_kv_heads=c["num_key_value_heads"],
                     intermediate_size=c["intermediate_size"], vocab_size=c["vocab_size"],
                     max_positions=c["max_position_embeddings"], head_dim=c.get("head_dim"),
                     rope_theta=1e6 if family == "mixtral" else 1e4,
                     norm_eps=c["rms_norm_eps"], attention_bias=family == "qwen2_moe",
                     qk_norm=family == "qwen3_moe", moe=moe)


def token_ids() -> torch.Tensor:
    """NUM_SEQS x SEQ_LEN token ids, unpadded; prompts are their first PROMPT_LEN tokens."""
    return torch.randint(1, VOCAB, (NUM_SEQS, SEQ_LEN),
                         generator=torch.Generator().manual_seed(5))


def row_range(dp_rank: int, dp: int) -> tuple[int, int]:
    """The rows of data-parallel rank `dp_rank`: uneven at dp 2 (3 and 1 rows), so the
    ranks of an ep group route different token counts; equal otherwise."""
    if dp == 2:
        return ((0, 3), (3, NUM_SEQS))[dp_rank]
    per = NUM_SEQS // dp
    return dp_rank * per, (dp_rank + 1) * per


def _layouts(cases) -> list[Placement]:
    return [Placement(tuple(range(dp * tp * pp)), dp, tp, pp, ep)
            for _, (dp, tp, pp, ep) in cases]


def engine_outputs(model: ParallelModel, rows: tuple[int, int]) -> dict:
    """Full logits of the rows' sequences, the ledger bytes of that forward alone, and greedy
    tokens of the rows' prompts."""
    ids = token_ids()[rows[0]:rows[1]]
    before = model.moe_traffic.bytes, model.moe_traffic.calls
    logits = full_logits(model, [MicroBatch(ids, torch.ones_like(ids))])[0]
    traffic = (model.moe_traffic.bytes - before[0], model.moe_traffic.calls - before[1])
    prompts = ids[:, :PROMPT_LEN]
    greedy = generate(model, [MicroBatch(prompts, torch.ones_like(prompts))], GREEDY)[0]
    return {"logits": logits, "greedy": greedy.tokens, "forward_traffic": traffic}


def engine_gradients(model: ParallelModel, rows: tuple[int, int],
                     recompute: RecomputeMode = "none") -> dict:
    """This rank's gradients of its rows' summed next-token logprobs (pp 1) and the ledger
    bytes of that forward and backward (the rerun of `recompute` included)."""
    for p in model.params.values():
        p.requires_grad_(True)
        p.grad = None
    ids = token_ids()[rows[0]:rows[1]]
    before = model.moe_traffic.bytes
    out = model.forward_sequences(ids, torch.ones_like(ids), recompute=recompute)
    outputs_from_head(model, out, ids, with_entropy=False).logprobs.sum().backward()
    return {"gradients": {n: model.params[n].grad.clone() for n in GRADIENT_NAMES},
            "train_traffic_bytes": model.moe_traffic.bytes - before}


def moe_cases(rank: int, world_size: int, checkpoint_dirs: dict[str, str]) -> dict:
    """{(family, degrees): result} of the cases this rank belongs to, and ("init", degrees):
    this rank's seeded-init shards."""
    cases = CASES + [(GRADIENT_CASE[0], GRADIENT_CASE[1]), (INIT_FAMILY, INIT_DEGREES)]
    contexts = create_contexts(_layouts(cases))
    results = {}
    for index, ((family, degrees), ctx) in enumerate(zip(cases, contexts)):
        if ctx is None:
            continue
        coord = {"coord": (ctx.coord.dp_rank, ctx.coord.tp_rank, ctx.coord.pp_rank),
                 "ep_rank": ctx.ep_rank, "ep_group": ctx.ep_group.ranks,
                 "expert_dp_group": ctx.expert_dp_group.ranks}
        rows = row_range(ctx.coord.dp_rank, ctx.dp)
        spec = spec_of(family)
        if index == len(cases) - 1:
            model = ParallelModel.from_seed(spec, "lm", ctx, SEED, CPU_FP32)
            results[("init", degrees)] = {**coord, "params": model.params}
            continue
        model = ParallelModel.from_hf(checkpoint_dirs[family], spec, "lm", ctx, CPU_FP32)
        if index == len(cases) - 2:
            for recompute in RECOMPUTE_MODES:
                results[("gradients", degrees, recompute)] = {
                    **coord, "rows": rows, **engine_gradients(model, rows, recompute)}
        else:
            results[(family, degrees)] = {**coord, "rows": rows,
                                          **engine_outputs(model, rows)}
    return results
