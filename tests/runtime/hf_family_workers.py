"""Work run on every spawned rank by the model-family tests: load each transformers-saved
tiny checkpoint under its layouts, and return full logits, greedy tokens and (where asked)
the gradients of a replicated loss. No transformers import here: the ranks only need ours."""

from __future__ import annotations

import torch

from planner.domain.model_files import resolve_model
from planner.domain.placement import Placement
from runtime.batch import MicroBatch
from runtime.device import CPU_FP32
from runtime.generate import GenerationConfig, generate
from runtime.inference import full_logits, outputs_from_head
from runtime.model import ParallelModel
from runtime.parallel_context import create_contexts

WORLD_SIZE = 4
VOCAB = 256
NUM_SEQS, SEQ_LEN, PROMPT_LEN = 2, 16, 6
GREEDY = GenerationConfig(max_new_tokens=8, pad_token_id=0)
# (family, (dp, tp, pp)): the Qwen2 checkpoint ties its embeddings, which needs pp 1.
CASES = [(family, degrees) for family in ("llama31", "qwen3")
         for degrees in ((1, 2, 1), (1, 1, 2), (1, 2, 2))] + [("qwen2_tied", (1, 2, 1))]
GRADIENT_CASES = [("qwen3", (1, 2, 1))]
# Gradients compared with transformers': a replicated norm and a column-parallel weight.
GRADIENT_NAMES = ("model.layers.0.self_attn.q_norm.weight",
                  "model.layers.0.self_attn.k_norm.weight",
                  "model.layers.1.input_layernorm.weight",
                  "model.layers.0.self_attn.q_proj.weight")


def token_ids() -> torch.Tensor:
    """NUM_SEQS x SEQ_LEN token ids, unpadded; prompts are their first PROMPT_LEN tokens."""
    return torch.randint(1, VOCAB, (NUM_SEQS, SEQ_LEN), generator=torch.Generator().manual_seed(5))


def engine_outputs(model: ParallelModel) -> dict:
    """Full logits of the sequences and greedy tokens of the prompts."""
    ids = token_ids()
    logits = full_logits(model, [MicroBatch(ids, torch.ones_like(ids))])[0]
    prompts = ids[:, :PROMPT_LEN]
    greedy = generate(model, [MicroBatch(prompts, torch.ones_like(prompts))], GREEDY)[0]
    return {"logits": logits, "greedy": greedy.tokens}


def engine_gradients(model: ParallelModel) -> dict[str, torch.Tensor]:
    """This rank's gradients of the summed next-token logprobs (replicated over tp), pp 1."""
    assert model.ctx.pp == 1
    for p in model.params.values():
        p.requires_grad_(True)
    ids = token_ids()
    out = model.forward_sequences(ids, torch.ones_like(ids))
    outputs_from_head(model, out, ids, with_entropy=False).logprobs.sum().backward()
    return {name: model.params[name].grad.clone() for name in GRADIENT_NAMES}


def family_cases(rank: int, world_size: int, checkpoint_dirs: dict[str, str]) -> dict:
    """{(family, degrees): result} of the cases this rank belongs to."""
    layouts = [Placement(tuple(range(dp * tp * pp)), dp, tp, pp) for _, (dp, tp, pp) in CASES]
    results = {}
    for (family, degrees), ctx in zip(CASES, create_contexts(layouts)):
        if ctx is None:
            continue
        directory = checkpoint_dirs[family]
        model = ParallelModel.from_hf(directory, resolve_model(directory), "lm", ctx, CPU_FP32)
        result = {"coord": (ctx.coord.dp_rank, ctx.coord.tp_rank, ctx.coord.pp_rank),
                  **engine_outputs(model)}
        if (family, degrees) in GRADIENT_CASES:
            result["gradients"] = engine_gradients(model)
        results[(family, degrees)] = result
    return results
