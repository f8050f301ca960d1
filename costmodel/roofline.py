"""Analytic compute cost of one model part: FLOPs, bytes moved, and roofline time.

Parts are "embedding", "block" (one transformer block), "lm_head" and "value_head" (each
with the final norm); ops are "forward", "backward", "prefill" (forward that also writes
the KV cache), "decode" (one new token per sequence attending to `length` cached tokens)
and "optimizer" (one Adam step of the part's tp shard; batch and length are ignored).
`batch` is sequences, `length` tokens per sequence (the context for decode). `length` may
be a numpy array: every function is vectorised over it.

A part is priced as the kernels the runtime launches (runtime/layers.py), each by its own
roofline, summed on the device:
- every GEMM (q, k, v, o, gate, up, down; the head) as max(FLOPs / (peak x gemm_efficiency),
  bytes / (bandwidth x efficiency)); its backward as two GEMMs of the same curve (input
  gradient and weight gradient);
- attention (one SDPA kernel) as max(FLOPs / (MAMF x attention efficiency), bytes / bw);
  the forward and backward of a cache-less pass (train, inference) on a device that runs
  them right-aligned and causal (causal_attention: cuda) over the key blocks on and below
  the diagonal only, without a mask; every other op (prefill, decode, cpu) over all keys
  with a mask;
- the element-wise ops (norms, rotary, SwiGLU, residual adds, KV-cache writes)
  as their bytes / bw.
On CUDA the host issues the kernels asynchronously: a part takes max(device time, host time
of its eager ops) (efficiency.EAGER_OP_HOST_S). On CPU the device is the host: a fixed
launch overhead per part is added (efficiency.BLOCK_LAUNCH_OVERHEAD_S). Constants and their
sources: costmodel/efficiency.py.

How to price a published case with this API (seconds on one device, no communication):
- prefill of 2048 tokens, batch 1, LLaMA-2-7B on A100 (first-token latency):
    hw = hardware_by_name("a100-sxm-80gb"); spec = PRESETS["llama-7b"]
    t = spec.num_layers * part_time_s_roofline(spec, hw, "prefill", "block", 1, 1, 2048) \\
        + part_time_s_roofline(spec, hw, "prefill", "embedding", 1, 1, 2048) \\
        + part_time_s_roofline(spec, hw, "prefill", "lm_head", 1, 1, 2048)
- a static batch of b sequences, prompt p, g generated tokens (generate_cost's model):
    prefill as above with batch b and length p, then for contexts c = p+1 .. p+g:
    sum over c of (num_layers x "decode" block + embedding + lm_head at (b, c)),
    plus g x decode_step_host_s(hw) (call_cost adds it as the "decode_steps" phase).
- one training micro-batch (forward + backward, no recomputation): "forward" + "backward"
  of every part at (b, s). costmodel.call_cost.call_time prices whole calls this way.
"""

from __future__ import annotations

import numpy as np

from costmodel import efficiency as eff
from planner.domain.decode_policy import stop_check_interval_steps
from planner.domain.hardware import HardwareSpec
from planner.domain.modelspec import ModelSpec

PARTS = ("embedding", "block", "lm_head", "value_head")
OPS = ("forward", "backward", "prefill", "decode", "optimizer")
# The ops of cache-less passes (train, inference): runtime/model.py forward_sequences.
CACHE_LESS_OPS = ("forward", "backward")
# Query rows per block of FlashAttention-2's forward kernel, the granularity at which a
# causal pass skips the score blocks above the diagonal: kBlockM = 128 (kBlockN = 64) for
# head dims 64 and 128 on A100 / H100 (flash_fwd_launch_template.h run_mha_fwd_hdim64 /
# hdim128, Flash_fwd_kernel_traits<d, 128, 64 or 128, 4>, as vendored by PyTorch's SDPA).
FLASH_ATTENTION_CAUSAL_BLOCK_QUERIES = 128


def causal_attention(device_kind: str) -> bool:
    """Whether cache-less passes on a device of `device_kind` (HardwareSpec.kind) run
    attention right-aligned and causal, without a mask: on cuda (runtime/device.py
    RIGHT_ALIGNED_ATTENTION, the same rule by device kind;
    tests/runtime/test_runtime_causal_path.py checks they agree)."""
    return device_kind == "cuda"


def op_is_causal(op: str, device_kind: str) -> bool:
    """Whether `op`'s attention runs causal without a mask on a device of `device_kind`
    (causal_attention): the forward and backward of cache-less passes; generation's prefill
    and decode keep their masks (runtime/generate.py)."""
    return op in CACHE_LESS_OPS and causal_attention(device_kind)


def causal_keys_per_query(length):
    """Keys per query, on average, a causal FlashAttention-2 pass computes scores for over
    a sequence of `length` tokens (vectorised).

    FlashAttention-2 (Dao 2023, sec. 3.1.1 "Causal masking") skips every block of the score
    matrix above the diagonal: query block m (rows m B .. m B + B - 1, B = kBlockM) runs the
    key blocks up to (m + 1) B (flash_fwd_kernel.h: n_block_max = ceil_div((m_block + 1) x
    kBlockM, kBlockN) for square causal attention). With T = ceil(L / B) query blocks the
    full blocks give B^2 T (T - 1) / 2 scores and the last (L - (T - 1) B rows) all L keys:
    L^2 (T + 1) / (2 T) when B divides L, half of L^2 for long sequences, all of it for
    L <= B. The diagonal blocks are computed whole (masked inside the block), so this counts
    them whole. The backward skips the same blocks (its own block sizes, taken as the
    forward's: FLASH_ATTENTION_CAUSAL_BLOCK_QUERIES).
    """
    length = np.asarray(length, dtype=float)
    block = float(FLASH_ATTENTION_CAUSAL_BLOCK_QUERIES)
    blocks = np.maximum(np.ceil(length / block), 1.0)
    full = block * block * blocks * (blocks - 1.0) / 2.0
    last_rows = length - (blocks - 1.0) * block
    scores = full + last_rows * length
    return np.divide(scores, length, out=np.zeros_like(scores), where=length > 0)


def kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    """KV heads each tp rank holds: kv / tp when tp divides them, one (a copy, shared by
    tp / kv ranks) when tp is a multiple of them (planner.domain.layout's rule,
    planner.sharding.param_shards)."""
    return max(1, spec.num_kv_heads // tp)


def part_params_per_rank(spec: ModelSpec, part: str, tp: int) -> float:
    """Parameters of one part on one tp rank (roofline; param_shards has the exact split).
    A mixture-of-experts block counts its router and shared expert here, not its routed
    experts, whose share of a rank depends on ep (costmodel/moe_cost.py prices them)."""
    h = spec.hidden_size
    if part == "block":
        kv = kv_heads_per_rank(spec, tp) * spec.head_dim
        attn = 2 * h * spec.q_dim / tp + 2 * h * kv
        if spec.moe is not None:
            shared = spec.moe.shared_expert_params(h)
            return attn + (spec.moe.router_params(h) + shared / tp) + 2 * h
        return attn + spec.mlp_params_per_layer() / tp + 2 * h
    if part == "embedding":
        return spec.vocab_size * h / tp
    if part == "lm_head":
        return spec.vocab_size * h / tp + h
    return 2 * h + 1


def block_gemm_shapes(spec: ModelSpec, tp: int) -> list[tuple[float, float]]:
    """(output width N, input width K) of each GEMM of one block on one tp rank that every
    token runs, as the runtime runs them: q, k, v (column-parallel), o (row-parallel), gate,
    up, down. q and o are heads x head_dim wide, which is not h when the config sets head_dim
    (Qwen3). A mixture-of-experts block runs instead of gate/up/down its router (E x h,
    replicated: every tp rank computes it) and, in Qwen2-MoE, the shared expert's gate, up
    and down (tp-split like a dense MLP) and its sigmoid gate (1 x h, replicated); its
    routed experts, which a token runs k of and whose rows depend on ep, are priced apart
    (costmodel/moe_cost.py routed_experts_time_s)."""
    h, inter, q = spec.hidden_size, spec.intermediate_size, spec.q_dim
    kv = kv_heads_per_rank(spec, tp) * spec.head_dim
    attention = [(q / tp, h), (kv, h), (kv, h), (h, q / tp)]
    if spec.moe is None:
        return attention + [(inter / tp, h), (inter / tp, h), (h, inter / tp)]
    moe = [(float(spec.moe.num_experts), h)]
    shared = spec.moe.shared_expert_intermediate_size
    if shared:
        moe += [(shared / tp, h), (shared / tp, h), (h, shared / tp), (1.0, h)]
    return attention + moe


def routed_expert_flops(spec: ModelSpec, tp: int, tokens):
    """Forward FLOPs of the routed experts of one mixture-of-experts block on one tp rank,
    on average over the ranks: 2 per weight MAC of the k experts each token runs (gate, up,
    down of h x I_e / tp each); 0 for a dense block. With the router and the shared expert
    (block_gemm_shapes) this is 2 x matmul_params_per_layer (active parameters) per token
    at tp 1."""
    if spec.moe is None:
        return tokens * 0.0
    return tokens * 2.0 * spec.moe.experts_per_token * spec.moe.expert_params(
        spec.hidden_size) / tp


def head_gemm_shapes(spec: ModelSpec, part: str, tp: int) -> list[tuple[float, float]]:
    if part == "lm_head":
        return [(spec.vocab_size / tp, spec.hidden_size)]
    if part == "value_head":
        return [(1.0, spec.hidden_size)]
    return []


def forward_flops_block(spec: ModelSpec, tp: int, batch: float, length, decode: bool,
                        causal: bool = False):
    """Forward FLOPs of one block on one tp rank: 2 per weight MAC of its GEMMs
    (block_gemm_shapes: with replicated kv heads each rank computes its kv head's k and v)
    + attention 4 x heads x head_dim x keys, + a mixture-of-experts block's routed experts
    (routed_expert_flops: FLOPs by active parameters).

    With a mask (the default: cpu, and generation everywhere) the runtime's SDPA gets an
    explicit boolean mask (runtime/layers.py), which no fused kernel can skip tiles of, so a
    forward token computes scores against all `length` keys of its sequence; a decode token
    attends to `length`. `causal` (a right-aligned cache-less pass, op_is_causal): the keys
    FlashAttention-2 computes, causal_keys_per_query. Source: Kaplan et al. 2020 (2N per
    token) plus the attention term (FlashAttention-2 sec. 4.1: 4 x seqlen^2 x d x heads).
    """
    tokens = batch if decode else batch * np.asarray(length, dtype=float)
    weight_macs = sum(n * k for n, k in block_gemm_shapes(spec, tp))
    flops = tokens * 2.0 * weight_macs + attention_flops(spec, tp, batch, length, decode,
                                                         causal)
    if spec.moe is not None:
        flops = flops + routed_expert_flops(spec, tp, tokens)
    return flops


def forward_flops_part(spec: ModelSpec, part: str, tp: int, batch: float, length, decode: bool):
    """Forward FLOPs of a part on one tp rank (embedding lookup is free)."""
    if part == "block":
        return forward_flops_block(spec, tp, batch, length, decode)
    tokens = part_tokens(part, "decode" if decode else "forward", batch, length)
    return tokens * sum(2.0 * n * k for n, k in head_gemm_shapes(spec, part, tp))


def part_tokens(part: str, op: str, batch: float, length):
    """Rows a part processes: batch x length, except decode (one per sequence) and the lm
    head of a prefill, which the runtime runs on each prompt's last token only
    (runtime/model.py stage_forward head_positions)."""
    length = np.asarray(length, dtype=float)
    if op == "decode" or (op == "prefill" and part == "lm_head"):
        return batch + length * 0.0
    return batch * length


def gemm_efficiency(rows, cols, depth, hardware: HardwareSpec):
    """Fraction of peak one GEMM (rows x depth) @ (depth x cols) reaches (efficiency.py).

    CUDA: MAMF / peak x tile quantisation of the rows x cols output x the share of SMs that
    get work while there are fewer (tile x depth slice) units than SMs. CPU: the rows curve.
    """
    rows = np.maximum(np.asarray(rows, dtype=float), 1.0)
    if hardware.kind != "cuda":
        return eff.CPU_MATMUL_EFFICIENCY_MAX * rows / (rows + eff.CPU_MATMUL_HALF_EFFICIENCY_TOKENS)
    row_tiles = np.ceil(rows / eff.GEMM_TILE_ROWS)
    col_tiles = np.ceil(np.maximum(cols, 1.0) / eff.GEMM_TILE_COLS)
    filled = rows * cols / (row_tiles * eff.GEMM_TILE_ROWS * col_tiles * eff.GEMM_TILE_COLS)
    sms = eff.STREAMING_MULTIPROCESSORS.get(hardware.name)
    occupancy = 1.0
    if sms is not None:
        units = row_tiles * col_tiles * np.ceil(np.maximum(depth, 1.0) / eff.GEMM_TILE_DEPTH)
        occupancy = np.minimum(1.0, units / sms)
    return hardware.max_achievable_matmul_flops / hardware.peak_flops * filled * occupancy


def memory_time_s(bytes_moved, hardware: HardwareSpec):
    return bytes_moved / (hardware.memory_bandwidth_bytes_per_s * eff.MEMORY_BANDWIDTH_EFFICIENCY)


def gemm_time_s(rows, cols, depth, hardware: HardwareSpec):
    """Roofline of one GEMM: max(2 r c k / (peak x efficiency), (r k + k c + r c) x dtype / bw)."""
    rows = np.asarray(rows, dtype=float)
    flops = 2.0 * rows * cols * depth
    moved = (rows * depth + depth * cols + rows * cols) * hardware.compute_dtype_bytes
    compute = flops / (hardware.peak_flops * gemm_efficiency(rows, cols, depth, hardware))
    return np.maximum(compute, memory_time_s(moved, hardware))


def gemms_time_s(shapes, tokens, backward: bool, hardware: HardwareSpec):
    """Forward: tokens x K @ K x N per shape. Backward: input gradient (tokens x N @ N x K)
    and weight gradient (N x tokens @ tokens x K), each by the same curve."""
    total = tokens * 0.0
    for n, k in shapes:
        if backward:
            total = total + gemm_time_s(tokens, k, n, hardware) + gemm_time_s(n, k, tokens, hardware)
        else:
            total = total + gemm_time_s(tokens, n, k, hardware)
    return total


def attention_flops(spec: ModelSpec, tp: int, batch: float, length, decode: bool,
                    causal: bool = False):
    """Score and value FLOPs of one block's SDPA on one tp rank (forward_flops_block): over
    all `length` keys per query, or with `causal` over causal_keys_per_query."""
    length = np.asarray(length, dtype=float)
    queries = batch if decode else batch * length
    keys = causal_keys_per_query(length) if causal and not decode else length
    return queries * 4.0 * (spec.q_dim / tp) * keys


def attention_time_s(spec: ModelSpec, tp: int, op: str, batch: float, length,
                     hardware: HardwareSpec):
    """SDPA of one block: max(FLOPs / (MAMF x efficiency), bytes / bw). Bytes: q and the
    output (per query, query width), K and V (per key, the rank's kv width: grouped-query
    attention runs through enable_gqa, no repeated copies), and the boolean mask
    (queries x keys) unless the op runs causal without one (op_is_causal: its FLOPs then
    over the causal blocks only, attention_flops); backward 2.5x the FLOPs and twice the
    bytes. Widths are this rank's heads x head_dim. The efficiency is FlashAttention-2's
    causal figure either way (efficiency.ATTENTION_EFFICIENCY_OF_MAMF), which the paper
    counts over the computed half of the scores, as the causal FLOPs here are."""
    decode = op == "decode"
    causal = op_is_causal(op, hardware.kind)
    length = np.asarray(length, dtype=float)
    width = spec.q_dim / tp
    kv_width = kv_heads_per_rank(spec, tp) * spec.head_dim
    dtype = hardware.compute_dtype_bytes
    queries = batch if decode else batch * length
    keys = batch * length
    mask = 0.0 if causal else queries * length
    moved = (2.0 * queries * width + 2.0 * keys * kv_width) * dtype + mask
    flops = attention_flops(spec, tp, batch, length, decode, causal)
    direction = "forward"
    if op == "backward":
        flops, moved, direction = flops * eff.ATTENTION_BACKWARD_FLOPS_FACTOR, 2.0 * moved, op
    if hardware.kind == "cuda":
        achieved = hardware.max_achievable_matmul_flops * eff.ATTENTION_EFFICIENCY_OF_MAMF[direction]
    else:
        achieved = hardware.peak_flops * gemm_efficiency(queries, length, width, hardware)
    return np.maximum(flops / achieved, memory_time_s(moved, hardware))


def block_elementwise_bytes(spec: ModelSpec, tp: int, op: str, batch: float, length,
                            dtype_bytes: int):
    """HBM bytes of the unfused element-wise ops of one block's forward (efficiency.py):
    two RMSNorms and two residual adds over h (replicated over tp), rotary on q and k, the
    attention output copy, SwiGLU over I / tp, and
    the KV-cache write of the new tokens (prefill and decode); with q/k norms (Qwen3) an
    RMSNorm over this rank's q and k widths. q widths are heads x head_dim / tp. A
    mixture-of-experts block's SwiGLU is its shared expert's (dense_swiglu_width), and its
    router adds the fp32 passes over the E logits (efficiency.MOE_ROUTER_FP32_PASSES)."""
    h = spec.hidden_size
    kv = kv_heads_per_rank(spec, tp) * spec.head_dim
    q = spec.q_dim / tp
    length = np.asarray(length, dtype=float)
    tokens = part_tokens("block", op, batch, length)
    norm_bytes = eff.RMSNORM_FP32_BYTES_PER_ELEMENT + eff.RMSNORM_DTYPE_PASSES * dtype_bytes
    norm = (2.0 * h + ((q + kv) if spec.qk_norm else 0.0)) * norm_bytes
    per_token_passes = (eff.ROTARY_PASSES * (q + kv) + eff.ATTENTION_OUTPUT_COPY_PASSES * q
                        + 2.0 * eff.RESIDUAL_ADD_PASSES * h
                        + eff.SWIGLU_PASSES * dense_swiglu_width(spec) / tp)
    if op in ("prefill", "decode"):
        per_token_passes += eff.KV_CACHE_WRITE_PASSES * 2.0 * kv
    router = 0.0
    if spec.moe is not None:
        router = eff.MOE_ROUTER_FP32_PASSES * spec.moe.num_experts * eff.MOE_ROUTER_BYTES
    return tokens * (norm + per_token_passes * dtype_bytes + router)


def dense_swiglu_width(spec: ModelSpec) -> float:
    """Intermediate width of the SwiGLU every token of a block runs: the dense MLP's, or a
    mixture-of-experts block's shared expert (0 without one; the routed experts' SwiGLU is
    costmodel/moe_cost.py's)."""
    if spec.moe is None:
        return float(spec.intermediate_size)
    return float(spec.moe.shared_expert_intermediate_size)


def part_elementwise_bytes(spec: ModelSpec, part: str, tp: int, op: str, batch: float, length,
                           dtype_bytes: int):
    """Element-wise bytes of a part's forward: the block's (above); the embedding lookup and
    its vocabulary mask (read + write of h, twice); the head's final norm and, for the lm
    head, the fp32 logits written and read back by the log-softmax."""
    if part == "block":
        return block_elementwise_bytes(spec, tp, op, batch, length, dtype_bytes)
    h = spec.hidden_size
    tokens = part_tokens(part, op, batch, length)
    if part == "embedding":
        return tokens * h * dtype_bytes * 4.0
    norm = tokens * h * (eff.RMSNORM_FP32_BYTES_PER_ELEMENT + eff.RMSNORM_DTYPE_PASSES * dtype_bytes)
    if part == "lm_head":
        return norm + 2.0 * tokens * spec.vocab_size / tp * eff.LOGITS_BYTES_PER_ELEMENT
    return norm


def device_time_s(spec: ModelSpec, hardware: HardwareSpec, op: str, part: str, tp: int,
                  batch: float, length):
    """Device seconds of one forward-type op (or "backward") of a part (module docstring)."""
    backward = op == "backward"
    forward_op = "forward" if backward else op
    tokens = part_tokens(part, forward_op, batch, length)
    shapes = block_gemm_shapes(spec, tp) if part == "block" else head_gemm_shapes(spec, part, tp)
    seconds = gemms_time_s(shapes, tokens, backward, hardware)
    if part == "block":
        seconds = seconds + attention_time_s(spec, tp, op, batch, length, hardware)
    moved = part_elementwise_bytes(spec, part, tp, forward_op, batch, length,
                                   hardware.compute_dtype_bytes)
    factor = eff.ELEMENTWISE_BACKWARD_FACTOR if backward else 1.0
    return seconds + factor * memory_time_s(moved, hardware)


def host_time_s(spec: ModelSpec, part: str, op: str) -> float:
    """Host seconds to issue a part's kernels on CUDA: its eager ops from Python (forward),
    or the autograd engine's kernels (backward). Qwen3's q/k norms add two RMSNorms."""
    ops = eff.EAGER_OPS_PER_PART[part]
    if part == "block" and spec.qk_norm:
        ops += 2 * eff.RMSNORM_EAGER_OPS
    if part == "block" and spec.moe is not None:
        ops += eff.MOE_ROUTER_EAGER_OPS
    if op == "backward":
        return ops * eff.BACKWARD_KERNELS_PER_FORWARD_OP * eff.AUTOGRAD_KERNEL_HOST_S
    return ops * eff.EAGER_OP_HOST_S


def cpu_launch_overhead_s(part: str) -> float:
    base = eff.BLOCK_LAUNCH_OVERHEAD_S["cpu"]
    return base if part == "block" else base * eff.SMALL_PART_OVERHEAD_FRACTION


def decode_step_host_s(hardware: HardwareSpec) -> float:
    """Host seconds of one decode step outside the parts on CUDA (efficiency.py), the stop
    check's synchronisation shared by the steps between checks
    (planner.domain.decode_policy); 0 on CPU, where a calibration measures it
    (costmodel/calibration.py decode_step_s)."""
    if hardware.kind != "cuda":
        return 0.0
    return (eff.DECODE_STEP_HOST_OPS * eff.EAGER_OP_HOST_S
            + eff.HOST_SYNC_S / stop_check_interval_steps(hardware.kind))


def part_time_s_roofline(spec: ModelSpec, hardware: HardwareSpec, op: str, part: str, tp: int,
                         batch: float, length):
    """Roofline time of one op of one part on one tp rank (module docstring)."""
    length = np.asarray(length, dtype=float)
    if op == "optimizer":
        traffic = part_params_per_rank(spec, part, tp) * eff.ADAM_TRAFFIC_BYTES_PER_PARAM
        # The runtime's Adam runs over one flat buffer per rank (runtime/optimizer.py): a
        # handful of launches per step, not per part, so no per-part host cost on CUDA.
        overhead = cpu_launch_overhead_s(part) if hardware.kind != "cuda" else 0.0
        return memory_time_s(traffic, hardware) + overhead + length * 0.0
    device = device_time_s(spec, hardware, op, part, tp, batch, length)
    if hardware.kind == "cuda":
        return np.maximum(device, host_time_s(spec, part, op))
    return device + cpu_launch_overhead_s(part)
