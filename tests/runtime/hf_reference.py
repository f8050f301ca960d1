"""transformers reference models for the tests: perturbed weights and greedy tokens."""

from __future__ import annotations

import torch


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Norm weights and biases away from their HF init (ones, zeros), so both are tested."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def hf_greedy(model, prompts: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy tokens by full recomputation (no cache, no stop tokens)."""
    ids = prompts
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompts.shape[1]:]


def saved_reference(model, directory, ids: torch.Tensor, prompt_len: int,
                    new_tokens: int) -> dict:
    """`model` saved to `directory` (save_pretrained), with its logits on `ids` and the
    greedy tokens of the first `prompt_len` columns: {"dir", "logits", "greedy"}."""
    model.save_pretrained(directory)
    with torch.no_grad():
        logits = model(ids).logits
    return {"dir": str(directory), "logits": logits,
            "greedy": hf_greedy(model, ids[:, :prompt_len], new_tokens)}
