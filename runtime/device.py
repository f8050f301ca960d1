"""Device, dtype and backend of a runtime process, as the plan's hardware says.

A plan's cluster names each node's hardware (profiles/hardware/*.yaml) with its `kind`
(cuda or cpu) and `compute_dtype` (bf16 or fp32): the dtype of weights and activations the
cost model priced. The runtime runs exactly that, so what we price is what we run: cuda ->
NCCL on GPU `local_rank`, cpu -> gloo, whatever else the machine has (a cpu plan runs on
CPU even where CUDA exists). The optimizer keeps fp32 master weights either way
(runtime.optimizer).

bf16 on CPU is refused although torch computes it: our CPU hardware spec, profile tables
and calibration are fp32 measurements (profiles/hardware/cpu.yaml, `plan profile --device
cpu`), torch emulates bf16 matmuls on CPUs without native bf16 units (several times slower
than fp32), and the executor tests compare layouts exactly in fp32. A cpu plan with bf16
would run at a speed no estimate describes.

Cache-less passes (train, inference: runtime/model.py forward_sequences) run attention
right-aligned on cuda (`right_aligned_attention`): each row's real tokens are moved to the
first slots, so SDPA runs `is_causal=True` without a mask tensor, which keeps it eligible for
the flash kernels (PyTorch's SDPA dispatch rules out flash attention for any attn_mask,
aten/src/ATen/native/transformers/cuda/sdp_utils.cpp check_for_attn_mask) and lets them skip
the key blocks above the diagonal. The cost model prices the same rule
(costmodel/roofline.py causal_attention: hardware.kind == "cuda"). On cpu the masked path
stays, so CPU results are bit-unchanged; the tests switch the path on there with
`dataclasses.replace(config, right_aligned_attention=True)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from planner.domain.cluster import ClusterSpec

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
RUNNABLE_DTYPES = {"cuda": ("bf16", "fp32"), "cpu": ("fp32",)}   # module docstring: why


# Which device kinds run cache-less attention right-aligned (module docstring); one truth
# with costmodel/roofline.py causal_attention (tests/runtime/test_runtime_causal_path.py).
RIGHT_ALIGNED_ATTENTION = {"cuda": True, "cpu": False}


@dataclass(frozen=True)
class DeviceConfig:
    """device, dtype and backend of a rank; right_aligned_attention: whether cache-less
    passes shift each row's real tokens to the first slots and run causal SDPA without a
    mask (module docstring, runtime/model.py forward_sequences)."""

    device: torch.device
    dtype: torch.dtype
    backend: str
    right_aligned_attention: bool

    def clock_s(self) -> float:
        """Wall-clock seconds once the device has done the work queued so far.

        CUDA kernels and NCCL collectives run asynchronously to the host, so the host clock
        alone would time their launches: on CUDA the stream is synchronised first (a step's
        start and end then bracket its device work, as torch.cuda.Event timing would, and
        the trace's ranks stay on one clock for merging). On CPU the work is done when the
        call returns. The cost of the synchronisation (a few microseconds with the queue
        empty) is what a step boundary costs a real run too.
        """
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.time()


def device_config(kind: str, compute_dtype: str, local_rank: int = 0) -> DeviceConfig:
    """GPU `local_rank` with NCCL for cuda, the CPU with gloo for cpu, in `compute_dtype`,
    with cache-less attention right-aligned on cuda only (RIGHT_ALIGNED_ATTENTION).

    Assumes the pair passed `cluster_device_problem` (the launchers check before starting).
    """
    device = torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")
    return DeviceConfig(device, TORCH_DTYPES[compute_dtype], BACKENDS[kind],
                        RIGHT_ALIGNED_ATTENTION[kind])


def rank_device_config(cluster: ClusterSpec, rank: int, local_rank: int) -> DeviceConfig:
    """The DeviceConfig of global `rank` (its node's hardware) on local device `local_rank`."""
    hardware = cluster.hardware_of(rank)
    return device_config(hardware.kind, hardware.compute_dtype, local_rank)


def cluster_backend(cluster: ClusterSpec) -> str:
    """torch.distributed backend of a run of the cluster (one kind: cluster_device_problem)."""
    return BACKENDS[cluster.node_hardware[0].kind]


def cluster_device_problem(cluster: ClusterSpec, ranks_here: int) -> str | None:
    """Why this machine cannot run `ranks_here` ranks of the cluster's devices, or None.

    One run uses one backend and moves parameters between every pair of devices, so every
    node must have the same kind and compute dtype. cuda needs a GPU per rank here.
    """
    kinds = sorted({(h.kind, h.compute_dtype) for h in cluster.node_hardware})
    if len(kinds) > 1:
        found = ", ".join(f"{kind} {dtype}" for kind, dtype in kinds)
        return (f"the nodes mix device kinds or compute dtypes ({found}); the runtime runs "
                f"one kind and dtype per run")
    kind, dtype = kinds[0]
    names = ", ".join(sorted({h.name for h in cluster.node_hardware}))
    if dtype not in RUNNABLE_DTYPES[kind]:
        return (f"hardware {names}: compute_dtype {dtype} on {kind} is not run (valid on "
                f"{kind}: {', '.join(RUNNABLE_DTYPES[kind])}; see runtime/device.py)")
    if kind == "cuda":
        return _cuda_problem(names, dtype, ranks_here)
    return None


def _cuda_problem(names: str, dtype: str, ranks_here: int) -> str | None:
    if not torch.cuda.is_available():
        return (f"the plan runs on cuda devices ({names}), but torch sees no CUDA GPU on "
                f"this machine (torch.cuda.is_available() is False); run it where the "
                f"plan's GPUs are, or plan for a cpu cluster (e.g. --cluster cpu4)")
    count = torch.cuda.device_count()
    if count < ranks_here:
        return (f"the plan runs {ranks_here} ranks on this machine, one GPU each, and it has "
                f"{count} GPU(s)")
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        return f"compute_dtype bf16: GPU 0 ({torch.cuda.get_device_name(0)}) has no bf16"
    return None


def local_device_memory_bytes(cluster: ClusterSpec, ranks_here: int) -> float | None:
    """The smallest memory of the GPUs the `ranks_here` local ranks use (GPU 0 .. n-1), or
    None on CPU, where the hardware spec's memory_gib is already the per-process share of
    the machine (profiles/hardware/cpu.yaml)."""
    if cluster.node_hardware[0].kind != "cuda":
        return None
    return float(min(torch.cuda.get_device_properties(i).total_memory
                     for i in range(ranks_here)))


CPU_FP32 = device_config("cpu", "fp32")
