"""Memory a device loses before a plan's first tensor: the reserve.

"Fits" must mean fits on the device: a plan may use a device's memory less this reserve
(and less the cluster's `memory_headroom_gib`, which the user sets). The parts:

- CUDA context: the driver's context, the loaded CUDA / cuBLAS / NCCL kernels. The first
  CUDA tensor of a PyTorch process takes 723 MiB on the device (measured and reported on
  discuss.pytorch.org, "What is the reason for pytorch's GPU memory floor?"); lazy module
  loading (CUDA >= 11.7) lowers it somewhat. We reserve 768 MiB.
- NCCL buffers: each communicator keeps, per channel and per ring peer (send and receive),
  one buffer per protocol: Simple 4 MiB (NCCL_BUFFSIZE default), LL128 4,915,200 bytes
  (120 elements x 640 threads x 8 steps x 8 bytes) and LL 512 KiB (8 lines x 512 threads x
  8 steps x 16 bytes) (NCCL src/include/device.h and the NCCL_BUFFSIZE documentation).
  Assumption: 16 channels (what NCCL opens on an NVSwitch H100 node for rings) and the three
  communicators a device joins in a 3D layout (its tp, dp and pp groups): about 0.86 GiB.
- Allocator fragmentation: PyTorch's caching allocator rounds blocks and keeps freed
  segments cached, so memory it reserves exceeds what tensors hold (PyTorch "CUDA semantics,
  memory management"; `expandable_segments` exists to reduce it). Assumption: 5% of what is
  left after the two above.

On CPU the process itself is the reserve: a Python process with torch and torch.distributed
imported holds 224 MiB resident (measured on the 2-core CI machine, /usr/bin/time -v python
-c "import torch, torch.distributed"); we reserve 256 MiB, and no fragmentation share (the
C allocator returns large blocks to the system).
"""

from __future__ import annotations

MIB = 1024**2

CUDA_CONTEXT_BYTES = 768 * MIB

NCCL_SIMPLE_BUFFER_BYTES = 4 * MIB
NCCL_LL128_BUFFER_BYTES = 120 * 640 * 8 * 8
NCCL_LL_BUFFER_BYTES = 8 * 512 * 8 * 16
NCCL_CHANNELS = 16
NCCL_RING_PEERS = 2
NCCL_COMMUNICATORS_PER_DEVICE = 3
NCCL_BUFFER_BYTES = (NCCL_SIMPLE_BUFFER_BYTES + NCCL_LL128_BUFFER_BYTES + NCCL_LL_BUFFER_BYTES) \
    * NCCL_CHANNELS * NCCL_RING_PEERS * NCCL_COMMUNICATORS_PER_DEVICE

FRAGMENTATION_FRACTION = 0.05

CPU_PROCESS_BYTES = 256 * MIB


def reserve_bytes(device_kind: str, memory_bytes: float) -> float:
    """Bytes of a device of `memory_bytes` that no plan can use (module docstring)."""
    if device_kind == "cpu":
        return float(CPU_PROCESS_BYTES)
    fixed = CUDA_CONTEXT_BYTES + NCCL_BUFFER_BYTES
    return fixed + FRAGMENTATION_FRACTION * max(memory_bytes - fixed, 0.0)
