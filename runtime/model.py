"""One rank's part of a LLaMA-family model: its parameter shards and its pipeline stage's forward.

`params` maps HF parameter names to plain tensors in the shard format of
`planner.sharding.param_shards` (the executor may replace them, e.g. after reallocation, as long as the
shapes match). A stage's forward takes token ids (first stage) or the previous stage's hidden
states and returns hidden states, or on the last stage this rank's vocabulary slice of the
logits ("lm" head) or scalar values [batch, seq] ("value" head).

Train calls recompute activations as their execution says (`recompute`, the call's
`Execution.recompute`, which the cost model prices too, costmodel/recompute.py): "full" keeps
only each decoder block's input and runs the block again in backward (torch.utils.checkpoint,
non-reentrant); "selective" does so for the block's attention sub-layer only
(runtime/layers.decoder_block says what it reruns); "none" keeps everything. The rerun TP
all-reduces run in the same order on every TP rank, since all run the same graph.

Cache-less passes (`forward_sequences`: train and inference) run right-aligned where the
device says so (DeviceConfig.right_aligned_attention, on cuda): rows arrive padded anywhere
(prompts left-padded, responses, right pads), and each row's real tokens are moved, in order,
to its first slots (`real_tokens_first`), the pads after them. Attention is then causal by
slot (SDPA is_causal, no mask tensor, flash-eligible on CUDA): a real token at slot j attends
to slots 0..j, which are exactly the real tokens before it, as the mask of the unshifted
layout says, and its rotary position is j, as positions_from_mask gives it. The pads, now
after every real token, attend only to real tokens and to pads; no real token attends to
them, and their outputs are never used (losses and callers read real positions only). The
first pipeline stage shifts the token ids, every stage runs its blocks on the shifted layout
(activations and their gradients cross stages shifted), and the last stage shifts its
blocks' output back before the head (cheaper than shifting the logits), so callers see
today's positions. Every other op of a block is per token (norms, projections, MLP; the MoE
block routes each token by itself), so only attention sees the shift. Generation keeps its
masks (runtime/generate.py: caches, prompts of different lengths).

Mixture-of-experts models (spec.moe) run every block's MLP as runtime/moe.py's block: this
rank holds the routed experts of its expert rank (ctx.ep_rank) and exchanges tokens with its
ep group by all-to-all, whose bytes `moe_traffic` (runtime.comm.AllToAllLedger) counts.
Every rank of an ep group must then run the same sequence of stage forwards (and backwards),
with any number of rows each, since each MoE block is a collective over the group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from planner.domain.layout import RecomputeMode
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.sharding.param_shards import (
    EMBEDDING,
    FINAL_NORM,
    LM_HEAD,
    VALUE_HEAD_BIAS,
    VALUE_HEAD_WEIGHT,
)
from planner.sharding.pipeline_partition import layer_ranges
from runtime.comm import AllToAllLedger, copy_to_tp
from runtime.device import DeviceConfig
from runtime.layers import (
    AttentionInputs,
    LayerCache,
    decoder_block,
    rms_norm,
    rotary_cos_sin,
    vocab_parallel_embedding,
)
from runtime.moe import ExpertParallel
from runtime.parallel_context import ParallelContext
from runtime.params import check_layout_supported, init_params, load_hf_params


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rotary positions 0, 1, ... of the real tokens (left or right padding); pads get junk."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def attention_mask_4d(key_valid: torch.Tensor, query_slots: torch.Tensor) -> torch.Tensor:
    """bool [batch, 1, queries, keys]: causal, valid keys only, and always the query's own slot.

    The own slot keeps padded query rows finite (their outputs are never used).
    """
    keys = torch.arange(key_valid.shape[1], device=key_valid.device)
    causal = keys[None, :] <= query_slots[:, None]
    own = keys[None, :] == query_slots[:, None]
    return ((causal[None] & key_valid[:, None, :]) | own[None])[:, None]


def real_tokens_first(attention_mask: torch.Tensor) -> torch.Tensor:
    """int64 [batch, seq]: for each slot of the right-aligned layout, the slot of the given
    layout it takes its token from: the real tokens of the row in their order, then the pads
    (a stable partition, so padding on the left, the right or both is handled alike)."""
    pads = (attention_mask == 0).to(torch.uint8)
    return torch.argsort(pads, dim=1, stable=True)


def gather_slots(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """x [batch, seq, ...] with row b's slot i taken from its slot slots[b, i]."""
    index = slots.reshape(slots.shape + (1,) * (x.dim() - 2)).expand(slots.shape + x.shape[2:])
    return x.gather(1, index)


def inverse_slots(slots: torch.Tensor) -> torch.Tensor:
    """The permutation per row that undoes `slots` (gather_slots with it restores x)."""
    inverse = torch.empty_like(slots)
    order = torch.arange(slots.shape[1], device=slots.device).expand_as(slots)
    return inverse.scatter_(1, slots, order)


@dataclass
class ParallelModel:
    """Parameter shards and stage forward of one rank under one layout."""

    spec: ModelSpec
    head: HeadKind
    ctx: ParallelContext
    device: DeviceConfig
    params: dict[str, torch.Tensor]
    moe_traffic: AllToAllLedger = field(default_factory=AllToAllLedger)

    @classmethod
    def from_seed(cls, spec: ModelSpec, head: HeadKind, ctx: ParallelContext, seed: int,
                  device: DeviceConfig) -> "ParallelModel":
        """Seeded random init, identical whatever the layout."""
        check_layout_supported(spec, ctx.tp, ctx.pp, ctx.dp, ctx.ep)
        params = init_params(spec, head, ctx.coord.tp_rank, ctx.tp, ctx.coord.pp_rank, ctx.pp,
                             seed, device, ctx.ep_rank, ctx.ep)
        return cls(spec, head, ctx, device, params)

    @classmethod
    def from_hf(cls, directory: Path, spec: ModelSpec, head: HeadKind, ctx: ParallelContext,
                device: DeviceConfig, seed: int = 0) -> "ParallelModel":
        """This rank's shards of a local HF checkpoint (`seed` inits a missing value head)."""
        check_layout_supported(spec, ctx.tp, ctx.pp, ctx.dp, ctx.ep)
        params = load_hf_params(directory, spec, head, ctx.coord.tp_rank, ctx.tp,
                                ctx.coord.pp_rank, ctx.pp, seed, device, ctx.ep_rank, ctx.ep)
        return cls(spec, head, ctx, device, params)

    @property
    def layers(self) -> range:
        return range(*layer_ranges(self.spec.num_layers, self.ctx.pp)[self.ctx.coord.pp_rank])

    @property
    def expert_parallel(self) -> ExpertParallel | None:
        """What the MoE blocks need (runtime/moe.py); None for a dense model."""
        if self.spec.moe is None:
            return None
        return ExpertParallel(moe=self.spec.moe, tp=self.ctx.tp_group, ep=self.ctx.ep_group,
                              ledger=self.moe_traffic)

    @property
    def vocab_start(self) -> int:
        return self.ctx.coord.tp_rank * (self.spec.vocab_size // self.ctx.tp)

    def new_caches(self, batch: int, slots: int) -> list[LayerCache]:
        """Empty KV caches for this stage's layers."""
        kv_heads = max(1, self.spec.num_kv_heads // self.ctx.tp)   # one when replicated
        shape = (batch, kv_heads, slots, self.spec.head_dim)
        return [LayerCache(torch.zeros(shape, dtype=self.device.dtype, device=self.device.device),
                           torch.zeros(shape, dtype=self.device.dtype, device=self.device.device))
                for _ in self.layers]

    def attention_inputs(self, positions: torch.Tensor, mask: torch.Tensor | None,
                         cache_start: int = 0) -> AttentionInputs:
        cos, sin = rotary_cos_sin(positions, self.spec.head_dim, self.spec.rope_theta,
                                  self.device.dtype, self.spec.rope_scaling)
        return AttentionInputs(cos=cos, sin=sin, mask=mask, cache_start=cache_start)

    def stage_forward(self, stage_input: torch.Tensor, inputs: AttentionInputs,
                      caches: list[LayerCache] | None = None, recompute: RecomputeMode = "none",
                      head_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Embedding (first stage), this stage's blocks, and the head (last stage).

        recompute: what the blocks rerun in backward instead of keeping (module docstring);
        "none" with caches. head_positions (int64 [batch]): run the head on
        that one position of each row only, giving [batch, 1, ...] (a prefill needs the
        logits of each prompt's last token, not of every prompt position).
        """
        x = self._stage_blocks(stage_input, inputs, caches, recompute)
        if self.ctx.is_last_stage:
            if head_positions is not None:
                rows = torch.arange(x.shape[0], device=x.device)
                x = x[rows, head_positions][:, None]
            x = self._head(x)
        return x

    def forward_sequences(self, stage_input: torch.Tensor, attention_mask: torch.Tensor,
                          recompute: RecomputeMode = "none") -> torch.Tensor:
        """`stage_forward` over whole (padded) sequences without a cache; right-aligned
        with causal attention where the device says so (module docstring), with a mask
        otherwise. stage_input and the result are in the given layout either way, except
        between stages of a right-aligned pass, which exchange the shifted layout."""
        if not self.device.right_aligned_attention:
            positions = positions_from_mask(attention_mask)
            slots = torch.arange(attention_mask.shape[1], device=attention_mask.device)
            mask = attention_mask_4d(attention_mask.bool(), slots)
            return self.stage_forward(stage_input, self.attention_inputs(positions, mask),
                                      recompute=recompute)
        order = real_tokens_first(attention_mask)
        x = gather_slots(stage_input, order) if self.ctx.is_first_stage else stage_input
        # slot j holds the row's real token j: rotary position j for every row
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None]
        x = self._stage_blocks(x, self.attention_inputs(positions, None), None, recompute)
        if self.ctx.is_last_stage:
            x = self._head(gather_slots(x, inverse_slots(order)))
        return x

    def _stage_blocks(self, stage_input: torch.Tensor, inputs: AttentionInputs,
                      caches: list[LayerCache] | None, recompute: RecomputeMode
                      ) -> torch.Tensor:
        """Embedding (first stage) and this stage's blocks (stage_forward)."""
        assert recompute == "none" or caches is None, "recompute is for cache-less passes"
        x = stage_input
        if self.ctx.is_first_stage:
            x = vocab_parallel_embedding(x, self.params[EMBEDDING], self.vocab_start,
                                         self.ctx.tp_group)
        moe = self.expert_parallel
        for i, layer in enumerate(self.layers):
            block_args = (self.params, layer, self.spec.head_dim, self.spec.norm_eps, inputs,
                          self.ctx.tp_group, None if caches is None else caches[i])
            if recompute == "full":
                x = checkpoint(decoder_block, x, *block_args, moe=moe, use_reentrant=False)
            else:
                x = decoder_block(x, *block_args, recompute_attention=recompute == "selective",
                                  moe=moe)
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = rms_norm(x, self.params[FINAL_NORM], self.spec.norm_eps)
        if self.head == "value":
            return F.linear(x, self.params[VALUE_HEAD_WEIGHT],
                            self.params[VALUE_HEAD_BIAS]).squeeze(-1)
        weight = self.params[EMBEDDING if self.spec.tie_embeddings else LM_HEAD]
        return F.linear(copy_to_tp(x, self.ctx.tp_group), weight)
