"""FSDP / ZeRO-3 (Execution.shard_parameters_over_dp): the formulas of its communication, its
working memory, and of the weight sync out of it, as the frameworks we import run them.

Priced for plans imported from framework configs (verl's FSDP backend, OpenRLHF's DeepSpeed
ZeRO-3); our runtime does not run it (planner/cli/run_checks.py refuses such a plan) and the
search does not offer it. pp is 1 (planner.domain.layout.layout_problem).

Units of sharding (FSDP's wrapping): every decoder block is one unit (verl's default
auto-wrap policy wraps each transformer layer class, verl/utils/fsdp_utils.py
get_fsdp_wrap_policy; DeepSpeed ZeRO-3 fetches parameters per sub-module, the same
granularity for a block), and the rest (embedding, final norm, head) is the root unit.
`unit_elements` counts one block's and the root's elements on a tp rank.

Time of one micro-batch (FULL_SHARD = ZeRO-3, reshard_after_forward; PyTorch FSDP docs,
torch.distributed.fsdp.FullyShardedDataParallel and ShardingStrategy.FULL_SHARD):
- forward: each unit's parameters are all-gathered over the dp group, in the compute dtype
  (FSDP MixedPrecision param_dtype: the shard is cast before the all-gather; verl's default
  mixed_precision param_dtype bf16, verl/workers/fsdp_workers.py; DeepSpeed bf16 keeps bf16
  partitions), before the unit runs, and freed after it, except the root's, which FSDP keeps
  until the end of backward (torch/distributed/fsdp/_runtime_utils.py _post_forward_reshard:
  the root is not resharded after forward). The next block's gather runs beside the current
  block's compute (FSDP issues it on its own stream as the CPU runs ahead; forward_prefetch
  only matters when the CPU is the bottleneck, the docs say), so the chain of units
      root gather, (embedding, G_b), (block, G_b) x (L - 1), (block, -), (head, -)
  takes  start + sum_i max(compute_i, comm_i) + end  (`chain_exposed_s` returns that minus the
  compute), where G_b is one block's gather.
- backward (BackwardPrefetch.BACKWARD_PRE, FSDP's default and verl's): before a unit's
  gradient computation FSDP issues the gather of the next unit in backward order, and after
  it the reduce-scatter of the unit's gradient; both run on one NCCL communicator in issue
  order. Blocks are gathered again (resharded after forward), the root is not. The chain
      (head, G_b), (block L, G_b), (block, G_b + RS_b) x (L - 2), (block 1, RS_b),
      (embedding, RS_b), end RS_root
  with RS the reduce-scatter of a unit's gradient in GRADIENT_REDUCE_BYTES per element.
  Backward compute includes what the recomputation mode reruns (it runs inside the block's
  backward, while the block is gathered).
- With compute made negligible the chains sum every collective: forward G_root + L G_b,
  backward L (G_b + RS_b) + RS_root. On CPU (gloo) nothing overlaps compute
  (train_cost.overlaps_backward says why), so every collective is exposed.
- Every micro-batch gathers and reduce-scatters (FSDP without no_sync, as verl's
  dp_actor.update_policy runs its micro-batches; DeepSpeed ZeRO-3 reduces at every
  micro-step). An inference call (verl's ref and old-logprob forward) runs the forward chain
  only; its root, never resharded without a backward, is gathered once per call.

Memory of one rank (Rajbhandari et al. 2020, ZeRO, section 5.3, Pos+g+p: (2 + 2 + K) Psi /
N_d): parameters, gradients and optimizer states divided by dp (costmodel/memory.py), plus
the working set: `gathered_parameter_bytes` (the root's full parameters through forward and
backward, and two blocks, the running one and the prefetched next, in the compute dtype) and,
in train calls, `unsharded_gradient_bytes` (the root's full gradient, kept until its
reduce-scatter at the end of backward, and one block's, in the compute dtype, plus the copy
in the reduce dtype FSDP makes of the one being reduce-scattered: _runtime_utils.py
_post_backward_hook casts flat_param.grad to the reduce dtype before _reduce_grad). verl
keeps the actor in fp32 (4 + 4 + 8 bytes) where DeepSpeed keeps bf16 partitions and fp32
master weights (2 + 2 + 12): the same 16 bytes per parameter, split as memory.py splits it.

Weight sync out of a sharded source (costmodel/realloc_cost.py), per tensor of
planner.sharding.param_shards.model_params (9 per LLaMA block, 12 with q/k/v biases, plus
the embedding, final norm and head), one after another:
- the tensor's full value is all-gathered over the source's dp group, in SYNC_PARAMETER_BYTES
  per element (verl: FSDPVLLMShardingManager.__enter__ / update_params,
  verl/workers/sharding_manager/fsdp_vllm.py: module.state_dict() as DTensors, then
  param.full_tensor() per tensor, fed to vLLM's model.load_weights; OpenRLHF:
  openrlhf/trainer/ray/ppo_actor.py broadcast_to_vllm, deepspeed.zero.GatheredParameters
  per parameter);
- a destination device of the source mesh takes its tp slice from its gathered copy (vLLM's
  weight loader narrows and copies it: read SYNC_PARAMETER_BYTES, write the compute dtype
  per element at HBM bandwidth); a destination outside it receives the full tensor by a
  broadcast from the source's first rank over one group (OpenRLHF: torch.distributed.
  broadcast(param.data, 0, group=model_update_group), the group of the trainer's rank 0 and
  every vLLM rank), then copies its slice the same way;
- a fixed host latency per tensor: SYNC_EAGER_OPS_PER_TENSOR eager ops, and where a
  broadcast runs, the Ray actor call OpenRLHF waits for per parameter (ray.get(refs) after
  each broadcast).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from costmodel import comm
from costmodel import efficiency as eff
from costmodel.stage_timer import StageTimer
from planner.domain.cluster import ClusterSpec
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.sharding.param_shards import model_params, shard_slice, slice_elements

# Bytes per element of a gradient reduce-scatter: fp32, verl's FSDP default
# (mixed_precision reduce_dtype fp32, verl/workers/fsdp_workers.py _build_model_optimizer).
# DeepSpeed ZeRO-3 under bf16 reduces in bf16 unless data_types.grad_accum_dtype says fp32
# (OpenRLHF's get_train_ds_config leaves it None): an imported OpenRLHF config would need a
# field of its own to be priced at 2.
GRADIENT_REDUCE_BYTES = 4
# Bytes per element the weight sync gathers: the dtype FSDP holds the sharded parameters in.
# verl loads the actor in fp32 (fsdp_workers.py: torch_dtype float32 for the actor when
# fsdp_config.model_dtype is unset), so its sharded state dict gathers fp32; DeepSpeed's bf16
# partitions would gather 2 (same caveat as above).
SYNC_PARAMETER_BYTES = 4
# Eager ops the sync issues per tensor on the host (verl fsdp_vllm.py update_params):
# param.to(device), the DTensor's full_tensor() (its all-gather and the copy out of the
# gather buffer), and vLLM's weight loader's narrow and copy_: 5, at EAGER_OP_HOST_S each.
SYNC_EAGER_OPS_PER_TENSOR = 5
# One synchronous Ray actor call: Ray's release microbenchmark, 1_1_actor_calls_sync =
# 2011.9 calls/s (ray-project/ray release/perf_metrics/microbenchmark.json).
RAY_ACTOR_CALL_S = 1.0 / 2011.9
# Blocks whose full parameters are in flight at once: the running one and the next one FSDP
# prefetches (FSDP's limit_all_gathers rate limiter allows two in flight; verl keeps it on).
GATHERED_BLOCKS_IN_FLIGHT = 2


@dataclass(frozen=True)
class Units:
    """Elements of one decoder block and of the root unit (embedding, final norm, head) on the
    busiest tp rank."""

    block: int
    root: int


@lru_cache(maxsize=256)
def unit_elements(spec: ModelSpec, head: HeadKind, tp: int) -> Units:
    """One block's and the root's elements on a tp rank (module docstring), the largest over
    the tp ranks (kv heads replicated above their count make the ranks equal anyway)."""
    block = np.zeros(tp, dtype=np.int64)
    root = np.zeros(tp, dtype=np.int64)
    for param in model_params(spec, head, 1):
        first_block = param.name.startswith("model.layers.0.")
        if not first_block and param.name.startswith("model.layers."):
            continue
        target = block if first_block else root
        for rank in range(tp):
            target[rank] += slice_elements(shard_slice(spec, param, rank, tp))
    return Units(block=int(block.max()), root=int(root.max()))


def chain_exposed_s(compute_s: list[float], comm_s: list[float], start_s: float,
                    end_s: float) -> float:
    """Seconds a chain of units runs past its compute when unit i's compute runs beside the
    collectives issued for it (`comm_s[i]`): start + sum max(compute, comm) + end - compute."""
    running = sum(max(c, k) for c, k in zip(compute_s, comm_s, strict=True))
    return start_s + running + end_s - sum(compute_s)


@dataclass(frozen=True)
class UnitComm:
    """Collective seconds of one unit over the dp group: the all-gather of its parameters
    (compute dtype) and the reduce-scatter of its gradient (GRADIENT_REDUCE_BYTES)."""

    gather_block_s: float
    gather_root_s: float
    reduce_block_s: float
    reduce_root_s: float


def unit_comm(st: StageTimer) -> UnitComm:
    ex, units = st.ex, unit_elements(st.role.spec, st.role.head, st.ex.tp)
    link = st.knobs.link(st.geo.dp_link[0])
    dtype = st.timers[0][0].hardware.compute_dtype_bytes

    def gather(elements: int) -> float:
        return float(comm.allgather_time_s(elements * float(dtype), ex.dp, link))

    def reduce(elements: int) -> float:
        return float(comm.reduce_scatter_time_s(elements * float(GRADIENT_REDUCE_BYTES),
                                                ex.dp, link))

    return UnitComm(gather(units.block), gather(units.root), reduce(units.block),
                    reduce(units.root))


def _part_s(st: StageTimer, op: str, part: str, b: int, length: int) -> float:
    """Compute of one part on the slowest device of the (single) stage, as StageTimer
    prices it, its calibration factor included."""
    worst = max(float(timer.time_s(op, part, st.ex.tp, b, length)) for timer in st.timers[0])
    return worst * st.knobs.compute_scale


def _block_s(st: StageTimer, op: str, b: int, length: int) -> float:
    """One block's compute and its two TP all-reduces (StageTimer.stage_s per block)."""
    dtype = st.timers[0][0].hardware.compute_dtype_bytes
    act_bytes = b * float(length) * st.role.spec.hidden_size * dtype
    return _part_s(st, op, "block", b, length) + float(st.tp_allreduces_s(0, 2, act_bytes))


def _overlaps_compute(st: StageTimer) -> bool:
    """NCCL kernels run beside compute on CUDA; gloo's do not on CPU (train_cost)."""
    return all(timer.hardware.kind == "cuda" for timer in st.timers[0])


def forward_exposed_s(st: StageTimer, b: int, length: int, comms: UnitComm,
                      gather_root: bool) -> float:
    """Exposed collectives of one micro-batch's forward (module docstring)."""
    layers = st.geo.stage_layers[0]
    root_s = comms.gather_root_s if gather_root else 0.0
    if not _overlaps_compute(st):
        return root_s + layers * comms.gather_block_s
    block = _block_s(st, "forward", b, length)
    compute = [_part_s(st, "forward", "embedding", b, length)] + [block] * layers \
        + [_part_s(st, "forward", st.head_part, b, length)]
    comm_s = [comms.gather_block_s] * layers + [0.0, 0.0]
    return chain_exposed_s(compute, comm_s, root_s, 0.0)


def backward_exposed_s(st: StageTimer, b: int, length: int, comms: UnitComm) -> float:
    """Exposed collectives of one micro-batch's backward (module docstring); a block's
    backward includes what the recomputation mode reruns."""
    layers = st.geo.stage_layers[0]
    g, r = comms.gather_block_s, comms.reduce_block_s
    if not _overlaps_compute(st):
        return layers * (g + r) + comms.reduce_root_s
    rerun = float(st.recompute_s(0, b, length)) / layers
    block = _block_s(st, "backward", b, length) + rerun
    # backward order: head, blocks L .. 1, embedding; block j (0 = L) prefetches the next
    # block's gather unless it is block 1, and follows the previous block's reduce-scatter
    block_comm = [(g if j < layers - 1 else 0.0) + (r if j > 0 else 0.0)
                  for j in range(layers)]
    compute = [_part_s(st, "backward", st.head_part, b, length)] + [block] * layers \
        + [_part_s(st, "backward", "embedding", b, length)]
    return chain_exposed_s(compute, [g] + block_comm + [r], 0.0, comms.reduce_root_s)


def train_exposed_s(st: StageTimer, b: int, length: int) -> tuple[float, float]:
    """(forward, backward) exposed collective seconds of one train micro-batch."""
    comms = unit_comm(st)
    return (forward_exposed_s(st, b, length, comms, gather_root=True),
            backward_exposed_s(st, b, length, comms))


def inference_exposed_s(st: StageTimer, b: int, length: int, micro_batches: int) -> float:
    """Exposed collective seconds of an inference call's forwards: the root gathered once,
    every block once per micro-batch (module docstring)."""
    comms = unit_comm(st)
    first = forward_exposed_s(st, b, length, comms, gather_root=True)
    rest = forward_exposed_s(st, b, length, comms, gather_root=False)
    return first + (micro_batches - 1) * rest


def gathered_parameter_bytes(spec: ModelSpec, head: HeadKind, tp: int,
                             dtype_bytes: int) -> float:
    """Full parameters in flight on a rank: the root's and GATHERED_BLOCKS_IN_FLIGHT blocks',
    in the compute dtype (one block when the model has one)."""
    units = unit_elements(spec, head, tp)
    blocks = min(GATHERED_BLOCKS_IN_FLIGHT, spec.num_layers)
    return float((units.root + blocks * units.block) * dtype_bytes)


def unsharded_gradient_bytes(spec: ModelSpec, head: HeadKind, tp: int,
                             dtype_bytes: int) -> float:
    """Full gradients on a rank at the peak of backward: the root's and one block's in the
    compute dtype, plus the reduce-dtype copy of the larger being reduce-scattered."""
    units = unit_elements(spec, head, tp)
    kept = (units.root + units.block) * dtype_bytes
    return float(kept + max(units.root, units.block) * GRADIENT_REDUCE_BYTES)


@dataclass(frozen=True)
class TensorSync:
    """Per tensor of the model, in HF order: full elements, the elements of the source's tp
    shard (what its dp group gathers) and of the largest destination tp slice."""

    full_elements: np.ndarray
    source_elements: np.ndarray
    destination_elements: np.ndarray


@lru_cache(maxsize=256)
def tensor_sync(spec: ModelSpec, head: HeadKind, src_tp: int, dst_tp: int) -> TensorSync:
    params = model_params(spec, head, 1)

    def largest(tp: int) -> np.ndarray:
        return np.array([max(slice_elements(shard_slice(spec, p, r, tp)) for r in range(tp))
                         for p in params], dtype=float)

    return TensorSync(np.array([p.num_elements for p in params], dtype=float),
                      largest(src_tp), largest(dst_tp))


def broadcast_time_s(message_bytes, num_devices: int, link: comm.Link):
    """A broadcast from one rank to num_devices - 1 others as NCCL runs it, a pipelined ring
    (chain): (n - 1) hops of latency and the message once over the slowest hop (NCCL's
    nccl-tests doc/PERFORMANCE.md: broadcast bus bandwidth = algorithm bandwidth)."""
    return (num_devices - 1) * link.alpha_s + np.asarray(message_bytes, dtype=float) \
        / link.bandwidth_bytes_per_s


def slice_copy_time_s(elements, dtype_bytes: int, devices, cluster: ClusterSpec):
    """The weight loader's copy of `elements` into a destination shard (read the synced
    dtype, write the compute dtype) on the slowest HBM among `devices`."""
    bandwidth = min(cluster.hardware_of(d).memory_bandwidth_bytes_per_s for d in devices)
    per_element = SYNC_PARAMETER_BYTES + dtype_bytes
    return np.asarray(elements, dtype=float) * per_element \
        / (bandwidth * eff.MEMORY_BANDWIDTH_EFFICIENCY)


def sync_host_latency_s(broadcasts: bool) -> float:
    """Host seconds per tensor of the sync (module docstring)."""
    return SYNC_EAGER_OPS_PER_TENSOR * eff.EAGER_OP_HOST_S + \
        (RAY_ACTOR_CALL_S if broadcasts else 0.0)
