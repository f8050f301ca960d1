"""Peak memory of a step: CUDA max_memory_allocated, or on CPU the peak of live tensor bytes.

Both count what the estimate prices (costmodel/memory.py, costmodel/plan_memory.py): every
tensor this rank holds during the step, the resident models of every call on the device
included, not the process (Python, torch's code, allocator caches).
- CUDA: the allocator's peak of allocated bytes since the step began
  (torch.cuda.reset_peak_memory_stats at entry); free, always on.
- CPU, with count_tensors: runtime.memory_meter.LiveBytes: the storages of every tensor
  Python reaches when the first counted step begins (one scan of the process), carried from
  step to step, plus each storage an op makes inside a step while it is alive; the peak after
  any op. It slows the step's ops (runtime/memory_meter.py gives the cost), so a run counts
  only the steps whose times it does not use; without count_tensors the CPU peak is 0 (not
  measured).
"""

from __future__ import annotations

import torch

from runtime.memory_meter import Alive, LiveBytes

SOURCES = {"cuda": "cuda_max_memory_allocated", "cpu": "cpu_live_tensor_bytes"}
# What the counted steps of this process count, carried to the next (module docstring).
_carried: dict[str, Alive] = {}


class PeakMemory:
    """`with PeakMemory(device) as m: ...; m.peak_bytes`."""

    def __init__(self, device: torch.device, count_tensors: bool = True):
        self.cuda = device.type == "cuda"
        self.device = device
        self.count_tensors = count_tensors
        self.peak_bytes = 0
        self._meter: LiveBytes | None = None

    @property
    def source(self) -> str:
        return SOURCES["cuda" if self.cuda else "cpu"]

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.count_tensors:
            kind = self.device.type
            self._meter = LiveBytes(scan=kind not in _carried, alive=_carried.get(kind),
                                    device_type=kind)
            self._meter.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._meter is not None:
            self._meter.__exit__(*exc)
            self.peak_bytes = self._meter.peak_bytes
            _carried[self.device.type] = self._meter.alive
