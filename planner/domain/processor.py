"""The processor a profile table or a calibration was measured on, as its file records it.

Profile tables and calibrations are specific to a processor: on another machine of the
same kind the same CPU plans measured 1.3-1.8x slower than the figures of docs/accuracy.md
(issue 11), so a file says what it was measured on and `plan estimate` / `plan search` say
when the machine at hand differs. The values are read from the machine by
runtime/machine.py; this module only holds and compares recorded values.

    processor:                         # a CPU
      kind: cpu
      name: Intel(R) Xeon(R) CPU @ 2.20GHz   # /proc/cpuinfo "model name"
      cpu_model: family 6 model 85 stepping 7  # its "cpu family", "model", "stepping"
      logical_cores: 2                 # os.cpu_count()
      threads: 1                       # torch intra-op threads of each measured process
      torch_version: 2.13.0+cpu
    processor:                         # a GPU
      kind: cuda
      name: NVIDIA H100 80GB HBM3      # torch.cuda.get_device_name
      driver_version: 550.54.15        # /proc/driver/nvidia/version
      cuda_version: "12.4"             # torch.version.cuda
      torch_version: 2.5.1+cu124

A file without `processor` was written before processors were recorded: its processor is
unknown (None where it is read).

`cpu_model` tells apart CPUs whose model name does not: on the cloud VMs of this project's
CI every AMD processor is named "AMD EPYC", while family 25 model 1, family 25 model 17 and
family 26 model 2 (three generations) measured the same plans up to 2x apart
(docs/accuracy.md). Absent (older files, or a /proc/cpuinfo without those lines): the name
alone decides.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The largest CPU hosts have a few hundred logical cores; a million is a typo.
MAX_LOGICAL_CORES = 1_048_576
MAX_NAME_CHARS = 200


class Processor(BaseModel):
    """One processor as measured on (module docstring); fields of the other kind stay empty."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["cpu", "cuda"]
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    logical_cores: int | None = Field(default=None, ge=1, le=MAX_LOGICAL_CORES)
    threads: int | None = Field(default=None, ge=1, le=MAX_LOGICAL_CORES)
    torch_version: str = Field(default="", max_length=MAX_NAME_CHARS)
    cpu_model: str = Field(default="", max_length=MAX_NAME_CHARS)
    driver_version: str = Field(default="", max_length=MAX_NAME_CHARS)
    cuda_version: str = Field(default="", max_length=MAX_NAME_CHARS)

    def describe(self) -> str:
        """`AMD EPYC (family 26 model 2 stepping 1), 2 logical cores` / `NVIDIA H100 80GB
        HBM3, driver 550.54.15`."""
        name = f"{self.name} ({self.cpu_model})" if self.cpu_model else self.name
        if self.kind == "cpu" and self.logical_cores:
            return f"{name}, {self.logical_cores} logical cores"
        if self.kind == "cpu":
            return name
        if self.kind == "cuda" and self.driver_version:
            return f"{self.name}, driver {self.driver_version}"
        return self.name

    def as_mapping(self) -> dict:
        """The file form: the fields of this kind that are known."""
        return self.model_dump(exclude_defaults=True)


def same_processor(a: Processor, b: Processor) -> bool:
    """Same kind and the same model name (case and spacing aside), and the same cpu_model
    where both record one. Core counts, thread counts and versions do not make another
    processor: a table times one process on one core, and a calibration states its own
    cores_per_node."""
    return (a.kind == b.kind and _normal(a.name) == _normal(b.name)
            and (not a.cpu_model or not b.cpu_model or a.cpu_model == b.cpu_model))


def recorded_elsewhere(recorded: Processor | None, here: list[Processor]) -> bool:
    """Whether a file recorded on `recorded` (None: unknown) may not describe this machine,
    whose processors of that kind are `here`: unknown, or none of them the same."""
    return recorded is None or not any(same_processor(recorded, p) for p in here)


def _normal(name: str) -> str:
    return " ".join(name.split()).casefold()

