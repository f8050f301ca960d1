"""Mixture-of-experts blocks (ModelSpec.moe): what expert parallelism adds to a call's time
and memory, as the runtime runs the block (runtime/moe.py).

The block on one rank of an ep group (ep consecutive dp ranks, planner.sharding.rank_groups):
the replicated router (h -> E) on every token, each token's k routed copies sent by an
all-to-all over the ep group to the ranks holding the chosen experts (rank e holds experts
[e E/ep, (e+1) E/ep)), those experts run there (tp-split like a dense MLP: column gate/up,
row down), a reverse all-to-all back, the weighted sum, then the block's usual tp all-reduce;
Qwen2-MoE adds a shared expert (roofline.block_gemm_shapes prices the router and shared
expert with the attention; this module the routed experts and the all-to-alls).

Time (per block and micro-batch, on the rank that sets the pace):
- routed experts (routed_experts_time_s): the rank's local experts that receive tokens,
  each three GEMMs over the rows routed to it, each by the roofline of
  costmodel.roofline.gemm_time_s, which reads the expert's weights once. A rank receives on
  average its own tokens x k rows (every rank routes T tokens, k copies each, spread over
  the group's E experts); the busiest rank receives EXPERT_LOAD_IMBALANCE times that when
  ep > 1 (the slowest expert rank sets the pace of the block).
- experts touched (touched_local_experts): with T tokens per rank, the ep group routes
  T x ep tokens. Assumption: uniform, independent routing, each token choosing k distinct
  experts of E uniformly, so a given expert is chosen by one token with probability k / E
  and by none of the group's tokens with probability (1 - k/E)^(T ep) (the occupancy
  problem, Feller, "An Introduction to Probability Theory", vol. 1, ch. II; by linearity of
  expectation over the rank's experts):
      expected distinct local experts = E/ep x (1 - (1 - k/E)^(T ep)).
  A decode step's weight reads thus grow with the batch towards all E/ep local experts,
  while the router and shared expert are read whatever the batch.
- all-to-all (all_to_all_s): each dispatch and each combine sends the rank's whole buffer of
  T x k x h x dtype bytes (all_to_all_buffer_bytes, its own rows included) over the ep
  group's link (comm.all_to_all_time_s: NVLink inside a node, the rails across nodes),
  times EXPERT_LOAD_IMBALANCE (the busiest rank receives more than the mean). Per block:
  forward 2 (dispatch, combine), backward 2 (their reverse all-to-alls), and 2 again in the
  recomputation forward when the mode reruns the MLP ("full"; "selective" reruns attention
  only); each dispatch of a forward pass is preceded by an all-to-all of the row counts
  (count_exchange_s, latency-bound). Every call of a MoE model lists them as phase
  "all_to_all"
  (costmodel/train_cost.py, costmodel/generate_cost.py), 0 at ep 1 (no exchange).

Memory: expert weights and gradients per ep shard (planner.sharding.param_shards
shard_elements with ep), Adam states of the experts divided over the expert-dp group under
ZeRO-1 (dp / ep ranks, expert_optimizer_shards); activations of the block
(mlp_kept_bytes_per_token, all_to_all_working_bytes_per_token).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from costmodel import comm
from costmodel import efficiency as eff
from costmodel.roofline import gemms_time_s, memory_time_s, part_tokens
from planner.domain.hardware import HardwareSpec
from planner.domain.layout import Execution
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.sharding.param_shards import model_params, shard_slice, slice_elements

# Busiest expert rank's routed rows over the mean when experts are split over ep > 1 ranks:
# 1.25, the expert capacity factor at which Switch Transformer trains (Fedus, Zoph & Shazeer
# 2022, JMLR 23, sec. 2.2 and Table 1: capacity factors 1.0 and 1.25, with its
# load-balancing loss, drop few tokens; 1.25 is the slack that holds the busiest expert of
# nearly every batch). GShard (Lepikhin et al. 2021, sec. 2.2) and Megatron-Core
# (moe_expert_capacity_factor) use the same knob; a rank holding E/ep experts averages over
# them, so its imbalance is at most its busiest expert's. Assumption: routers trained with
# a balancing loss (Mixtral, Qwen-MoE), no capacity limit (the runtime drops no token).
EXPERT_LOAD_IMBALANCE = 1.25

# All-to-alls per block of each pass (module docstring) and of each recomputation mode's
# rerun forward.
ALL_TO_ALLS_PER_BLOCK = {"forward": 2, "prefill": 2, "decode": 2, "backward": 2}
RECOMPUTED_ALL_TO_ALLS_PER_BLOCK = {"none": 0, "selective": 0, "full": 2}
# Count exchanges per block (count_exchange_s): one per dispatch in a forward pass (the
# backward reuses the counts).
COUNT_EXCHANGES_PER_BLOCK = {"forward": 1, "prefill": 1, "decode": 1, "backward": 0}
RECOMPUTED_COUNT_EXCHANGES_PER_BLOCK = {"none": 0, "selective": 0, "full": 1}
COUNT_BYTES = 8

# Router outputs a block keeps for backward per token: the fp32 softmax probabilities over
# the E experts (saved by the softmax) and, per chosen expert, its fp32 weight and int64 id.
ROUTER_PROB_BYTES_PER_EXPERT = 4
ROUTED_CHOICE_BYTES = 4 + 8


def load_imbalance(ep: int) -> float:
    """Busiest rank's routed rows over the mean: EXPERT_LOAD_IMBALANCE with ep > 1, 1 when
    a rank holds every expert."""
    return 1.0 if ep == 1 else EXPERT_LOAD_IMBALANCE


def touched_local_experts(spec: ModelSpec, ep: int, tokens_per_rank):
    """Expected local experts that receive a row when each of the ep group's ranks routes
    `tokens_per_rank` tokens (module docstring: uniform independent routing); vectorised."""
    moe = spec.moe
    routed = np.asarray(tokens_per_rank, dtype=float) * ep
    missed = (1.0 - moe.experts_per_token / moe.num_experts) ** routed
    return moe.num_experts / ep * (1.0 - missed)


def busiest_routed_rows(spec: ModelSpec, ep: int, tokens_per_rank):
    """Rows the busiest rank's experts run: its tokens x k x the imbalance, at most what the
    group's tokens can bring to its E/ep experts."""
    moe = spec.moe
    tokens = np.asarray(tokens_per_rank, dtype=float)
    cap = tokens * ep * min(moe.experts_per_token, moe.num_experts // ep)
    return np.minimum(tokens * moe.experts_per_token * load_imbalance(ep), cap)


def routed_expert_gemm_shapes(spec: ModelSpec, tp: int) -> list[tuple[float, float]]:
    """(N, K) of one routed expert's gate, up (column-parallel) and down (row-parallel)."""
    h, inter = spec.hidden_size, spec.moe.expert_intermediate_size / tp
    return [(inter, h), (inter, h), (h, inter)]


def routed_experts_time_s(spec: ModelSpec, hardware: HardwareSpec, op: str, tp: int, ep: int,
                          batch: float, length):
    """Seconds of one block's routed experts on the busiest rank for `op` ("forward",
    "prefill", "decode" or "backward") of `batch` sequences at `length`: the device time
    (routed_experts_device_s), on CUDA at least the host time of issuing it
    (routed_experts_host_s). 0 for a dense model."""
    if spec.moe is None:
        return np.asarray(length, dtype=float) * 0.0
    device = routed_experts_device_s(spec, hardware, op, tp, ep, batch, length)
    if hardware.kind != "cuda":
        return device
    return np.maximum(device, routed_experts_host_s(spec, op, ep))


def routed_experts_device_s(spec: ModelSpec, hardware: HardwareSpec, op: str, tp: int,
                            ep: int, batch: float, length):
    """Device seconds of one MoE block's routed experts on the busiest rank (module
    docstring): the touched experts' GEMMs over their rows (a GEMM of zero rows reads no
    weights, so untouched experts cost none), the SwiGLU over each routed row's I_e / tp and
    the copies of its h (efficiency.MOE_COPY_PASSES_PER_ROUTED_ROW)."""
    backward = op == "backward"
    tokens = part_tokens("block", "forward" if backward else op, batch, length)
    rows = busiest_routed_rows(spec, ep, tokens)
    touched = touched_local_experts(spec, ep, tokens)
    gemms = touched * gemms_time_s(routed_expert_gemm_shapes(spec, tp), rows / touched,
                                   backward, hardware)
    per_row = (eff.SWIGLU_PASSES * spec.moe.expert_intermediate_size / tp
               + eff.MOE_COPY_PASSES_PER_ROUTED_ROW * spec.hidden_size)
    factor = eff.ELEMENTWISE_BACKWARD_FACTOR if backward else 1.0
    return gemms + factor * memory_time_s(rows * per_row * hardware.compute_dtype_bytes,
                                          hardware)


def routed_experts_host_s(spec: ModelSpec, op: str, ep: int) -> float:
    """Host seconds on CUDA to issue one MoE block's routed experts: the loop over the
    rank's E/ep local experts, which the runtime runs also on zero rows
    (efficiency.MOE_EAGER_OPS_PER_EXPERT; backward: the autograd engine's kernels), and a
    forward's synchronisations for the row counts (efficiency.MOE_HOST_SYNCS_PER_BLOCK)."""
    local = spec.moe.num_experts // ep
    if op == "backward":
        return local * (eff.MOE_EAGER_OPS_PER_EXPERT * eff.BACKWARD_KERNELS_PER_FORWARD_OP
                        * eff.AUTOGRAD_KERNEL_HOST_S)
    return (local * eff.MOE_EAGER_OPS_PER_EXPERT * eff.EAGER_OP_HOST_S
            + eff.MOE_HOST_SYNCS_PER_BLOCK * eff.HOST_SYNC_S)


def routed_experts_optimizer_s(spec: ModelSpec, hardware: HardwareSpec, tp: int, ep: int,
                               shards: int) -> float:
    """Adam step of one block's local routed experts on one rank (E/ep experts, tp-split),
    divided over `shards` (expert_optimizer_shards): their traffic at the memory bandwidth,
    as roofline prices the rest of the block's."""
    if spec.moe is None:
        return 0.0
    params = spec.moe.num_experts // ep * spec.moe.expert_params(spec.hidden_size) / tp
    return float(memory_time_s(params * eff.ADAM_TRAFFIC_BYTES_PER_PARAM, hardware)) / shards


def all_to_all_buffer_bytes(spec: ModelSpec, tokens, dtype_bytes: int):
    """One dispatch's (or combine's) send buffer on a rank of `tokens` tokens: tokens x k x
    h x dtype, its own rows included."""
    return np.asarray(tokens, dtype=float) * spec.moe.experts_per_token * spec.hidden_size \
        * dtype_bytes


def all_to_all_s(spec: ModelSpec, ep: int, link: comm.Link, tokens, dtype_bytes: int):
    """One all-to-all of a block over the ep group (module docstring), times the
    imbalance; 0 at ep 1 or for a dense model."""
    if spec.moe is None or ep == 1:
        return np.asarray(tokens, dtype=float) * 0.0
    seconds = comm.all_to_all_time_s(all_to_all_buffer_bytes(spec, tokens, dtype_bytes), ep,
                                     link)
    return load_imbalance(ep) * seconds


def count_exchange_s(spec: ModelSpec, ep: int, link: comm.Link) -> float:
    """The all-to-all of row counts before each dispatch (runtime/moe.py: int64 counts per
    expert, E x 8 bytes per rank, not in the traffic ledger); 0 at ep 1."""
    if spec.moe is None or ep == 1:
        return 0.0
    return float(comm.all_to_all_time_s(spec.moe.num_experts * COUNT_BYTES, ep, link))


@lru_cache(maxsize=1024)
def expert_shard_elements(spec: ModelSpec, head: HeadKind, tp: int, pp: int, ep: int
                          ) -> np.ndarray:
    """Routed experts' parameter elements each (stage, tp rank) holds under ep: array
    [pp, tp] (read-only); zeros for a dense model. Part of
    param_shards.shard_elements(spec, head, tp, pp, ep)."""
    counts = np.zeros((pp, tp), dtype=np.int64)
    if spec.moe is not None:
        for param in model_params(spec, head, pp):
            if param.is_expert:
                counts[param.stage] += [slice_elements(shard_slice(spec, param, r, tp, 0, ep))
                                        for r in range(tp)]
    counts.setflags(write=False)
    return counts


def expert_optimizer_shards(execution: Execution) -> int:
    """Ranks the experts' Adam states are divided over: the expert-dp group (dp / ep) under
    ZeRO-1, else 1 (memory.optimizer_shards is the dense parameters' dp)."""
    ex = execution
    return ex.dp // ex.ep if ex.shard_optimizer_over_dp else 1


def mlp_kept_bytes_per_token(spec: ModelSpec, tp: int, ep: int, dtype_bytes: int) -> float:
    """What a MoE block's MLP sub-layer keeps for backward per token beyond its norm and the
    norm's output (recompute.mlp_bytes_per_token): the router's softmax and choices
    (ROUTER_PROB_BYTES_PER_EXPERT, ROUTED_CHOICE_BYTES), on the busiest expert rank its
    k x imbalance received rows (saved by the gate / up GEMMs) and their SwiGLU tensors
    (efficiency.SWIGLU_SAVED_TENSORS of I_e / tp), back home the k combined expert outputs
    (saved by the routing-weight multiply), and the shared expert's SwiGLU and output
    (saved by its sigmoid gate's multiply)."""
    moe, h = spec.moe, spec.hidden_size
    k, imbalance = moe.experts_per_token, load_imbalance(ep)
    router = moe.num_experts * ROUTER_PROB_BYTES_PER_EXPERT + k * ROUTED_CHOICE_BYTES
    received = k * imbalance * (h + eff.SWIGLU_SAVED_TENSORS
                                * moe.expert_intermediate_size / tp) * dtype_bytes
    combined = k * h * dtype_bytes
    shared = 0.0
    if moe.shared_expert_intermediate_size:
        shared = (eff.SWIGLU_SAVED_TENSORS * moe.shared_expert_intermediate_size / tp + h) \
            * dtype_bytes + ROUTER_PROB_BYTES_PER_EXPERT
    return router + received + combined + shared


def all_to_all_working_bytes_per_token(spec: ModelSpec, ep: int, dtype_bytes: int) -> float:
    """The all-to-all buffers of one block alive at once per token, beyond what autograd
    keeps: a dispatch's send buffer and the busiest rank's receive buffer (k x h each, the
    receive one x the imbalance); 0 without expert parallelism (no exchange) or a MoE."""
    if spec.moe is None or ep == 1:
        return 0.0
    return spec.moe.experts_per_token * spec.hidden_size * dtype_bytes * (
        1.0 + load_imbalance(ep))


def mlp_no_grad_bytes_per_token(spec: ModelSpec, tp: int, ep: int, dtype_bytes: int) -> float:
    """A MoE block's MLP working set per token without autograd (memory.block_working_bytes):
    the router's fp32 logits and probabilities, the all-to-all buffers
    (all_to_all_working_bytes_per_token), the received rows and, as an upper bound (every
    local expert's rows at once), their SwiGLU tensors (efficiency.NO_GRAD_SWIGLU_TENSORS),
    and the shared expert's."""
    moe, h = spec.moe, spec.hidden_size
    k, imbalance = moe.experts_per_token, load_imbalance(ep)
    router = 2 * moe.num_experts * eff.MOE_ROUTER_BYTES
    routed = k * imbalance * (h + eff.NO_GRAD_SWIGLU_TENSORS * moe.expert_intermediate_size
                              / tp) * dtype_bytes
    shared = eff.NO_GRAD_SWIGLU_TENSORS * moe.shared_expert_intermediate_size / tp * dtype_bytes
    return router + routed + shared + all_to_all_working_bytes_per_token(spec, ep, dtype_bytes)
