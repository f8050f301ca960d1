"""The processors of the machine at hand, read from the operating system (no torch import
here, so `plan estimate` and `plan search` stay torch-free; planner/domain/processor.py
holds the record).

CPU: the model name from /proc/cpuinfo (its first `model name` line; x86 and most Linux
hosts), else platform.processor(), else platform.machine(); the x86 family, model and
stepping from the same block's `cpu family`, `model` and `stepping` lines (absent elsewhere);
the logical core count from os.cpu_count(); the torch version from the installed
distribution's metadata.
GPU: the NVIDIA driver's /proc/driver/nvidia/gpus/<bus>/information (`Model:` line, the
name torch.cuda.get_device_name reports) and /proc/driver/nvidia/version (`Kernel Module
<version>`). A machine without that directory has no GPU to compare with.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path

from planner.domain.processor import Processor

# Each gloo device process computes on one thread: runtime/launch.py and
# runtime/executor/torchrun.py call torch.set_num_threads(1), and `plan profile` times one
# thread (runtime/profiling/profiler.py CPU_THREADS) to price one such process.
GLOO_PROCESS_THREADS = 1
CPUINFO = Path("/proc/cpuinfo")
NVIDIA_GPUS_DIR = Path("/proc/driver/nvidia/gpus")
NVIDIA_VERSION_FILE = Path("/proc/driver/nvidia/version")
_DRIVER_VERSION = re.compile(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9][0-9.]*)")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _field(text: str, key: str) -> str:
    """The value of the first `key : value` line of a /proc file, or ""."""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().casefold() == key.casefold() and value.strip():
            return value.strip()
    return ""


def cpu_model_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name (module docstring); "unknown CPU" when nothing says."""
    return (_field(_read_text(cpuinfo), "model name") or platform.processor()
            or platform.machine() or "unknown CPU")


def cpu_family_model(cpuinfo: Path = CPUINFO) -> str:
    """`family 26 model 2 stepping 1` from /proc/cpuinfo's first processor block (module
    docstring); "" when it has no `cpu family` and `model` lines (not x86, or no file)."""
    first_block = _read_text(cpuinfo).split("\n\n")[0]
    family, model = _field(first_block, "cpu family"), _field(first_block, "model")
    if not family or not model:
        return ""
    stepping = _field(first_block, "stepping")
    return f"family {family} model {model}" + (f" stepping {stepping}" if stepping else "")


def installed_torch_version() -> str:
    """torch's version from its package metadata (without importing it), or ""."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return ""


def cpu_processor(threads: int = GLOO_PROCESS_THREADS, torch_version: str | None = None,
                  cpuinfo: Path = CPUINFO) -> Processor:
    """This machine's CPU, measured with `threads` torch threads per process."""
    return Processor(kind="cpu", name=cpu_model_name(cpuinfo),
                     cpu_model=cpu_family_model(cpuinfo), logical_cores=os.cpu_count(),
                     threads=threads, torch_version=torch_version or installed_torch_version())


def nvidia_driver_version(version_file: Path = NVIDIA_VERSION_FILE) -> str:
    match = _DRIVER_VERSION.search(_read_text(version_file))
    return match.group(1) if match else ""


def cuda_processors(gpus_dir: Path = NVIDIA_GPUS_DIR,
                    version_file: Path = NVIDIA_VERSION_FILE) -> list[Processor]:
    """This machine's NVIDIA GPUs as the driver lists them (empty without a driver)."""
    try:
        boards = sorted(gpus_dir.iterdir())
    except OSError:
        return []
    driver = nvidia_driver_version(version_file)
    names = [_field(_read_text(board / "information"), "model") for board in boards]
    return [Processor(kind="cuda", name=name, driver_version=driver,
                      torch_version=installed_torch_version()) for name in names if name]


def processors_of_kind(kind: str) -> list[Processor]:
    """The machine's processors of a hardware kind ("cpu" or "cuda"): what a profile or
    calibration of that kind is compared with."""
    return [cpu_processor()] if kind == "cpu" else cuda_processors()


def torch_cuda_processor(index: int = 0) -> Processor:
    """GPU `index` as torch sees it (the device `plan profile --device cuda` measures):
    torch.cuda.get_device_name, torch.version.cuda and the driver's version. Imports torch;
    call only where torch.cuda.is_available()."""
    import torch
    return Processor(kind="cuda", name=torch.cuda.get_device_name(index),
                     driver_version=nvidia_driver_version(),
                     cuda_version=str(torch.version.cuda or ""),
                     torch_version=str(torch.__version__))
