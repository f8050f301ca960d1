"""Hardware specs of one accelerator (or CPU process), read from profiles/hardware/*.yaml.

Keys carry their units (`memory_gib`, `peak_bf16_tflops`, `hbm_bandwidth_gb_per_s`); the
properties convert once to bytes, FLOP/s and seconds for use inside the code.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
    hbm_bandwidth_gb_per_s: float = Field(gt=0, le=MAX_BANDWIDTH_GB_PER_S)
    compute_dtype: Literal["bf16", "fp32"]
    intra_node_bandwidth_gb_per_s: float = Field(gt=0, le=MAX_BANDWIDTH_GB_PER_S,
                                                 description="per direction, per device")
    intra_node_latency_us: float = Field(ge=0, le=MAX_LATENCY_US)
    inter_node_bandwidth_gb_per_s: float = Field(gt=0, le=MAX_BANDWIDTH_GB_PER_S,
                                                 description="per device NIC")
    inter_node_latency_us: float = Field(ge=0, le=MAX_LATENCY_US)
    source: str = Field(description="where the figures come from")

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
