"""The line `plan estimate` and `plan search` print on stderr when a profile table or the
calibration they price with was measured on another processor than this machine's.

Compared per hardware kind of the cluster, with this machine's processors of that kind
(runtime/machine.py): a CPU plan with this machine's CPU, a CUDA plan with this machine's
GPUs. A machine without a GPU says nothing about a CUDA plan: a GPU table describes the GPU
it names (profiles/<hardware>/), which a laptop planning for a cluster does not have, so
the estimate is, as it should be, the recorded GPU's. A file from before processors were
recorded counts as measured elsewhere (unknown). Not an error: the estimate goes on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from costmodel.calibration import Calibration
from costmodel.profile_table import find_profile
from planner.domain.cluster import ClusterSpec
from planner.domain.paths import PROFILES_DIR
from planner.domain.processor import Processor, recorded_elsewhere
from planner.domain.workflow import Workflow

KIND_WORDS = {"cpu": "CPU", "cuda": "GPU"}


def recorded_files(workflow: Workflow, cluster: ClusterSpec, calibration: Calibration | None,
                   calibration_path: Path | None, profiles_dir: Path = PROFILES_DIR
                   ) -> dict[str, list[tuple[Path, Processor | None]]]:
    """Per hardware kind of the cluster: (file, recorded processor) of every profile table
    of its models on that hardware and of the calibration, when it applies there."""
    files: dict[str, list[tuple[Path, Processor | None]]] = {}
    specs = {role.spec.name: role.spec for role in workflow.models.values()}
    for hardware in {h.name: h for h in cluster.node_hardware}.values():
        mine = files.setdefault(hardware.kind, [])
        for spec in specs.values():
            lookup = find_profile(profiles_dir, hardware.name, spec)
            if lookup is not None and lookup.path not in [p for p, _ in mine]:
                mine.append((lookup.path, lookup.table.processor))
        if calibration is not None and calibration.device == hardware.name:
            mine.append((calibration_path, calibration.processor))
    return files


def mismatch_line(command: str, kind: str, files: list[tuple[Path, Processor | None]],
                  here: list[Processor]) -> str | None:
    """The line naming each file measured elsewhere and its processor, and this machine's;
    None when every file matches or the machine has no processor of `kind`."""
    if not here:
        return None
    elsewhere = [f"{path} ({recorded.describe() if recorded else 'unknown processor'})"
                 for path, recorded in files if recorded_elsewhere(recorded, here)]
    if not elsewhere:
        return None
    machine = "; ".join(p.describe() for p in here)
    return (f"{command}: measured on another {KIND_WORDS[kind]} than this machine's "
            f"({machine}): "
            f"{', '.join(elsewhere)}; its times may not hold here (re-measure with plan "
            f"profile and plan calibrate)")


def warn_if_measured_elsewhere(command: str, workflow: Workflow, cluster: ClusterSpec,
                               calibration: Calibration | None, calibration_path: str | None,
                               profiles_dir: Path = PROFILES_DIR, stream=None) -> None:
    """Print the mismatch line of each hardware kind of the cluster (module docstring) on
    `stream` (default stderr)."""
    from runtime.machine import processors_of_kind
    path = Path(calibration_path) if calibration_path else None
    for kind, files in recorded_files(workflow, cluster, calibration, path,
                                      profiles_dir).items():
        line = mismatch_line(command, kind, files, processors_of_kind(kind))
        if line:
            print(line, file=stream or sys.stderr)
