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


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Chris Wellons' "lowbias32": xor-shift, multiply, xor-shift,
    multiply, xor-shift) on int32 tensors: products wrap modulo 2^32 and the masks make the
    shifts logical, as in unsigned arithmetic, so CPU and CUDA give the same bits. 11
    element-wise ops (costmodel/generate_cost.py prices them)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * (0x846CA68B - 2**32)          # the unsigned constant as an int32
    return x ^ ((x >> 16) & 0xFFFF)


def _low32(x: torch.Tensor) -> torch.Tensor:
    """The low 32 bits of int64 values, as int32 (two's complement)."""
    x = x & 0xFFFFFFFF
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def gumbel_noise(row_keys: torch.Tensor, step: int | torch.Tensor, vocab_start: int,
                 local_vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [batch, local_vocab] for Gumbel-max sampling, counter-based: the
    value for (row key, step, token id) is a hash of the three, computed on the keys' device
    for this rank's vocabulary slice only. So a token's noise does not depend on tp (which
    slice holds it), on dp or the micro-batch split (a row's key travels with it), and no
    noise crosses from the host. Per row the key and step are hashed once; per token id one
    hash and 24 of its bits as a uniform in (0, 1). row_keys: int64 [batch]; step: the
    row's decode step (1: the token sampled from the prefill), one int for every row or an
    int32 tensor [batch] of each row's own (continuous batching, runtime/generate.py: the
    slots of one forward hold rows at different steps)."""
    keys = row_keys.to(torch.int64)
    h = _hash32(_hash32(_low32(keys)) ^ _low32(keys >> 32))
    h = _hash32(h ^ step)[:, None]
    ids = torch.arange(vocab_start, vocab_start + local_vocab, device=keys.device,
                       dtype=torch.int32)
    bits = (_hash32(h ^ ids[None, :]) >> 8) & 0xFFFFFF
    uniform = (bits.to(torch.float32) + 0.5) / 2.0**24     # in (0, 1), never 0 or 1
    return -torch.log(-torch.log(uniform))
