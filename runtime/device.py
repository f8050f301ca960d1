"""Device, dtype and backend of a runtime process.

CPU runs gloo in fp32 (exact comparisons between layouts); CUDA runs NCCL with bf16 weights
and activations (the optimizer keeps fp32 master weights, see runtime.optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceConfig:
    device: torch.device
    dtype: torch.dtype
    backend: str


def default_device_config(local_rank: int) -> DeviceConfig:
    """CUDA device `local_rank` with NCCL and bf16 when CUDA is available, else CPU/gloo/fp32."""
    if torch.cuda.is_available():
        return DeviceConfig(torch.device("cuda", local_rank), torch.bfloat16, "nccl")
    return DeviceConfig(torch.device("cpu"), torch.float32, "gloo")


CPU_FP32 = DeviceConfig(torch.device("cpu"), torch.float32, "gloo")
