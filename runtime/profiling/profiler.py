"""Measure a profile table (costmodel/profile_table.py) with torch on the device at hand.

For every tensor-parallel degree, every part and op of `profiler_parts.PART_OPS` is timed
over the grid's batch x length points (optimizer: once): `warmup` untimed runs, then up to
`repeats` timed runs (at least MIN_REPEATS; fewer once a point has used its time budget),
sweeping back and forth over the entry's points, and the median is kept. CUDA runs bf16 and synchronises around every timed run; CPU runs
fp32 on one thread (torch.set_num_threads(1)), as one gloo process per core does, so the
table prices one CPU core. The table records the processor it was measured on
(runtime/machine.py: the CPU model name and logical cores, or the GPU name and driver).

    table = measure_profile(spec, [1, 2], device_setup("cpu"), GRIDS["cpu"])
    save_profile(table, path)
"""

from __future__ import annotations

import datetime
import socket
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from costmodel.profile_table import FORMAT_VERSION, ProfileTable, model_shape_key
from planner.domain.errors import InputError
from planner.domain.hardware import hardware_by_name, known_hardware
from planner.domain.layout import parallel_degrees_problem
from planner.domain.modelspec import ModelSpec
from planner.domain.output_files import atomic_write_text
from planner.domain.processor import Processor
from planner.domain.yamlio import dump_yaml
from runtime.device import DTYPE_NAMES, RUNNABLE_DTYPES, DeviceConfig, device_config
from runtime.machine import GLOO_PROCESS_THREADS, cpu_processor, torch_cuda_processor
from runtime.profiling.parts import PART_OPS, ShardBench, Trial

MIN_REPEATS = 3
CPU_THREADS = GLOO_PROCESS_THREADS  # one gloo process per core, each on one thread
CANDIDATE_TP = (1, 2, 4, 8)
SIGNIFICANT_DIGITS = 6
# torch.cuda.get_device_name() fragments -> profiles/hardware/<name>.yaml
CUDA_NAME_HINTS = (("H200", "h200-sxm-141gb"), ("H100", "h100-sxm-80gb"),
                   ("A100", "a100-sxm-80gb"))


@dataclass(frozen=True)
class ProfileGrid:
    """Grid points and how hard to measure each one."""

    batch: tuple[int, ...]
    length: tuple[int, ...]
    warmup: int
    repeats: int
    budget_s_per_point: float

    def lengths_for(self, spec: ModelSpec) -> tuple[int, ...]:
        """The lengths the model's positions allow (at least the largest allowed one)."""
        inside = tuple(n for n in self.length if n <= spec.max_positions)
        return inside or (spec.max_positions,)


# CPU: llama-tiny at tp 1, 2, 4, 8 takes about 30 s on one core. Many repeats are cheap
# on small points (noise-prone on a shared machine); the budget stops large ones at 3.
GRIDS = {
    "cpu": ProfileGrid(batch=(1, 4, 16), length=(32, 128, 512), warmup=1, repeats=15,
                       budget_s_per_point=0.4),
    "cuda": ProfileGrid(batch=(1, 8, 64), length=(128, 512, 2048), warmup=3, repeats=10,
                        budget_s_per_point=0.5),
    "quick": ProfileGrid(batch=(1, 8), length=(16, 128), warmup=1, repeats=3,
                         budget_s_per_point=0.05),
}


@dataclass(frozen=True)
class DeviceSetup:
    """Where and how to measure: the runtime device config, the hardware name, a sync, and
    the processor measured on."""

    config: DeviceConfig
    hardware: str
    sync: Callable[[], None]
    note: str
    processor: Processor


def _no_sync() -> None:
    return None


def measured_device_config(device: str, hardware: str) -> DeviceConfig:
    """The runtime's DeviceConfig for `hardware` (its compute dtype, as `plan run` uses it)
    on `device`, device 0; InputError when that hardware is not of this kind or dtype."""
    spec = hardware_by_name(hardware)
    if spec.kind != device or spec.compute_dtype not in RUNNABLE_DTYPES[device]:
        raise InputError(f"--hardware: {hardware} is a {spec.kind} device computing in "
                         f"{spec.compute_dtype}; --device {device} measures "
                         f"{'/'.join(RUNNABLE_DTYPES[device])} on {device}")
    return device_config(device, spec.compute_dtype, 0)


def device_setup(device: str, hardware: str | None = None) -> DeviceSetup:
    """`cpu` (one thread) or `cuda` (device 0), in the hardware's compute dtype (cpu: fp32,
    the GPUs: bf16); InputError if not available."""
    if hardware is not None and hardware not in known_hardware():
        raise InputError(f"--hardware: unknown device {hardware!r}; valid: {known_hardware()}")
    if device == "cpu":
        config = measured_device_config(device, hardware or "cpu")
        return DeviceSetup(config, hardware or "cpu", _no_sync,
                           f"{DTYPE_NAMES[config.dtype]} on {CPU_THREADS} CPU thread "
                           f"(torch.set_num_threads({CPU_THREADS}), one gloo process per core)",
                           cpu_processor(CPU_THREADS, str(torch.__version__)))
    if device != "cuda":
        raise InputError(f"--device: unknown device {device!r}; valid: cpu, cuda")
    if not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA GPU on this machine "
                         "(torch.cuda.is_available() is False); use --device cpu")
    name = torch.cuda.get_device_name(0)
    if hardware is None:
        hardware = next((hw for hint, hw in CUDA_NAME_HINTS if hint in name), None)
        if hardware is None:
            raise InputError(f"--device cuda: no hardware spec matches GPU {name!r}; "
                             f"give --hardware, one of {known_hardware()}")
    config = measured_device_config(device, hardware)
    return DeviceSetup(config, hardware, torch.cuda.synchronize,
                       f"{DTYPE_NAMES[config.dtype]} on {name}", torch_cuda_processor(0))


def default_tp_degrees(spec: ModelSpec) -> list[int]:
    """The degrees of CANDIDATE_TP that shard `spec` (planner.sharding.param_shards rules)."""
    return [tp for tp in CANDIDATE_TP if parallel_degrees_problem(spec, tp, 1) is None]


def check_tp_degrees(spec: ModelSpec, degrees: list[int]) -> None:
    """InputError naming the first degree that does not shard `spec` evenly."""
    for tp in degrees:
        if tp < 1:
            raise InputError(f"--tp: degree {tp} must be >= 1")
        problem = parallel_degrees_problem(spec, tp, 1)
        if problem:
            raise InputError(f"--tp: {problem}")


def time_trials_s(trials: list[Trial], grid: ProfileGrid, sync: Callable[[], None]
                  ) -> list[float]:
    """Median seconds of each trial's `run` after warm-up (module docstring).

    The timed runs sweep the trials back and forth (0..n-1, n-1..0, ...): a burst of load
    from another process spoils one run of several points rather than every run of one
    point, and the median drops it; and each run follows the same or a neighbouring point,
    so a small point never pays for the caches a large one just evicted. The warm-up sweeps
    backwards so that the first timed run follows its own warm-up.
    """
    for trial in reversed(trials):
        for _ in range(grid.warmup):
            trial.prepare()
            trial.run()
    sync()
    times: list[list[float]] = [[] for _ in trials]
    order = list(range(len(trials)))
    for sweep in range(max(grid.repeats, MIN_REPEATS)):
        for i in (order if sweep % 2 == 0 else order[::-1]):
            if len(times[i]) >= MIN_REPEATS and sum(times[i]) > grid.budget_s_per_point:
                continue
            trials[i].prepare()
            sync()
            start = time.perf_counter()
            trials[i].run()
            sync()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(mine) for mine in times]


class ProgressBar:
    """One line on stderr, redrawn in place when stderr is a terminal."""

    WIDTH = 30

    def __init__(self, label: str, total: int, stream=sys.stderr):
        self.label, self.total, self.stream = label, total, stream
        self.enabled = stream.isatty()
        self.done = 0
        self.start = time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r{self.label}: [{bar}] {self.done}/{self.total} "
                          f"{elapsed:5.1f} s  {what:<32}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _rounded(seconds: float) -> float:
    return float(f"{seconds:.{SIGNIFICANT_DIGITS}g}")


def count_entries(degrees: list[int]) -> int:
    return sum(len(ops) for ops in PART_OPS.values()) * len(degrees)


@contextmanager
def cpu_threads(count: int):
    """torch's intra-op thread count set to `count` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_shard(spec: ModelSpec, tp: int, setup: DeviceSetup, grid: ProfileGrid,
                  progress: ProgressBar) -> dict:
    """The `shards` entry of one tp degree: every part and op of PART_OPS."""
    bench = ShardBench(spec, tp, setup.config)
    lengths = grid.lengths_for(spec)
    entries = []
    for part, ops in PART_OPS.items():
        for op in ops:
            if op == "optimizer":
                [seconds] = time_trials_s([bench.trial(part, op, 1, 1)], grid, setup.sync)
                entries.append({"op": op, "part": part, "seconds": _rounded(seconds)})
                progress.step(f"tp {tp} {part} {op}")
                continue
            points = [(b, n) for b in grid.batch for n in lengths]
            seconds = time_trials_s([bench.trial(part, op, b, n) for b, n in points], grid,
                                    setup.sync)
            rows = [[_rounded(t) for t in seconds[i:i + len(lengths)]]
                    for i in range(0, len(seconds), len(lengths))]
            entries.append({"op": op, "part": part, "batch": list(grid.batch),
                            "length": list(lengths), "seconds": rows})
            progress.step(f"tp {tp} {part} {op}")
    return {"tp": tp, "entries": entries}


def measure_profile(spec: ModelSpec, degrees: list[int], setup: DeviceSetup,
                    grid: ProfileGrid, progress_stream=sys.stderr) -> dict:
    """The table of `spec` at each tp degree, as a mapping in the file format."""
    check_tp_degrees(spec, degrees)
    progress = ProgressBar(f"profile {spec.name} on {setup.hardware}",
                           count_entries(degrees), progress_stream)
    torch.manual_seed(0)
    threads = CPU_THREADS if setup.config.device.type == "cpu" else torch.get_num_threads()
    try:
        with cpu_threads(threads):
            shards = [measure_shard(spec, tp, setup, grid, progress) for tp in degrees]
    finally:
        progress.close()
    return {"format_version": FORMAT_VERSION, "device": setup.hardware,
            "torch_version": str(torch.__version__),
            "recorded": datetime.date.today().isoformat(),
            "host": socket.gethostname(),
            "processor": setup.processor.as_mapping(),
            "notes": f"plan profile: {setup.note}; warm-up {grid.warmup}, median of up to "
                     f"{grid.repeats} runs",
            "model_shape": model_shape_key(spec), "shards": shards}


def save_profile(table: dict, path: Path) -> None:
    """Validate `table` against the file format and write it atomically."""
    ProfileTable(**table)
    atomic_write_text(Path(path), dump_yaml(table))
