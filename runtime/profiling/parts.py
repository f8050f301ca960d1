"""What `plan profile` times: the runtime's own layers at one tensor-parallel shard shape.

One process emulates one tp rank: every parameter is allocated with the shape of tp rank 0's
shard (`planner.sharding.param_shards.shard_slice`: heads/tp, kv_heads/tp (at least one),
intermediate/tp, vocab/tp)
and the layers of `runtime.layers` run with a single-rank group, so the tp all-reduces are
no-ops (communication is priced separately, costmodel/comm.py). Values are random; only
shapes matter for time.

Each (part, op) at (batch, length) is a `Trial`: `prepare` (untimed) then `run` (timed).
- forward: the inference pass (no autograd); the lm head includes the vocab-parallel
  log-probs of the next tokens, as `runtime.inference` computes them.
- backward: a forward with autograd in `prepare`, the backward pass alone in `run`.
- prefill: forward over the prompt writing a KV cache; the lm head picks the next token.
- decode: one new token per sequence attending to a cache of `length` tokens.
- optimizer: one `runtime.optimizer.Adam` step over the part's shard (batch, length unused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from planner.domain.modelspec import ModelSpec
from planner.domain.placement import Placement
from planner.sharding.param_shards import (
    EMBEDDING,
    FINAL_NORM,
    LM_HEAD,
    VALUE_HEAD_BIAS,
    VALUE_HEAD_WEIGHT,
    ParamInfo,
    model_params,
    shard_slice,
)
from planner.sharding.rank_groups import Coordinate
from runtime.device import DeviceConfig
from runtime.layers import (
    AttentionInputs,
    LayerCache,
    decoder_block,
    rms_norm,
    rotary_cos_sin,
    vocab_parallel_embedding,
)
from runtime.model import attention_mask_4d
from runtime.optimizer import Adam, AdamConfig
from runtime.parallel_context import Group, ParallelContext
from runtime.params import INIT_STD
from runtime.vocab_parallel import choose_tokens, token_logprobs

SINGLE_RANK = Group(handle=None, ranks=(0,))
GRID_OPS = ("forward", "backward", "prefill", "decode")
# The value head never generates, so it has no prefill or decode entry.
PART_OPS = {
    "embedding": GRID_OPS + ("optimizer",),
    "block": GRID_OPS + ("optimizer",),
    "lm_head": GRID_OPS + ("optimizer",),
    "value_head": ("forward", "backward", "optimizer"),
}
BLOCK_LAYER = 0  # parameter names of block 0 stand for every block
BLOCK_PREFIX = f"model.layers.{BLOCK_LAYER}."


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Trial:
    """`run` is the timed work; `prepare` runs untimed before each `run`."""

    run: Callable[[], object]
    prepare: Callable[[], None] = _nothing


def single_rank_context() -> ParallelContext:
    """A one-process context whose groups all have one rank (no communication)."""
    layout = Placement(devices=(0,), dp=1, tp=1, pp=1)
    return ParallelContext(layout=layout, global_rank=0, coord=Coordinate(0, 0, 0),
                           tp_group=SINGLE_RANK, dp_group=SINGLE_RANK, pp_group=SINGLE_RANK)


class ShardBench:
    """Parameter shards of one block, the embedding and both heads of one tp rank."""

    def __init__(self, spec: ModelSpec, tp: int, device: DeviceConfig, seed: int = 0):
        self.spec, self.tp, self.device = spec, tp, device
        self.generator = torch.Generator(device=device.device).manual_seed(seed)
        lm = {p.name: p for p in model_params(spec, "lm", 1)}
        value = {p.name: p for p in model_params(spec, "value", 1)}
        # A tied lm head multiplies by the embedding matrix: same shape as an untied one.
        lm_head = lm.get(LM_HEAD, lm[EMBEDDING])
        self.parts = {
            "block": self._shards([p for n, p in lm.items() if n.startswith(BLOCK_PREFIX)]),
            "embedding": self._shards([lm[EMBEDDING]]),
            "lm_head": self._shards([lm[FINAL_NORM]]) | {LM_HEAD: self._shard(lm_head)},
            "value_head": self._shards([value[FINAL_NORM], value[VALUE_HEAD_WEIGHT],
                                        value[VALUE_HEAD_BIAS]]),
        }

    def _shard(self, param: ParamInfo) -> torch.Tensor:
        shape = tuple(b - a for a, b in shard_slice(self.spec, param, 0, self.tp))
        if param.name.endswith("norm.weight"):
            return torch.ones(shape, dtype=self.device.dtype, device=self.device.device)
        return self._randn(shape) * INIT_STD

    def _shards(self, params: list[ParamInfo]) -> dict[str, torch.Tensor]:
        return {p.name: self._shard(p) for p in params}

    def _randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=self.device.dtype,
                           device=self.device.device)

    def _ids(self, batch: int, length: int) -> torch.Tensor:
        # Ids over the whole vocabulary: on tp > 1 most fall outside this rank's rows, as on
        # a real tp rank.
        return torch.randint(0, self.spec.vocab_size, (batch, length), generator=self.generator,
                             device=self.device.device)

    def _full_sequence_inputs(self, batch: int, length: int, cached: bool = False
                              ) -> AttentionInputs:
        """Attention inputs of a whole-sequence pass: the causal path without a mask where
        the device runs cache-less passes right-aligned (DeviceConfig
        .right_aligned_attention: train and inference passes on CUDA, runtime/model.py),
        else, and for a prefill into a cache (`cached`), the boolean mask."""
        dev = self.device.device
        positions = torch.arange(length, device=dev).expand(batch, length)
        cos, sin = rotary_cos_sin(positions, self.spec.head_dim, self.spec.rope_theta,
                                  self.device.dtype, self.spec.rope_scaling)
        if self.device.right_aligned_attention and not cached:
            return AttentionInputs(cos=cos, sin=sin, mask=None, cache_start=0)
        valid = torch.ones(batch, length, dtype=torch.bool, device=dev)
        mask = attention_mask_4d(valid, torch.arange(length, device=dev))
        return AttentionInputs(cos=cos, sin=sin, mask=mask, cache_start=0)

    def _decode_inputs(self, batch: int, context: int) -> AttentionInputs:
        dev = self.device.device
        valid = torch.ones(batch, context + 1, dtype=torch.bool, device=dev)
        mask = attention_mask_4d(valid, torch.tensor([context], device=dev))
        positions = torch.full((batch, 1), context, device=dev)
        cos, sin = rotary_cos_sin(positions, self.spec.head_dim, self.spec.rope_theta,
                                  self.device.dtype, self.spec.rope_scaling)
        return AttentionInputs(cos=cos, sin=sin, mask=mask, cache_start=context)

    def _cache(self, batch: int, slots: int) -> LayerCache:
        kv_heads = max(self.spec.num_kv_heads // self.tp, 1)
        shape = (batch, kv_heads, slots, self.spec.head_dim)
        return LayerCache(self._randn(shape), self._randn(shape))

    # --- forward functions of each part (inputs -> output) ---------------------------------

    def _block(self, x, inputs, cache, params=None):
        p = params if params is not None else self.parts["block"]
        return decoder_block(x, p, BLOCK_LAYER, self.spec.head_dim, self.spec.norm_eps,
                             inputs, SINGLE_RANK, cache)

    def _lm_logits(self, x, params=None):
        p = params if params is not None else self.parts["lm_head"]
        return F.linear(rms_norm(x, p[FINAL_NORM], self.spec.norm_eps), p[LM_HEAD])

    def _lm_logprobs(self, x, ids, params=None):
        logits = self._lm_logits(x, params)
        return token_logprobs(logits[:, :-1], ids[:, 1:], 0, SINGLE_RANK)[0]

    def _values(self, x, params=None):
        p = params if params is not None else self.parts["value_head"]
        normed = rms_norm(x, p[FINAL_NORM], self.spec.norm_eps)
        return F.linear(normed, p[VALUE_HEAD_WEIGHT], p[VALUE_HEAD_BIAS]).squeeze(-1).float()

    def _next_tokens(self, logits):
        return choose_tokens(logits[:, -1], 0, SINGLE_RANK, None, 1.0)

    # --- trials -----------------------------------------------------------------------------

    def trial(self, part: str, op: str, batch: int, length: int) -> Trial:
        """The work of `op` on `part` for `batch` sequences of `length` tokens (module doc)."""
        if op == "optimizer":
            return self._optimizer_trial(part)
        if op == "backward":
            return self._backward_trial(part, batch, length)
        return getattr(self, f"_{part}_{op}")(batch, length)

    def _hidden(self, batch: int, length: int) -> torch.Tensor:
        return self._randn((batch, length, self.spec.hidden_size))

    def _no_grad(self, fn: Callable[[], object]) -> Trial:
        def run():
            with torch.no_grad():
                return fn()
        return Trial(run=run)

    def _block_forward(self, batch, length):
        x, inputs = self._hidden(batch, length), self._full_sequence_inputs(batch, length)
        return self._no_grad(lambda: self._block(x, inputs, None))

    def _block_prefill(self, batch, length):
        x = self._hidden(batch, length)
        inputs = self._full_sequence_inputs(batch, length, cached=True)
        cache = self._cache(batch, length)
        return self._no_grad(lambda: self._block(x, inputs, cache))

    def _block_decode(self, batch, context):
        x, inputs = self._hidden(batch, 1), self._decode_inputs(batch, context)
        cache = self._cache(batch, context + 1)
        return self._no_grad(lambda: self._block(x, inputs, cache))

    def _embedding_forward(self, batch, length):
        ids, weight = self._ids(batch, length), self.parts["embedding"][EMBEDDING]
        return self._no_grad(lambda: vocab_parallel_embedding(ids, weight, 0, SINGLE_RANK))

    _embedding_prefill = _embedding_forward

    def _embedding_decode(self, batch, context):
        return self._embedding_forward(batch, 1)

    def _lm_head_forward(self, batch, length):
        x, ids = self._hidden(batch, length), self._ids(batch, length)
        return self._no_grad(lambda: self._lm_logprobs(x, ids))

    def _lm_head_prefill(self, batch, length):
        x = self._hidden(batch, length)
        return self._no_grad(lambda: self._next_tokens(self._lm_logits(x)))

    def _lm_head_decode(self, batch, context):
        return self._lm_head_prefill(batch, 1)

    def _value_head_forward(self, batch, length):
        x = self._hidden(batch, length)
        return self._no_grad(lambda: self._values(x))

    def _backward_trial(self, part: str, batch: int, length: int) -> Trial:
        """Forward with autograd (untimed), then the backward pass (timed)."""
        params = {n: t.detach().clone().requires_grad_(True) for n, t in self.parts[part].items()}
        if part == "embedding":
            ids = self._ids(batch, length)
            forward = lambda: vocab_parallel_embedding(ids, params[EMBEDDING], 0, SINGLE_RANK)
        else:
            x = self._hidden(batch, length).requires_grad_(True)
            if part == "block":
                inputs = self._full_sequence_inputs(batch, length)
                forward = lambda: self._block(x, inputs, None, params)
            elif part == "lm_head":
                ids = self._ids(batch, length)
                forward = lambda: self._lm_logprobs(x, ids, params)
            else:
                forward = lambda: self._values(x, params)
        state: dict[str, torch.Tensor] = {}

        def prepare():
            for t in params.values():
                t.grad = None
            out = forward()
            state["out"], state["grad"] = out, torch.ones_like(out)

        def run():
            state.pop("out").backward(state.pop("grad"))
        return Trial(run=run, prepare=prepare)

    def _optimizer_trial(self, part: str) -> Trial:
        params = {n: t.detach().clone() for n, t in self.parts[part].items()}
        for t in params.values():
            t.grad = self._randn(t.shape) * INIT_STD
        adam = Adam(params, AdamConfig(lr=1e-5), single_rank_context())
        return Trial(run=adam.step)
