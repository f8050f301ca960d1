"""OpenRLHF (OpenRLHF/OpenRLHF, v0.11.0) as a target: plans as `python3 -m
openrlhf.cli.train_ppo_ray` command lines and back (planner.frameworks.target says the
interface).

The parts: openrlhf_flags (its flags), openrlhf_cmdline (reading a command line),
openrlhf_layout (what its resource flags imply: placement and one execution per call),
openrlhf_export (a plan as those flags, or why not), openrlhf_script (writing the command),
openrlhf_import (a command line as a plan), openrlhf_space (every plan it can express).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.workflow import Workflow
from planner.frameworks.openrlhf_cmdline import VERSION_NAME
from planner.frameworks.openrlhf_export import layout_from_plan, workflow_problems
from planner.frameworks.openrlhf_import import import_command
from planner.frameworks.openrlhf_script import command_script
from planner.frameworks.openrlhf_space import target_plans as _target_plans
from planner.frameworks.target import (
    ExportedConfig,
    ImportedConfig,
    checked_export,
    synchronous_only,
    synchronous_plan_staleness,
)

NAME = "openrlhf"
TARGET_VERSION = VERSION_NAME
KEY_SOURCES = (
    ("OpenRLHF/OpenRLHF", "openrlhf/cli/train_ppo_ray.py", "v0.11.0"),
    ("OpenRLHF/OpenRLHF", "openrlhf/trainer/ray/launcher.py", "v0.11.0"),
    ("OpenRLHF/OpenRLHF", "openrlhf/trainer/ray/vllm_engine.py", "v0.11.0"),
    ("OpenRLHF/OpenRLHF", "openrlhf/utils/deepspeed/deepspeed.py", "v0.11.0"),
    ("OpenRLHF/OpenRLHF", "openrlhf/trainer/ppo_utils/experience_maker.py", "v0.11.0"),
)


plan_staleness = synchronous_plan_staleness   # its trainer is synchronous


def unexpressible(workflow: Workflow, cluster: ClusterSpec,
                  executions: dict[str, Execution]) -> list[str]:
    return layout_from_plan(workflow, cluster, executions)[1]


def export_config(workflow: Workflow, cluster: ClusterSpec,
                  executions: dict[str, Execution], staleness: int = 0) -> ExportedConfig:
    layout, reasons = layout_from_plan(workflow, cluster, executions)
    return checked_export(NAME, reasons + synchronous_only(TARGET_VERSION, staleness),
                          lambda: command_script(layout, workflow, cluster), ".sh")


def import_config(path: Path, cluster: ClusterSpec) -> ImportedConfig:
    return import_command(Path(path), cluster)


def target_plans(workflow: Workflow, cluster: ClusterSpec) -> Iterator[dict[str, Execution]]:
    if workflow_problems(workflow):
        return iter(())
    return _target_plans(workflow, cluster)
