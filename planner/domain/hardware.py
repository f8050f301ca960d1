"""Hardware specs of one accelerator (or CPU process), read from profiles/hardware/*.yaml.

Keys carry their units (`memory_gib`, `peak_bf16_tflops`, `hbm_bandwidth_gb_per_s`); the
properties convert once to bytes, FLOP/s and seconds for use inside the code.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.domain.errors import InputError, validated
from planner.domain.paths import HARDWARE_DIR
from planner.domain.yamlio import load_yaml_mapping

GIB = 1024**3
GB = 1e9

# Upper bounds of the datasheet figures, each far above any device made (so a real spec
# always fits) and low enough to catch a unit slip or a stray digit before it turns into a
# plausible-looking estimate.
# The largest accelerator memory today is 288 GB (B300); a large CPU host has a few TiB.
MAX_DEVICE_MEMORY_GIB = 65_536.0
# Dense bf16 peaks are at most a few thousand TFLOP/s (B200: 2,250).
MAX_PEAK_TFLOPS = 100_000.0
# HBM3e reaches 8,000 GB/s; NVLink 5 900 GB/s per direction.
MAX_BANDWIDTH_GB_PER_S = 100_000.0
# One second: collective latencies are microseconds (NVLink) to a millisecond (gloo, TCP).
MAX_LATENCY_US = 1_000_000.0
# A DGX/HGX node has 8 compute-fabric NICs (one per GPU); 64 leaves room for NVL72-class
# nodes and catches a stray digit.
MAX_NICS_PER_NODE = 64
# A device name is a file stem in profiles/hardware/; anything else (a path such as
# ../../x or /etc/passwd) must not reach the file system.
DEVICE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")


class HardwareSpec(BaseModel):
    """Datasheet figures of one device and its default links."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    kind: Literal["cuda", "cpu"]
    memory_gib: float = Field(gt=0, le=MAX_DEVICE_MEMORY_GIB)
    peak_bf16_tflops: float = Field(gt=0, le=MAX_PEAK_TFLOPS,
                                    description="dense tensor-core bf16 peak")
    peak_fp32_tflops: float = Field(gt=0, le=MAX_PEAK_TFLOPS)
    max_achievable_matmul_tflops: float = Field(gt=0, le=MAX_PEAK_TFLOPS, description=(
        "the highest GEMM throughput measured on the device in its compute dtype (MAMF, "
        "best shape, no sparsity): the ceiling of the matmul efficiency curve"))
    hbm_bandwidth_gb_per_s: float = Field(gt=0, le=MAX_BANDWIDTH_GB_PER_S)
    compute_dtype: Literal["bf16", "fp32"]
    intra_node_bandwidth_gb_per_s: float = Field(gt=0, le=MAX_BANDWIDTH_GB_PER_S,
                                                 description="per direction, per device")
    intra_node_latency_us: float = Field(ge=0, le=MAX_LATENCY_US, description=(
        "one point-to-point message inside a node; on cpu also gloo's latency per ring step"))
    # The node's network: the compute-fabric NICs of one node of this device's board.
    # Rail-optimised affinity (DGX/HGX): GPU slot i uses NIC i * nics_per_node //
    # devices_per_node (planner.domain.cluster.nic_of_slot).
    nics_per_node: int = Field(ge=1, le=MAX_NICS_PER_NODE)
    nic_bandwidth_gb_per_s: float = Field(gt=0, le=MAX_BANDWIDTH_GB_PER_S,
                                          description="per NIC and direction")
    inter_node_latency_us: float = Field(ge=0, le=MAX_LATENCY_US, description=(
        "one point-to-point message between nodes; on cpu also gloo's latency per ring step"))
    # What NCCL's tuning model (costmodel/nccl_model.py) needs of a cuda device; a cpu device
    # runs gloo and has none of them.
    gpu_architecture: Optional[Literal["ampere", "hopper"]] = Field(default=None, description=(
        "the compute-capability family NCCL's tuning constants are indexed by"))
    nvlink_sharp: bool = Field(default=False, description=(
        "NVLink SHARP (NVLS): in-switch reductions of the 3rd-generation NVSwitch (Hopper)"))
    host_cpu_vendor: Optional[Literal["intel", "amd"]] = Field(default=None, description=(
        "the node's CPU: NCCL's LL bandwidth across nodes and network overhead depend on it"))
    source: str = Field(description="where the figures come from")

    @model_validator(mode="after")
    def _nccl_fields_match_kind(self) -> "HardwareSpec":
        nccl = {"gpu_architecture": self.gpu_architecture,
                "host_cpu_vendor": self.host_cpu_vendor}
        if self.kind == "cuda":
            missing = [k for k, v in nccl.items() if v is None]
            if missing:
                raise ValueError(f"{missing[0]}: required for a cuda device (NCCL's tuning "
                                 f"model reads it)")
            if self.nvlink_sharp and self.gpu_architecture != "hopper":
                raise ValueError("nvlink_sharp: NVLS needs a Hopper GPU on 3rd-generation "
                                 "NVSwitch; set it false")
        else:
            given = [k for k, v in {**nccl, "nvlink_sharp": self.nvlink_sharp or None}.items()
                     if v is not None]
            if given:
                raise ValueError(f"{given[0]}: a cpu device runs gloo, not NCCL; remove it")
        return self

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB

    @property
    def compute_dtype_bytes(self) -> int:
        return 2 if self.compute_dtype == "bf16" else 4

    @property
    def peak_flops(self) -> float:
        """Peak FLOP/s in the compute dtype."""
        tflops = self.peak_bf16_tflops if self.compute_dtype == "bf16" else self.peak_fp32_tflops
        return tflops * 1e12

    @property
    def max_achievable_matmul_flops(self) -> float:
        """Measured GEMM ceiling in FLOP/s (the compute dtype's; at most its peak)."""
        return min(self.max_achievable_matmul_tflops * 1e12, self.peak_flops)

    @property
    def memory_bandwidth_bytes_per_s(self) -> float:
        return self.hbm_bandwidth_gb_per_s * GB


def known_hardware() -> list[str]:
    return sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml"))


@lru_cache(maxsize=None)
def load_hardware_file(path: Path) -> HardwareSpec:
    data = load_yaml_mapping(path)
    return validated(HardwareSpec, data, path)


def hardware_by_name(name: str) -> HardwareSpec:
    """The spec in profiles/hardware/<name>.yaml; ValueError naming the valid ones.

    Only a plain name (DEVICE_NAME_PATTERN) is looked up, so a name cannot lead to a file
    outside profiles/hardware/.
    """
    if not DEVICE_NAME_PATTERN.fullmatch(name) or name not in known_hardware():
        raise ValueError(f"unknown device {name!r}; valid: {known_hardware()}")
    return load_hardware_file(HARDWARE_DIR / f"{name}.yaml")


__all__ = ["HardwareSpec", "hardware_by_name", "known_hardware", "InputError", "GIB", "GB"]
