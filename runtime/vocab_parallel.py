"""Log-softmax quantities and token choice over a vocabulary split across TP ranks.

Each rank holds logits for vocabulary ids [vocab_start, vocab_start + local_vocab). Nothing
gathers the full vocabulary: the max is all-reduced (MAX), and the sums (sum-exp, the target
logit, the expected logit for the entropy) are all-reduced (SUM) with `reduce_from_tp`, so
the backward pass is exact too. Computed in fp32.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from runtime.comm import all_reduce, reduce_from_tp
from runtime.parallel_context import Group


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, vocab_start: int, tp: Group,
                   with_entropy: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(targets) and optionally the entropy, for local logits [..., local_vocab]."""
    logits = logits.float()
    global_max = all_reduce(logits.detach().max(dim=-1).values, tp, dist.ReduceOp.MAX)
    shifted = logits - global_max[..., None]
    exp = shifted.exp()
    sum_exp = reduce_from_tp(exp.sum(dim=-1), tp)
    log_z = sum_exp.log()
    local_vocab = logits.shape[-1]
    local_target = targets - vocab_start
    inside = (local_target >= 0) & (local_target < local_vocab)
    picked = shifted.gather(-1, local_target.clamp(0, local_vocab - 1)[..., None]).squeeze(-1)
    target_logit = reduce_from_tp(picked * inside, tp)
    logprobs = target_logit - log_z
    if not with_entropy:
        return logprobs, None
    expected_logit = reduce_from_tp((exp * shifted).sum(dim=-1), tp) / sum_exp
    return logprobs, log_z - expected_logit


def choose_tokens(logits: torch.Tensor, vocab_start: int, tp: Group,
                  gumbel: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Argmax of logits (greedy) or of logits / temperature + Gumbel noise (a sample).

    logits: [batch, local_vocab]; gumbel: this rank's slice of noise drawn for the full
    vocabulary, or None for greedy. Ties go to the lowest token id, as torch.argmax does.
    """
    scores = logits.float()
    if gumbel is not None:
        scores = scores / temperature + gumbel
    local_best, local_index = scores.max(dim=-1)
    best = all_reduce(local_best.clone(), tp, dist.ReduceOp.MAX)
    no_candidate = torch.iinfo(torch.int64).max
    token = torch.where(local_best == best, local_index + vocab_start,
                        torch.full_like(local_index, no_candidate))
    return all_reduce(token, tp, dist.ReduceOp.MIN)


def gumbel_noise(generator: torch.Generator, batch: int, vocab_size: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [batch, vocab_size] from `generator` (CPU), for Gumbel-max sampling."""
    uniform = torch.rand(batch, vocab_size, generator=generator, dtype=torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    exponential = (-torch.log(uniform.clamp(min=tiny))).clamp(min=tiny)
    return -torch.log(exponential)
