"""Memory per device of one call, by part: the model state it keeps and its working set.

Arrays are per mesh position (the execution's device order); position p sits on pipeline
stage p // (dp * tp) and tp rank p % tp (planner.sharding.rank_groups).

The parts (PART_KINDS) and their formulas:
- weights: the exact tp/pp shard sizes of planner.sharding.param_shards x the compute dtype.
- gradients (train calls): one per weight, in the compute dtype.
- optimizer (train calls): mixed-precision Adam's fp32 master and two moments, 12 bytes per
  parameter in bf16, 8 in fp32 (efficiency.OPTIMIZER_STATE_BYTES_PER_PARAM), divided over
  dp when the execution shards them (ZeRO-1, Execution.shard_optimizer_over_dp). With
  dp = 1 and bf16, weights + gradients + optimizer = 16 bytes/param.
- mixture-of-experts models (costmodel/moe_cost.py): weights and gradients hold the rank's
  ep shard of the routed experts (param_shards.shard_elements with ep); their Adam states
  are divided over the expert-dp group (dp / ep ranks) under ZeRO-1; the blocks'
  activations are the MoE block's (router outputs, routed rows, all-to-all buffers).
- activations: train calls keep min(m, pp - stage) micro-batches in flight on a stage (1F1B),
  each block keeping what its recomputation mode (Execution.recompute) keeps, per token:
  both sub-layers with "none", its input and the MLP sub-layer with "selective", its input
  with "full" (costmodel/recompute.py, derived from what autograd saves in
  runtime/layers.py); the last stage also the final norm and head input; plus, once, the
  part one block reruns in backward, by what it exceeds the logits' backward. Inference holds one block's working set without autograd (block_working_bytes);
  generation that of the prompt (prefill).
- kv_cache (generate calls): the min(m, pp) micro-batches of one decoding wave
  (call_cost.py), at their full context prompt + gen, 2 (K and V) x layers of the stage x
  kv width per tp rank.
- logits (last stage): a train call's kept for the log-softmax's backward and its gradients
  there (efficiency.TRAIN_LOGITS_FP32_COPIES fp32 copies, plus the compute-dtype output when
  that is not fp32); otherwise fp32, twice (values and the log-softmax).
- optimizer_step (train calls): what the optimizer step holds beyond the forward/backward
  working set. The step runs after backward, when the activations and logits are gone, so
  the call's peak is the larger of the two: this part is max(0, step temporaries -
  (activations + logits)), the step temporaries being the fp32 clipped gradient and Adam's
  denominator of one chunk of this rank's part of the gradients (the step works in chunks),
  plus the reduced part itself under ZeRO-1 (efficiency.ADAM_STEP_*;
  optimizer_step_bytes_per_device).
- workspace: a fixed amount per call (efficiency.WORKSPACE_BYTES).

The attention mask: generation's passes, and train and inference passes on devices that run
them with a mask (cpu), hold SDPA's mask (efficiency.SDPA_MASK_BYTES_PER_KEY per key and
query) in their working set and, in train, among what autograd keeps; train and inference
passes on devices that run them right-aligned and causal (roofline.causal_attention: cuda,
runtime/model.py forward_sequences) have no mask tensor, so none of it is counted there.

Under FSDP / ZeRO-3 (Execution.shard_parameters_over_dp; costmodel/fsdp_cost.py for the
sources): weights, and in train calls gradients and optimizer states, are divided over dp
(each rank holds 1/dp of every flat parameter; FSDP's padding to a multiple of dp is
ignored), and the optimizer step holds no reduced part beside them (the sharded gradient is
the gradients part). Two working parts appear, zero otherwise:
- gathered_parameters: the full parameters in flight, the root unit's (embedding, final
  norm, head) and two blocks' (the running one and the prefetched next), compute dtype;
- unsharded_gradients (train calls): the root's and one block's full gradients before their
  reduce-scatter, plus the reduce-dtype copy of the one being reduce-scattered.

A call's resident parts (RESIDENT_KINDS) stay on its devices between calls when its placement
is the model's home: weights, gradients and optimizer states for a train call (train state),
the weights otherwise. Its working parts (WORKING_KINDS) live only during the call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from costmodel import efficiency as eff
from costmodel import moe_cost, recompute
from costmodel.fsdp_cost import gathered_parameter_bytes, unsharded_gradient_bytes
from costmodel.roofline import kv_heads_per_rank, op_is_causal
from planner.domain.layout import RECOMPUTE_MODES, Execution
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.domain.workflow import BatchSpec, ModelFunctionCall
from planner.sharding.grad_buckets import GRAD_BUCKET_BYTES, OPTIMIZER_CHUNK_ELEMENTS
from planner.sharding.param_shards import shard_elements
from planner.sharding.pipeline_partition import stage_layer_counts


@dataclass(frozen=True)
class MemoryParts:
    """Bytes per mesh position of each part of one call's memory (module docstring); a
    non-train call has zero gradients and optimizer states."""

    weights: np.ndarray
    gradients: np.ndarray
    optimizer: np.ndarray
    activations: np.ndarray
    kv_cache: np.ndarray
    logits: np.ndarray
    gathered_parameters: np.ndarray
    unsharded_gradients: np.ndarray
    optimizer_step: np.ndarray
    workspace: np.ndarray

    def of(self, kinds: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
        """(kind, bytes per position) of each of `kinds`."""
        return [(kind, getattr(self, kind)) for kind in kinds]

    def sum_of(self, kinds: tuple[str, ...]) -> np.ndarray:
        return np.sum([getattr(self, kind) for kind in kinds], axis=0)

    @property
    def total(self) -> np.ndarray:
        return self.sum_of(PART_KINDS)


PART_KINDS = tuple(f.name for f in fields(MemoryParts))
RESIDENT_KINDS = ("weights", "gradients", "optimizer")
WORKING_KINDS = tuple(kind for kind in PART_KINDS if kind not in RESIDENT_KINDS)


@dataclass(frozen=True)
class CallMemory:
    """One call's memory per mesh position: resident parts (what stays between calls) and
    working parts (what lives only during the call), module docstring."""

    parts: MemoryParts

    @property
    def weights_bytes(self) -> np.ndarray:
        return self.parts.weights

    def resident_parts(self) -> list[tuple[str, np.ndarray]]:
        return self.parts.of(RESIDENT_KINDS)

    def working_parts(self) -> list[tuple[str, np.ndarray]]:
        return self.parts.of(WORKING_KINDS)

    @property
    def resident_bytes(self) -> np.ndarray:
        """Train state (weights + gradients + optimizer states) of a train call, else the
        weights."""
        return self.parts.sum_of(RESIDENT_KINDS)

    @property
    def working_bytes(self) -> np.ndarray:
        return self.parts.sum_of(WORKING_KINDS)

    def alone_bytes(self) -> np.ndarray:
        """What the call needs on each device when nothing else is there: its resident and
        working parts (a lower bound of the device's peak in any plan with this call)."""
        return self.parts.total


def per_position(stage_tp_values: np.ndarray, execution: Execution) -> np.ndarray:
    """Expand a [pp, tp] (or [pp, 1]) array to one value per mesh position."""
    ex = execution
    values = np.broadcast_to(stage_tp_values, (ex.pp, ex.tp))
    return np.repeat(values[:, None, :], ex.dp, axis=1).reshape(-1).astype(float)


def weight_bytes_per_device(spec: ModelSpec, head: HeadKind, tp: int, pp: int,
                            dtype_bytes: int) -> np.ndarray:
    """Weights of each (stage, tp rank) in the compute dtype: array [pp, tp]. Gradients
    take the same bytes (one per weight, compute dtype)."""
    return shard_elements(spec, head, tp, pp) * float(dtype_bytes)


def optimizer_shards(execution: Execution) -> int:
    """Ranks the optimizer states are divided over: dp under ZeRO-1 (and under FSDP /
    ZeRO-3, which implies it), else 1."""
    return execution.dp if execution.shard_optimizer_over_dp else 1


def parameter_shards(execution: Execution) -> int:
    """Ranks the weights and gradients are divided over: dp under FSDP / ZeRO-3, else 1."""
    return execution.dp if execution.shard_parameters_over_dp else 1


def optimizer_state_bytes_per_device(spec: ModelSpec, head: HeadKind, tp: int, pp: int,
                                     shards: int, dtype_bytes: int) -> np.ndarray:
    """Adam states of each (stage, tp rank), divided over `shards` ranks: array [pp, tp].

    Mixed-precision Adam (ZeRO paper, Rajbhandari et al. 2020, section 3.1): 12 bytes per
    parameter beside the bf16 weight and gradient; ZeRO-1 divides them over dp. One layout
    at ep 1 of optimizer_state_bytes, the rule the call memory uses.
    """
    one = np.ones(1, dtype=np.int64)
    return optimizer_state_bytes(spec, head, tp, pp, one, one * shards, one * shards,
                                 dtype_bytes)[0]


def optimizer_step_bytes_per_device(spec: ModelSpec, head: HeadKind, tp: int, pp: int,
                                    shards: np.ndarray, fsdp: np.ndarray,
                                    dtype_bytes: int, eps: np.ndarray | None = None,
                                    expert_shards: np.ndarray | None = None) -> np.ndarray:
    """Temporaries of the optimizer step on each (stage, tp rank) of layouts of `tp` x `pp`
    whose optimizer states are divided over `shards` ranks, under FSDP where `fsdp` (arrays
    [n]): array [n, pp, tp].

    runtime/optimizer.py, per flat part of this rank's gradients (its shard, divided over
    the part's group under ZeRO-1): under ZeRO-1 the reduced part in the compute dtype
    (under FSDP / ZeRO-3 the sharded gradient is the gradients part itself), alive through
    the whole step for every part at once; the step then works chunk by chunk
    (planner.sharding.grad_buckets.OPTIMIZER_CHUNK_ELEMENTS), ADAM_STEP_FP32_TEMPORARIES fp32
    tensors (the clipped gradient and the denominator) of one chunk (or of the whole part
    when smaller) alive together, and, under ZeRO-1, the copy of this rank's piece of one
    bucket for the all-gather after the update; one part at a time, so the largest of those
    counts. A mixture-of-experts model's routed experts (expert degrees `eps`, arrays [n])
    are a second part, divided over `expert_shards` ranks (moe_cost.expert_optimizer_shards).
    """
    fp32_bytes = eff.ADAM_STEP_FP32_TEMPORARIES * eff.ADAM_STEP_TEMPORARY_BYTES

    def parts_bytes(elements: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the reduced part, the largest transient) of one flat part, [n, pp, tp]."""
        owned = elements / ranks[:, None, None]
        sharded = ((ranks > 1) & ~fsdp)[:, None, None]
        reduced = np.where(sharded, owned * dtype_bytes, 0.0)
        gather_copy = np.where(sharded, np.minimum(owned * dtype_bytes,
                                                   GRAD_BUCKET_BYTES / ranks[:, None, None]),
                               0.0)
        chunk = np.minimum(owned, OPTIMIZER_CHUNK_ELEMENTS) * fp32_bytes
        return reduced, np.maximum(chunk, gather_copy)

    if spec.moe is None:
        reduced, transient = parts_bytes(shard_elements(spec, head, tp, pp).astype(float)[None],
                                         shards)
        return reduced + transient
    experts = np.stack([moe_cost.expert_shard_elements(spec, head, tp, pp, int(ep))
                        for ep in eps]).astype(float)
    dense = shard_elements(spec, head, tp, pp).astype(float) \
        - moe_cost.expert_shard_elements(spec, head, tp, pp, 1)
    dense_reduced, dense_transient = parts_bytes(dense[None], shards)
    expert_reduced, expert_transient = parts_bytes(experts, expert_shards)
    return dense_reduced + expert_reduced + np.maximum(dense_transient, expert_transient)


def mask_keys(device_kind: str, op: str, keys: float) -> float:
    """Keys per query of the attention mask an `op` pass holds on a device of
    `device_kind` (module docstring): `keys`, or 0 for a cache-less pass that the device
    runs causal without a mask (roofline.op_is_causal)."""
    return 0.0 if op_is_causal(op, device_kind) else keys


def block_working_bytes(spec: ModelSpec, tp: int, tokens: float, keys: float,
                        dtype_bytes: int, ep=1) -> float:
    """One block's working set for `tokens` tokens without autograd (efficiency.NO_GRAD_*)
    with a mask of `keys` keys per token (0: no mask, mask_keys): the residual stream and
    norm output, plus the larger of the attention core's tensors and the MLP's (a
    mixture-of-experts block's under expert degree `ep`, a number or an array like
    `tokens`: moe_cost.mlp_no_grad_bytes_per_token)."""
    q_width, kv_width = spec.q_dim / tp, kv_heads_per_rank(spec, tp) * spec.head_dim
    attention = (q_width * 2 + kv_width * 2) * dtype_bytes + eff.SDPA_MASK_BYTES_PER_KEY * keys
    if spec.moe is not None:
        mlp = np.vectorize(lambda e: moe_cost.mlp_no_grad_bytes_per_token(
            spec, tp, int(e), dtype_bytes))(ep)
        residual = eff.NO_GRAD_RESIDUAL_TENSORS * spec.hidden_size * dtype_bytes
        return tokens * (residual + np.maximum(attention, mlp))
    mlp = eff.NO_GRAD_SWIGLU_TENSORS * spec.intermediate_size / tp * dtype_bytes
    residual = eff.NO_GRAD_RESIDUAL_TENSORS * spec.hidden_size * dtype_bytes
    return tokens * (residual + max(attention, mlp))


def logits_bytes(spec: ModelSpec, head: HeadKind, tp: int, tokens: float, train: bool,
                 dtype_bytes: int) -> float:
    """Logits of the last stage (module docstring)."""
    width = spec.vocab_size / tp if head == "lm" else 1
    if not train:
        return 2.0 * tokens * width * eff.LOGITS_BYTES_PER_ELEMENT
    fp32 = eff.LOGITS_BYTES_PER_ELEMENT
    per_element = eff.TRAIN_LOGITS_FP32_COPIES * fp32 + (dtype_bytes if dtype_bytes != fp32
                                                         else 0)
    return tokens * width * per_element


def final_norm_bytes_per_token(spec: ModelSpec, dtype_bytes: int) -> float:
    """What a train call's last stage keeps of the final norm (recompute.rms_norm_bytes) and
    of the head's input (its output, one compute-dtype copy), per token."""
    h = spec.hidden_size
    return recompute.rms_norm_bytes(h, 1, dtype_bytes) + h * dtype_bytes


def kv_cache_bytes(spec: ModelSpec, tp: int, num_layers: int, num_seqs: float,
                   context_len: float, dtype_bytes: int) -> float:
    """KV cache of one device: seqs x context x 2 (K, V) x layers x kv width per tp rank
    (kv heads / tp heads, or the one replicated head when tp exceeds them:
    roofline.kv_heads_per_rank)."""
    kv_width = kv_heads_per_rank(spec, tp) * spec.head_dim
    return num_seqs * context_len * 2.0 * num_layers * kv_width * dtype_bytes


def train_stage_activation_bytes(spec: ModelSpec, head: HeadKind, tp: int, pp: int,
                                 micro_batches: np.ndarray, modes: np.ndarray,
                                 micro_seqs: np.ndarray, seq_len: int,
                                 dtype_bytes: int, eps: np.ndarray | None = None, *,
                                 device_kind: str) -> np.ndarray:
    """Block activations one device of each stage holds at the peak of a 1F1B train step
    (logits apart), for layouts of `tp` x `pp` with the given micro-batch counts,
    recomputation modes (RECOMPUTE_MODES codes) and micro-batch sequences (arrays [n]):
    array [n, pp], on a device of `device_kind` (whether its attention keeps a mask:
    mask_keys; recompute.py counts its keys for the mask only, so 0 keys is no mask).
    Every block of the micro-batches in flight keeps what the recomputation
    mode keeps, the last stage the final norm and head input, and in backward one block's
    rerun part is alive again (costmodel/recompute.py). The head's backward (logits and their
    gradients) is over before the first block's rerun begins, so the last stage's peak holds
    the larger of the two: the rerun counts here only by what it exceeds the logits part
    (logits_bytes). A mixture-of-experts model's blocks keep what they keep under their
    expert degrees `eps` (arrays [n]; None: 1), and one block's all-to-all buffers are alive
    beside them (moe_cost.all_to_all_working_bytes_per_token)."""
    layers = np.asarray(stage_layer_counts(spec.num_layers, pp), dtype=np.int64)
    tokens = (np.asarray(micro_seqs, dtype=np.int64) * seq_len)[:, None]
    in_flight = np.minimum(np.asarray(micro_batches, dtype=np.int64)[:, None],
                           pp - np.arange(pp, dtype=np.int64)[None, :])
    keys = mask_keys(device_kind, "forward", seq_len)
    if spec.moe is None:
        kept = np.array([recompute.kept_bytes_per_token(spec, mode, tp, keys, dtype_bytes)
                         for mode in RECOMPUTE_MODES])[modes][:, None]
        rerun_per_token = np.array([recompute.recomputed_bytes_per_token(
            spec, mode, tp, keys, dtype_bytes) for mode in RECOMPUTE_MODES])[modes][:, None]
        exchange = 0.0
    else:
        eps = np.ones(len(modes), dtype=np.int64) if eps is None else np.asarray(eps)
        pairs = [(RECOMPUTE_MODES[m], int(e)) for m, e in zip(modes, eps)]
        kept = np.array([recompute.kept_bytes_per_token(spec, mode, tp, keys, dtype_bytes,
                                                        e) for mode, e in pairs])[:, None]
        rerun_per_token = np.array([recompute.recomputed_bytes_per_token(
            spec, mode, tp, keys, dtype_bytes, e) for mode, e in pairs])[:, None]
        exchange = tokens * np.array([moe_cost.all_to_all_working_bytes_per_token(
            spec, int(e), dtype_bytes) for e in eps])[:, None]
    rerun = tokens * recompute.RECOMPUTED_WORKING_COPIES * rerun_per_token
    last = np.arange(pp) == pp - 1
    head_kept = np.where(last, final_norm_bytes_per_token(spec, dtype_bytes), 0.0)
    logits = np.where(last, logits_bytes(spec, head, tp, tokens, True, dtype_bytes), 0.0)
    activations = tokens * (in_flight * layers * kept + head_kept) \
        + np.maximum(0.0, rerun - logits)
    return activations if spec.moe is None else activations + exchange


def micro_batch_seqs(call: ModelFunctionCall, batch: BatchSpec, execution: Execution) -> int:
    """Sequences in one micro-batch of one replica (the largest, when they do not divide)."""
    seqs = batch.n_seqs // batch.ppo_minibatches if call.kind == "train" else batch.n_seqs
    return math.ceil(seqs / (execution.dp * execution.micro_batches))


def _stage_activation_and_kv_bytes(call: ModelFunctionCall, spec: ModelSpec, head: HeadKind,
                                   tp: int, pp: int, micro_batches: np.ndarray,
                                   modes: np.ndarray, micro_seqs: np.ndarray,
                                   batch: BatchSpec, dtype_bytes: int, eps: np.ndarray,
                                   device_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(activations, KV cache) of one device of each stage during the call, for layouts of
    `tp` x `pp` (arrays [n] as in train_stage_activation_bytes) on a device of
    `device_kind`: arrays [n, pp]."""
    n = len(micro_seqs)
    b = np.asarray(micro_seqs, dtype=np.int64)[:, None]
    ep = eps[:, None]
    if call.kind == "train":
        return train_stage_activation_bytes(spec, head, tp, pp, micro_batches, modes,
                                            micro_seqs, batch.seq_len, dtype_bytes, eps,
                                            device_kind=device_kind), np.zeros((n, pp))
    if call.kind == "inference":
        working = block_working_bytes(spec, tp, b * batch.seq_len,
                                      mask_keys(device_kind, "forward", batch.seq_len),
                                      dtype_bytes, ep)
        return np.broadcast_to(working, (n, pp)), np.zeros((n, pp))
    layers = np.asarray(stage_layer_counts(spec.num_layers, pp), dtype=np.int64)[None, :]
    wave_seqs = b * np.minimum(np.asarray(micro_batches, dtype=np.int64)[:, None], pp)
    kv = kv_cache_bytes(spec, tp, layers, wave_seqs, batch.seq_len, dtype_bytes)
    working = block_working_bytes(spec, tp, b * batch.prompt_len,
                                  mask_keys(device_kind, "prefill", batch.prompt_len),
                                  dtype_bytes, ep)
    return np.broadcast_to(working, (n, pp)), kv


def _logits_tokens(call: ModelFunctionCall, batch: BatchSpec, micro_seqs: int) -> int:
    """Tokens whose logits the last stage holds at once: a decoding step's one per sequence
    when generating, every token of the micro-batch otherwise."""
    return micro_seqs if call.kind == "generate" else micro_seqs * batch.seq_len


def layout_memory_parts(call: ModelFunctionCall, spec: ModelSpec, head: HeadKind,
                        executions: list[Execution], batch: BatchSpec, dtype_bytes: int,
                        device_kind: str) -> MemoryParts:
    """Every part of `call`'s memory (module docstring) on each of `executions`, which share
    tp and pp (they differ in dp, ep, micro-batches, recomputation, ZeRO-1 and FSDP), per
    (stage, tp rank): arrays [n, pp, tp]. A mesh position holds the value of its stage and
    tp rank (per_position; every expert rank holds as many experts, so as many bytes); the
    largest over the mesh is the largest over (stage, tp rank)."""
    tp, pp = executions[0].tp, executions[0].pp
    assert all(e.tp == tp and e.pp == pp for e in executions), "one tp x pp per call"
    n = len(executions)

    def column(get, dtype=np.int64) -> np.ndarray:
        return np.array([get(e) for e in executions], dtype=dtype)

    micro_batches = column(lambda e: e.micro_batches)
    modes = column(lambda e: RECOMPUTE_MODES.index(e.recompute))
    fsdp = column(lambda e: e.shard_parameters_over_dp, np.bool_)
    shards = column(optimizer_shards)
    micro_seqs = column(lambda e: micro_batch_seqs(call, batch, e))
    eps = column(lambda e: e.ep)
    expert_shards = column(moe_cost.expert_optimizer_shards)
    shape = (n, pp, tp)
    train = call.kind == "train"
    if spec.moe is None:
        held = np.broadcast_to(weight_bytes_per_device(spec, head, tp, pp, dtype_bytes), shape)
    else:
        held = np.stack([shard_elements(spec, head, tp, pp, int(ep)) for ep in eps]) \
            * float(dtype_bytes)
    weights = held / column(parameter_shards)[:, None, None]
    zeros = np.zeros(shape)
    gradients, optimizer = zeros, zeros
    if train:
        gradients = weights.copy()
        optimizer = optimizer_state_bytes(spec, head, tp, pp, eps, shards, expert_shards,
                                          dtype_bytes)
    activations, kv = _stage_activation_and_kv_bytes(call, spec, head, tp, pp, micro_batches,
                                                     modes, micro_seqs, batch, dtype_bytes,
                                                     eps, device_kind)
    logits = np.zeros((n, pp))
    logits[:, -1] = logits_bytes(spec, head, tp, _logits_tokens(call, batch, micro_seqs),
                                 train, dtype_bytes)
    activations = np.broadcast_to(activations[:, :, None], shape)
    logits = np.broadcast_to(logits[:, :, None], shape)
    optimizer_step = zeros
    if train:
        step = optimizer_step_bytes_per_device(spec, head, tp, pp, shards, fsdp, dtype_bytes,
                                               eps, expert_shards)
        optimizer_step = np.maximum(0.0, step - activations - logits)
    gathered = np.where(fsdp[:, None, None],
                        gathered_parameter_bytes(spec, head, tp, dtype_bytes), 0.0) \
        if fsdp.any() else zeros
    unsharded = np.where(fsdp[:, None, None],
                         unsharded_gradient_bytes(spec, head, tp, dtype_bytes), 0.0) \
        if train and fsdp.any() else zeros
    return MemoryParts(
        weights=weights, gradients=gradients, optimizer=optimizer, activations=activations,
        kv_cache=np.broadcast_to(kv[:, :, None], shape), logits=logits,
        gathered_parameters=np.broadcast_to(gathered, shape),
        unsharded_gradients=np.broadcast_to(unsharded, shape), optimizer_step=optimizer_step,
        workspace=np.full(shape, float(eff.WORKSPACE_BYTES[device_kind])))


def optimizer_state_bytes(spec: ModelSpec, head: HeadKind, tp: int, pp: int, eps: np.ndarray,
                          shards: np.ndarray, expert_shards: np.ndarray, dtype_bytes: int
                          ) -> np.ndarray:
    """Adam states of each (stage, tp rank) of layouts with expert degrees `eps`, dense
    parameters divided over `shards` ranks and routed experts (their ep shard) over
    `expert_shards` (arrays [n]): array [n, pp, tp] (optimizer_state_bytes_per_device)."""
    per_param = eff.OPTIMIZER_STATE_BYTES_PER_PARAM[dtype_bytes]
    elements = shard_elements(spec, head, tp, pp).astype(float)
    if spec.moe is None:
        return elements * (per_param / shards[:, None, None])
    dense = elements - moe_cost.expert_shard_elements(spec, head, tp, pp, 1)
    experts = np.stack([moe_cost.expert_shard_elements(spec, head, tp, pp, int(ep))
                        for ep in eps]).astype(float)
    return dense * (per_param / shards[:, None, None]) \
        + experts * (per_param / expert_shards[:, None, None])


def call_memory_parts(call: ModelFunctionCall, spec: ModelSpec, head: HeadKind,
                      execution: Execution, batch: BatchSpec, dtype_bytes: int,
                      device_kind: str) -> MemoryParts:
    """Every part of `call`'s memory on `execution`, per mesh position (module docstring):
    layout_memory_parts of the one execution, spread to its positions."""
    parts = layout_memory_parts(call, spec, head, [execution], batch, dtype_bytes,
                                device_kind)
    return MemoryParts(**{kind: per_position(getattr(parts, kind)[0], execution)
                          for kind in PART_KINDS})
