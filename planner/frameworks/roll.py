"""ROLL (alibaba/ROLL, v0.3.0) as a plan export / import / search target
(planner.frameworks.target says the interface).

Export writes an RLVR pipeline config in YAML (roll_export.py); import reads one
(roll_import.py); what ROLL expresses is in roll_rules.py, its keys, defaults and their
sources in roll_keys.py, device_mapping strings in roll_devices.py, and the space of
expressible plans in roll_space.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.workflow import Workflow
from planner.frameworks.roll_export import config_text
from planner.frameworks.roll_import import import_roll
from planner.frameworks.roll_keys import KEY_SOURCES, ROLL_VERSION
from planner.frameworks.roll_rules import unexpressible, workflow_problems
from planner.frameworks.roll_space import target_plans as _target_plans
from planner.frameworks.target import (
    ExportedConfig,
    ImportedConfig,
    checked_export,
    synchronous_only,
    synchronous_plan_staleness,
)

NAME = "roll"
TARGET_VERSION = ROLL_VERSION
__all__ = ["KEY_SOURCES", "NAME", "TARGET_VERSION", "export_config", "import_config",
           "plan_staleness", "target_plans", "unexpressible", "workflow_problems"]


plan_staleness = synchronous_plan_staleness   # its trainer is synchronous


def export_config(workflow: Workflow, cluster: ClusterSpec,
                  executions: dict[str, Execution], staleness: int = 0) -> ExportedConfig:
    """The ROLL config of an expressible plan; Unexpressible (one line per feature)
    otherwise."""
    return checked_export(NAME, unexpressible(workflow, cluster, executions)
                          + synchronous_only(TARGET_VERSION, staleness),
                          lambda: config_text(workflow, cluster, executions), ".yaml")


def import_config(path: Path, cluster: ClusterSpec) -> ImportedConfig:
    """The plan a ROLL config implies on `cluster`."""
    return import_roll(Path(path), cluster)


def target_plans(workflow: Workflow, cluster: ClusterSpec) -> Iterator[dict[str, Execution]]:
    """Every plan ROLL can express for `workflow` on `cluster` (roll_space.py)."""
    return _target_plans(workflow, cluster)
