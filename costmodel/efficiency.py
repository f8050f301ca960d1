"""Named constants of the analytic cost model, each with its assumption and source.

Change a figure here, never inline: every formula in costmodel/ reads them from this module.
Efficiencies and formula constants only: the run policy of a train call (ZeRO-1 over dp,
activation recomputation) is a field of its Execution (planner/domain/layout.py).
"""

from __future__ import annotations

# --- Roofline efficiencies -------------------------------------------------------------

# Fraction of dense peak a large bf16 GEMM reaches end to end in a transformer block
# (including softmax, norms, rotary). Megatron-LM reaches 52% of A100 peak on GPT-3-size
# models (Narayanan et al., SC'21, table 1); H100 MFU reports for LLaMA-7B training sit at
# 40-55% (torchtitan / NVIDIA NeMo performance tables). We take 0.55 for the compute part.
MATMUL_EFFICIENCY_MAX = 0.55

# Rows (tokens) of the GEMM at which efficiency is half its maximum: efficiency(tokens) =
# MAX * tokens / (tokens + HALF). Assumption from tile and wave quantisation (NVIDIA "Matrix
# Multiplication Background" user guide): skinny GEMMs of a few dozen rows fill few tiles.
MATMUL_HALF_EFFICIENCY_TOKENS = 32.0

# Fraction of datasheet HBM bandwidth a streaming kernel reaches: 80-90% for STREAM-like
# copies on A100/H100 (NVIDIA "CUDA C++ Best Practices", BabelStream results). We take 0.8.
MEMORY_BANDWIDTH_EFFICIENCY = 0.8

# Fixed launch cost of one transformer block per pass (about 8 fused kernels x 5 us on CUDA
# without CUDA graphs, PyTorch profiler order of magnitude); the embedding and head cost
# a quarter of it. On CPU the Python/gloo overheads dominate (runtime-notes order).
BLOCK_LAUNCH_OVERHEAD_S = {"cuda": 40e-6, "cpu": 300e-6}
SMALL_PART_OVERHEAD_FRACTION = 0.25

# --- Memory traffic per token -------------------------------------------------------------

# Activation bytes of one block per token in 16-bit with tensor parallelism t and flash
# attention (no s^2 term): h * (10 + 24 / t) (Korthikanti et al., "Reducing Activation
# Recomputation in Large Transformer Models", 2022, eq. 2 without the 5as/h term).
ACTIVATION_BYTES_PER_TOKEN_H_REPLICATED = 10.0
ACTIVATION_BYTES_PER_TOKEN_H_SHARDED = 24.0

# Adam step traffic per parameter: read grad (2), master (4), m (4), v (4); write master,
# m, v (12) and the bf16 weight (2) = 28 bytes (mixed precision, Micikevicius et al. 2018).
ADAM_TRAFFIC_BYTES_PER_PARAM = 28.0

# --- Memory per device --------------------------------------------------------------------

# Mixed-precision Adam: fp32 master weights (4) + two fp32 moments (8) = 12 bytes per
# parameter beside the compute-dtype weight and gradient (ZeRO paper, Rajbhandari et al.
# 2020, section 3.1: 16 bytes per parameter in total with bf16 weights and grads). With an
# fp32 compute dtype there is no master copy: 8 bytes of moments.
OPTIMIZER_STATE_BYTES_PER_PARAM = {2: 12, 4: 8}

# What the recomputation of a train call (Execution.recompute_activations) reruns: the
# decoder blocks only (embedding and head keep their activations; runtime/model.py
# checkpoints each block). PyTorch's non-reentrant checkpoint
# stops recomputing a block once the tensors its backward needs are back (early stop,
# torch.utils.checkpoint docs), so the block's last op, the MLP's row-parallel all-reduce,
# is not rerun: one of the block's two forward TP all-reduces is.
RECOMPUTED_TP_ALLREDUCES_PER_BLOCK = 1

# Logits are materialised in fp32 for the log-softmax (runtime/vocab_parallel.py), and the
# backward of the log-softmax holds one more copy.
LOGITS_BYTES_PER_ELEMENT = 4

# Per call, per device: cuBLAS workspace, NCCL buffers and allocator slack. Assumption:
# 1 GiB on CUDA (NCCL alone reserves a few hundred MiB per communicator set).
WORKSPACE_BYTES = {"cuda": 1 * 1024**3, "cpu": 64 * 1024**2}
