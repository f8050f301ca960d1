"""The mixture-of-experts MLP of a block under tensor and expert parallelism.

Math (transformers 5.24 Qwen3MoeSparseMoeBlock, MixtralSparseMoeBlock, Qwen2MoeSparseMoeBlock,
the reference): router logits = x @ gate.T in the activation dtype; probabilities = softmax
in fp32; the top-k of them; renormalised to sum 1 when `normalize_top_k` (Mixtral always);
Qwen casts the k weights back to the activation dtype, Mixtral keeps them fp32 until the
weighted expert output is cast back. Output = sum over the k chosen experts of weight x
SwiGLU expert (down(silu(gate x) * up x)), plus, in Qwen2-MoE, sigmoid(x @ shared_gate.T) x
the shared SwiGLU expert.

Parallel arrangement (planner.sharding.param_shards; planner.sharding.rank_groups):
activations are replicated over tp; ep rank e holds the routed experts [e E/ep, (e+1)
E/ep), each split over tp like a dense MLP (gate/up column-parallel, down row-parallel). Each
rank routes its own tokens (the tp ranks of one dp rank route the same tokens alike), sorts
the (token, chosen expert) copies by expert and sends each to the ep rank holding its expert
(counts exchanged first, then one all-to-all over the ep group); the receiver runs its local
experts on its tp shard, giving partial sums, and sends the rows back by the reverse
all-to-all; the sender weights them and sums them per token (in ascending expert order, as
transformers' loop over experts adds them). The shared expert's partial sum is added, and
one tp all-reduce (reduce_from_tp) completes both, with copy_to_tp in front as the dense MLP
has. The router and shared-expert gate are replicated over tp but their outputs multiply
tp-partial values, so each tp rank's gradient of them is partial: copy_to_tp on the weights
sums it over tp in backward (as the q/k norm weights do in runtime/layers.attention).

Every local expert runs, also on zero rows, so that every rank builds the same graph and
backward reaches the collectives in the same order everywhere. Decode steps (one token per
row) go the same way. All-to-all traffic is recorded in the model's AllToAllLedger
(runtime/comm.py states what is counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from planner.domain.modelspec import MoeSpec
from runtime.comm import (
    AllToAllLedger,
    all_to_all_rows,
    copy_to_tp,
    exchange_counts,
    reduce_from_tp,
)
from runtime.parallel_context import Group


@dataclass(frozen=True)
class ExpertParallel:
    """What a MoE block needs besides its parameters: the routing rule, the tp and ep groups
    and the ledger its all-to-alls write to. Member i of the ep group holds expert slice i
    (rank_groups: an ep group is ep consecutive dp ranks, starting at a multiple of ep)."""

    moe: MoeSpec
    tp: Group
    ep: Group
    ledger: AllToAllLedger

    @property
    def local_experts(self) -> int:
        return self.moe.num_experts // self.ep.size


def route(tokens: torch.Tensor, router_weight: torch.Tensor, moe: MoeSpec
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k], expert ids int64 [T, k]) of tokens [T, h] (module docstring)."""
    logits = F.linear(tokens, router_weight)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, experts = torch.topk(probs, moe.experts_per_token, dim=-1)
    if moe.normalize_top_k:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if moe.family != "mixtral":
        weights = weights.to(logits.dtype)
    return weights, experts


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor
           ) -> torch.Tensor:
    """down(silu(x @ gate.T) * (x @ up.T)): a tp-partial sum when the weights are shards."""
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def routed_experts(tokens: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor,
                   p: dict[str, torch.Tensor], prefix: str, par: ExpertParallel
                   ) -> torch.Tensor:
    """Sum over each token's chosen experts of weight x expert output, this tp rank's
    partial sum, [T, h] (module docstring: dispatch, local experts, combine)."""
    num_tokens, k = experts.shape
    ep, local = par.ep.size, par.local_experts
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)                  # copies sorted by expert
    token_of = order // k
    per_expert = torch.bincount(flat, minlength=par.moe.num_experts)
    # received counts [source ep rank, local expert]: rows arrive source-major, then by expert
    received = exchange_counts(per_expert.view(ep, local), par.ep)
    send_rows = per_expert.view(ep, local).sum(1).tolist()
    recv_rows = received.sum(1).tolist()
    rows = all_to_all_rows(tokens[token_of], send_rows, recv_rows, par.ep, par.ledger)
    expert_of_row = torch.arange(local, device=rows.device).repeat(ep).repeat_interleave(
        received.flatten().to(rows.device))
    by_expert = torch.argsort(expert_of_row, stable=True)
    grouped = rows[by_expert].split(received.sum(0).tolist())
    outputs = torch.cat([
        swiglu(chunk, p[f"{prefix}experts.gate_proj"][j], p[f"{prefix}experts.up_proj"][j],
               p[f"{prefix}experts.down_proj"][j])
        for j, chunk in enumerate(grouped)])
    back = all_to_all_rows(outputs[torch.argsort(by_expert)], recv_rows, send_rows, par.ep,
                           par.ledger)
    weighted = (back * weights.reshape(-1)[order, None]).to(tokens.dtype)
    return tokens.new_zeros(num_tokens, tokens.shape[-1]).index_add(0, token_of, weighted)


def moe_mlp(x: torch.Tensor, p: dict[str, torch.Tensor], prefix: str, par: ExpertParallel
            ) -> torch.Tensor:
    """The MoE MLP of x [batch, seq, h] (replicated over tp), replicated output."""
    batch, seq, hidden = x.shape
    x = copy_to_tp(x, par.tp)
    tokens = x.reshape(-1, hidden)
    weights, experts = route(tokens, copy_to_tp(p[f"{prefix}gate.weight"], par.tp), par.moe)
    out = routed_experts(tokens, weights, experts, p, prefix, par)
    if par.moe.shared_expert_intermediate_size:
        shared = swiglu(tokens, p[f"{prefix}shared_expert.gate_proj.weight"],
                        p[f"{prefix}shared_expert.up_proj.weight"],
                        p[f"{prefix}shared_expert.down_proj.weight"])
        gate = F.linear(tokens, copy_to_tp(p[f"{prefix}shared_expert_gate.weight"], par.tp))
        out = out + torch.sigmoid(gate) * shared
    return reduce_from_tp(out.view(batch, seq, hidden), par.tp)
