"""Named constants of the analytic cost model, each with its assumption and source.

Change a figure here, never inline: every formula in costmodel/ reads them from this module.
Efficiencies and formula constants only: the run policy of a train call (ZeRO-1 over dp,
activation recomputation) is a field of its Execution (planner/domain/layout.py).
"""

from __future__ import annotations

# --- Roofline efficiencies -------------------------------------------------------------

# GEMM on CUDA: the ceiling is the device's measured maximum achievable matmul throughput
# (HardwareSpec.max_achievable_matmul_flops, MAMF table of stas00/ml-engineering), reached by
# large GEMMs; below it the tile quantisation of the output (NVIDIA "Matrix Multiplication
# Background User's Guide", section "Dimension Quantization Effects": an M x N output is
# computed in tiles, here the guide's 128 x 256 example, and a partial tile costs a whole
# one). Wave quantisation (the guide's next section) applies only while the GEMM has fewer
# (tile x K-slice) work units than SMs: cuBLAS splits the K dimension (split-K) and Hopper's
# stream-K kernels spread the iteration space evenly over the SMs, removing the partial last
# wave of large GEMMs (Osama et al., "Stream-K", PPoPP 2023). K slices are the tile's K depth.
GEMM_TILE_ROWS = 128
GEMM_TILE_COLS = 256
GEMM_TILE_DEPTH = 64
# Streaming multiprocessors per device (NVIDIA A100 / H100 whitepapers: 108 SMs on A100 SXM,
# 132 on H100 SXM5; H200 uses the H100 die). A datasheet figure: belongs in
# profiles/hardware/*.yaml (asked of the lead); a device not listed gets no wave term.
STREAMING_MULTIPROCESSORS = {"a100-sxm-80gb": 108, "h100-sxm-80gb": 132, "h200-sxm-141gb": 132}

# GEMM on CPU (no tensor-core tiles): fraction of peak = MAX x rows / (rows + HALF). The
# former assumption for every device, kept for CPU where measured profile tables
# (profiles/cpu/) price every part and the roofline is only a fallback.
CPU_MATMUL_EFFICIENCY_MAX = 0.55
CPU_MATMUL_HALF_EFFICIENCY_TOKENS = 32.0

# Attention (one fused SDPA kernel) reaches this fraction of the device's MAMF. FlashAttention-2
# on A100 (Dao 2023, Fig. 4d and 5d: causal, head dim 128, 2k-16k tokens): forward up to ~200
# TFLOP/s = 0.75 of A100's 267.9 MAMF; forward + backward up to ~189 TFLOP/s, which with the
# paper's backward = 2.5 x forward FLOPs leaves ~185 TFLOP/s = 0.69 for the backward. We
# assume the same fraction of MAMF on H100 (FlashAttention-3 reaches 740 TFLOP/s forward,
# 0.93 of H100's MAMF; FlashAttention-2 without Hopper instructions 335 TFLOP/s, 0.42).
ATTENTION_EFFICIENCY_OF_MAMF = {"forward": 0.75, "backward": 0.69}
# Backward of attention: 5 matmuls against 2 forward (recomputation of S and P), FA2 sec. 4.1.
ATTENTION_BACKWARD_FLOPS_FACTOR = 2.5

# Fraction of datasheet HBM bandwidth a streaming kernel reaches: 80-90% for STREAM-like
# copies on A100/H100 (NVIDIA "CUDA C++ Best Practices", BabelStream results). We take 0.8.
MEMORY_BANDWIDTH_EFFICIENCY = 0.8

# --- Element-wise traffic of the runtime's block (runtime/layers.py, eager PyTorch) -------
# Bytes each element passes through HBM (read + write) in the unfused ops of one block.
# RMSNorm (rms_norm): x.float() (read dtype, write 4), pow (4 + 4), mean (read 4),
# x32 * rsqrt (4 + 4), .to(dtype) (read 4, write dtype), weight * (dtype + dtype): 28 fp32
# bytes plus 4 passes of the compute dtype, per element of h, twice per block.
RMSNORM_FP32_BYTES_PER_ELEMENT = 28
RMSNORM_DTYPE_PASSES = 4
# Rotary (apply_rotary) on q and k: neg of half (1), cat (2), x * cos (2), rotated * sin (2),
# sum (3) = 10 passes per element.
ROTARY_PASSES = 10
# The transpose-reshape copy of the attention output (2), each residual add (3, two per block),
# SwiGLU silu(gate) * up (silu 2 + mul 3 = 5 per element of the intermediate width), and the
# KV-cache write of the new tokens (read + write, 2 per element of K and of V).
ATTENTION_OUTPUT_COPY_PASSES = 2
RESIDUAL_ADD_PASSES = 3
SWIGLU_PASSES = 5
KV_CACHE_WRITE_PASSES = 2
# Backward of the element-wise ops: autograd reads the saved inputs and the output gradient
# and writes the input gradient, about twice the forward traffic (as for GEMMs: dgrad + wgrad).
ELEMENTWISE_BACKWARD_FACTOR = 2.0

# --- Host (CPU-side) cost of launching work on CUDA ------------------------------------------

# Host time of one eager PyTorch op issued from Python on CUDA (Python, dispatcher, allocator,
# cudaLaunchKernel). Derived from the gpt-fast eager baseline (PyTorch blog "Accelerating
# Generative AI with PyTorch II: GPT, Fast", 2023): LLaMA-7B decoding at batch 1 on A100 ran
# at 25.5 tok/s = 39 ms per token, ~5x its 8 ms weight-read time, i.e. host-bound at about
# 32 blocks x ~50 ops: ~24 us per op. The dispatch chain alone is 5-25 us per op. We take 20 us.
EAGER_OP_HOST_S = 20e-6
# Host time per kernel autograd launches in backward (C++ engine, no Python): dispatcher +
# cudaLaunchKernel, ~5 us (CUDA launch overhead order, NVIDIA CUDA C++ Best Practices).
AUTOGRAD_KERNEL_HOST_S = 5e-6
# Eager ops the runtime issues per forward of a part (counted in runtime/layers.py and
# runtime/model.py): block = 2 RMSNorm x 8 + q/k/v/o linears 4 + rotary 2 x 5 + KV-cache
# writes 2 + SDPA 1 (grouped-query attention through enable_gqa, no K/V repeat) + output
# copy 1 + SwiGLU 5 + residual adds 2 = 41; embedding lookup with its vocabulary mask 5; lm head final norm 8 + linear 1 +
# log-softmax gather ~8 = 17; value head norm 8 + linear 1 + squeeze 1 = 10.
EAGER_OPS_PER_PART = {"block": 41, "embedding": 5, "lm_head": 17, "value_head": 10}
# One RMSNorm (rms_norm: float, pow, mean, add eps, rsqrt, mul, to, weight mul); Qwen3's
# q/k norms add two per block.
RMSNORM_EAGER_OPS = 8
# A mixture-of-experts block's router and dispatch beside the block's count (whose 5 SwiGLU
# ops stand for the shared expert's, or without one for nothing), counted in runtime/moe.py
# route / routed_experts / moe_mlp: route's linear, fp32 softmax, top-k, renormalisation
# (sum, div) and cast (6); the sort of the copies by expert, token index, bincount, counts
# exchange, two row sums (6); the gather into the send buffer and the dispatch (2); the
# received rows' expert ids (arange, repeat, repeat_interleave), their sort and gather, split
# (6); the concatenation, inverse gather and combine (3); the weighting, cast, zeros and
# index_add (4); copy_to_tp on the input and the router weight (2) = 29.
MOE_ROUTER_EAGER_OPS = 29
# Host synchronisations of one MoE block's forward: the three .tolist() of row counts
# (runtime/moe.py routed_experts).
MOE_HOST_SYNCS_PER_BLOCK = 3
# Eager ops per local expert, each run also on zero rows (runtime/moe.py: every rank builds
# the same graph): the SwiGLU's gate, up, silu, product and down = 5.
MOE_EAGER_OPS_PER_EXPERT = 5
# Router logits in fp32: written by the cast, read and written by the softmax, read by the
# top-k: 4 passes of 4 bytes per expert and token.
MOE_ROUTER_FP32_PASSES = 4
MOE_ROUTER_BYTES = 4
# Copies of a routed row of h per token and chosen expert: the permutation into the send
# buffer (read + write 2), the gather of each expert's rows (2), the routing-weight multiply
# (2) and the scatter-add of the combine (read, read, write 3) = 9 passes.
MOE_COPY_PASSES_PER_ROUTED_ROW = 9
# Backward launches about two kernels per forward op (input and weight gradients).
BACKWARD_KERNELS_PER_FORWARD_OP = 2
# One host-device synchronisation (a .item()/bool() on a CUDA tensor, a copy to host): the
# round trip of cudaStreamSynchronize on a drained stream, ~10 us (order of a launch).
HOST_SYNC_S = 10e-6
# Eager ops of one decode step outside the parts (runtime/generate.py): goes_on's finished.all()
# (a sync on check steps, planner.domain.decode_policy), the key-valid update, attention_mask_4d and positions (~8), rotary cos/sin of the
# new positions (~8), choose_tokens' float/max/where (~5), record's where/isin/add (~6).
DECODE_STEP_HOST_OPS = 28
# Host syncs of one call: the outputs' copy to host; a train call adds one per optimizer step
# (the global grad norm read with float(), runtime/optimizer.py).
CALL_HOST_SYNCS = 1

# Fixed launch cost of one transformer block per pass on CPU (Python/gloo overheads dominate,
# runtime-notes order); the embedding and head cost a quarter of it. CUDA uses the host-op
# model above instead.
BLOCK_LAUNCH_OVERHEAD_S = {"cpu": 300e-6}
SMALL_PART_OVERHEAD_FRACTION = 0.25

# --- Memory traffic per token -------------------------------------------------------------

# Activation bytes a decoder block keeps for backward, per token, from the ops of
# runtime/layers.py (what autograd saves; costmodel/recompute.py adds them up). Measured with
# torch.autograd.graph.saved_tensors_hooks and runtime.memory_meter.LiveBytes on llama-tiny
# (fp32, 2 x 64 tokens): 80.16 h bytes per token per block kept with "none" (this sum gives
# 80.16; 84.16 before attention read K/V at kv width), 59.02 with "selective", 4.00 with
# "full" (measured per block: none - full 76.09 h, selective - full 55.02 h)
# (tests/runtime/test_runtime_recompute_modes.py).
# RMSNorm (rms_norm): x.float() (fp32, 4 bytes, saved by pow and by the multiply; in fp32 the
# input itself), rsqrt of the mean (4 bytes per normalised row: per token, or per token and
# head for Qwen3's q/k norms) and the normalised value cast to the compute dtype (saved by
# the weight multiply). A block norm's output is saved by the linears it feeds (q/k/v; gate
# and up), one compute-dtype copy; a q/k norm's output by nobody (rotary saves none).
RMSNORM_FP32_INPUT_BYTES = 4
RMSNORM_RSQRT_BYTES_PER_ROW = 4
RMSNORM_SAVED_DTYPE_COPIES = 1
# Rotary (apply_rotary): x * cos + rotate_half(x) * sin saves only cos and sin (they need no
# gradient; shared by every block), nothing per block. Attention (SDPA, CPU flash kernel,
# enable_gqa under grouped-query attention): saves q and its output at query width (the
# output projection saves the output as its input: a view, no copy) and k and v at the
# rank's kv width (measured with saved_tensors_hooks: no copies repeated to the q heads);
# the log-sum-exp, fp32 per query head; and the boolean attn_mask converted to an fp32
# additive mask [batch, 1, queries, keys] per call (4 bytes per key per token: measured).
SDPA_SAVED_Q_WIDTH_TENSORS = 2    # q, output
SDPA_SAVED_KV_WIDTH_TENSORS = 2   # k, v
SDPA_LSE_BYTES_PER_HEAD = 4
SDPA_MASK_BYTES_PER_KEY = 4
# One block's working set without autograd (inference, the prefill of generation), from the
# tensors runtime/layers.py holds at once: the residual stream and the norm's output (2 of
# h); at the attention core q and the core's output (q width), k and v (kv width) and the
# fp32 mask of
# SDPA_MASK_BYTES_PER_KEY per key; at the MLP's product silu(gate), up and the product
# (3 of intermediate / t). The larger of the two sub-layers, in the compute dtype.
NO_GRAD_RESIDUAL_TENSORS = 2
NO_GRAD_SWIGLU_TENSORS = 3

# SwiGLU (swiglu_mlp): the gate output (saved by silu), silu(gate) and the up output (saved by
# their product) and the product (saved by the down projection), each of intermediate / t.
SWIGLU_SAVED_TENSORS = 4

# Adam step traffic per parameter: read grad (2), master (4), m (4), v (4); write master,
# m, v (12) and the bf16 weight (2) = 28 bytes (mixed precision, Micikevicius et al. 2018).
ADAM_TRAFFIC_BYTES_PER_PARAM = 28.0

# --- Memory per device --------------------------------------------------------------------

# Mixed-precision Adam: fp32 master weights (4) + two fp32 moments (8) = 12 bytes per
# parameter beside the compute-dtype weight and gradient (ZeRO paper, Rajbhandari et al.
# 2020, section 3.1: 16 bytes per parameter in total with bf16 weights and grads). With an
# fp32 compute dtype there is no master copy: 8 bytes of moments.
OPTIMIZER_STATE_BYTES_PER_PARAM = {2: 12, 4: 8}

# The optimizer step's temporaries (runtime/optimizer.py Adam.step and FlatPart), per
# element of one chunk of this rank's part of the gradients (the step works chunk by
# chunk, planner.sharding.grad_buckets.OPTIMIZER_CHUNK_ELEMENTS): one fp32 tensor at a time,
# 4 bytes per element: the squares for the norm (an fp32 copy squared in place), then the
# clipped gradient (an fp32 copy scaled in place), freed before Adam's denominator
# sqrt(v_hat) + eps is made; under ZeRO-1 (dp > 1) also the reduced part of the gradients
# (GradBuckets.reduced_gradient: a torch.cat of this rank's pieces on gloo, the
# reduce-scatter output on NCCL), one compute-dtype element per element of the whole part
# (tests/runtime/test_runtime_memory_meter.py measures these against the price).
ADAM_STEP_FP32_TEMPORARIES = 1
ADAM_STEP_TEMPORARY_BYTES = 4

# What the full recomputation of a train call (Execution.recompute "full") reruns: the
# decoder blocks only (embedding and head keep their activations; runtime/model.py
# checkpoints each block). PyTorch's non-reentrant checkpoint
# stops recomputing a block once the tensors its backward needs are back (early stop,
# torch.utils.checkpoint docs), so the block's last op, the MLP's row-parallel all-reduce,
# is not rerun: one of the block's two forward TP all-reduces is.
RECOMPUTED_TP_ALLREDUCES_PER_BLOCK = 1

# Logits are materialised in fp32 for the log-softmax (runtime/vocab_parallel.py), and the
# backward of the log-softmax holds one more copy.
LOGITS_BYTES_PER_ELEMENT = 4
# A train call's logits at the head's backward, per element of the rank's vocabulary slice
# (runtime/vocab_parallel.py token_logprobs, with autograd): kept from the forward, the fp32
# logits (the head's output itself in fp32, else its .float() copy beside the compute-dtype
# output, which the caller holds), the shifted logits and their exp (saved by exp); in
# backward the gradients of exp and of the shifted logits, alive together. Measured on
# llama-tiny and llama-small (fp32, 2 x 64 and 2 x 256 tokens): 3.0 to 3.4 fp32 vocabulary
# copies per token kept, 2.0 more in backward.
TRAIN_LOGITS_FP32_COPIES = 5

# Per call, per device, the kernels' scratch space: cuBLAS / cuBLASLt workspaces (PyTorch
# sizes cuBLAS's by CUBLAS_WORKSPACE_CONFIG, default ":4096:8" on Hopper = 8 x 4 MiB, c10/cuda
# CublasHandlePool.cpp) and SDPA's; 64 MiB. The CUDA context, NCCL buffers and allocator
# fragmentation are the device's reserve (planner/domain/device_reserve.py), not per call.
# On CPU: gloo and the allocator's per-call scratch, 64 MiB.
WORKSPACE_BYTES = {"cuda": 64 * 1024**2, "cpu": 64 * 1024**2}
