"""Memory per device: static model state and the working set of one call.

Arrays are per mesh position (the execution's device order); position p sits on pipeline
stage p // (dp * tp) and tp rank p % tp (planner.sharding.rank_groups).

- Weights: the exact tp/pp shard sizes of planner.sharding.param_shards x the compute dtype.
- Train state: weights + gradients (compute dtype each) + optimizer states (fp32 master and
  two moments, 12 bytes per parameter in bf16, 8 in fp32), the optimizer states sharded over
  DP (ZeRO-1, efficiency.SHARD_OPTIMIZER_OVER_DP). With dp = 1 and bf16: 16 bytes/param.
- Activations of train calls (1F1B keeps min(m, pp - stage) micro-batches in flight on a
  stage): with recomputation each block keeps its input (b s h) plus one block's full
  working set; without, every block keeps h (10 + 24/t) bytes per token (16-bit).
- KV cache during generation: the min(m, pp) micro-batches of one decoding wave
  (call_cost.py), at their full context prompt + gen, 2 (K and V) x layers of the stage x
  kv width per tp rank.
- Logits in fp32 on the last stage (twice: values and the log-softmax / its gradient).
- A fixed workspace per call (efficiency.WORKSPACE_BYTES).
"""

from __future__ import annotations

import math

import numpy as np

from costmodel import efficiency as eff
from costmodel.roofline import kv_heads_per_rank
from planner.domain.layout import Execution
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.sharding.param_shards import shard_elements
from planner.sharding.pipeline_partition import stage_layer_counts
from planner.domain.workflow import BatchSpec, ModelFunctionCall


def per_position(stage_tp_values: np.ndarray, execution: Execution) -> np.ndarray:
    """Expand a [pp, tp] (or [pp, 1]) array to one value per mesh position."""
    ex = execution
    values = np.broadcast_to(stage_tp_values, (ex.pp, ex.tp))
    return np.repeat(values[:, None, :], ex.dp, axis=1).reshape(-1).astype(float)


def weight_bytes_per_device(spec: ModelSpec, head: HeadKind, tp: int, pp: int,
                            dtype_bytes: int) -> np.ndarray:
    """Weights of each (stage, tp rank) in the compute dtype: array [pp, tp]."""
    return shard_elements(spec, head, tp, pp) * float(dtype_bytes)


def train_state_bytes_per_device(spec: ModelSpec, head: HeadKind, tp: int, pp: int, dp: int,
                                 dtype_bytes: int) -> np.ndarray:
    """Weights + gradients + optimizer states of each (stage, tp rank): array [pp, tp].

    Mixed-precision Adam (ZeRO paper, Rajbhandari et al. 2020): 2 + 2 + 12 bytes per
    parameter for bf16; the 12 bytes of optimizer state divided over dp under ZeRO-1.
    """
    elements = shard_elements(spec, head, tp, pp).astype(float)
    shards = dp if eff.SHARD_OPTIMIZER_OVER_DP else 1
    optimizer = eff.OPTIMIZER_STATE_BYTES_PER_PARAM[dtype_bytes] / shards
    return elements * (2 * dtype_bytes + optimizer)


def block_working_bytes(spec: ModelSpec, tp: int, tokens: float, dtype_bytes: int) -> float:
    """All activations of one block for `tokens` tokens (Korthikanti et al. 2022, eq. 2,
    flash attention: no s^2 term), scaled from 16-bit to the compute dtype."""
    per_token = spec.hidden_size * (eff.ACTIVATION_BYTES_PER_TOKEN_H_REPLICATED
                                    + eff.ACTIVATION_BYTES_PER_TOKEN_H_SHARDED / tp)
    return tokens * per_token * dtype_bytes / 2.0


def logits_bytes(spec: ModelSpec, head: HeadKind, tp: int, tokens: float) -> float:
    """fp32 logits of the last stage, twice (values and log-softmax or its gradient)."""
    width = spec.vocab_size / tp if head == "lm" else 1
    return 2.0 * tokens * width * eff.LOGITS_BYTES_PER_ELEMENT


def kv_cache_bytes(spec: ModelSpec, tp: int, num_layers: int, num_seqs: float,
                   context_len: float, dtype_bytes: int) -> float:
    """KV cache of one device: seqs x context x 2 (K, V) x layers x kv width per tp rank."""
    kv_width = kv_heads_per_rank(spec, tp) * spec.head_dim
    return num_seqs * context_len * 2.0 * num_layers * kv_width * dtype_bytes


def activation_bytes_train_stage(spec: ModelSpec, head: HeadKind, execution: Execution,
                                 stage: int, micro_seqs: int, seq_len: int, dtype_bytes: int,
                                 recompute: bool = eff.RECOMPUTE_ACTIVATIONS) -> float:
    """Activations one device of `stage` holds at the peak of a 1F1B train step."""
    ex = execution
    layers = stage_layer_counts(spec.num_layers, ex.pp)[stage]
    tokens = micro_seqs * seq_len
    in_flight = min(ex.micro_batches, ex.pp - stage)
    one_block = block_working_bytes(spec, ex.tp, tokens, dtype_bytes)
    if recompute:
        kept = in_flight * layers * tokens * spec.hidden_size * dtype_bytes
        stored = kept + 2.0 * one_block  # recomputed block and its gradients
    else:
        stored = in_flight * layers * one_block
    if stage == ex.pp - 1:
        stored += logits_bytes(spec, head, ex.tp, tokens)
    return stored


def micro_batch_seqs(call: ModelFunctionCall, batch: BatchSpec, execution: Execution) -> int:
    """Sequences in one micro-batch of one replica (the largest, when they do not divide)."""
    seqs = batch.n_seqs // batch.ppo_minibatches if call.kind == "train" else batch.n_seqs
    return math.ceil(seqs / (execution.dp * execution.micro_batches))


def call_working_bytes_per_stage(call: ModelFunctionCall, spec: ModelSpec, head: HeadKind,
                                 execution: Execution, batch: BatchSpec, dtype_bytes: int,
                                 device_kind: str) -> np.ndarray:
    """Working set of a call on one device of each stage (array [pp]), workspace included."""
    ex = execution
    b = micro_batch_seqs(call, batch, ex)
    layers = stage_layer_counts(spec.num_layers, ex.pp)
    out = np.zeros(ex.pp)
    for stage in range(ex.pp):
        last = stage == ex.pp - 1
        if call.kind == "train":
            work = activation_bytes_train_stage(spec, head, ex, stage, b, batch.seq_len,
                                                dtype_bytes)
        elif call.kind == "inference":
            tokens = b * batch.seq_len
            work = block_working_bytes(spec, ex.tp, tokens, dtype_bytes) + \
                (logits_bytes(spec, head, ex.tp, tokens) if last else 0.0)
        else:
            wave_seqs = b * min(ex.micro_batches, ex.pp)
            work = kv_cache_bytes(spec, ex.tp, layers[stage], wave_seqs, batch.seq_len,
                                  dtype_bytes)
            work += block_working_bytes(spec, ex.tp, b * batch.prompt_len, dtype_bytes)
            work += logits_bytes(spec, head, ex.tp, b) if last else 0.0
        out[stage] = work + eff.WORKSPACE_BYTES[device_kind]
    return out
