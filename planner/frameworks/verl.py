"""verl (volcengine/verl, v0.7.0) as a plan export / import / search target.

Export writes a shell script of Hydra overrides for `python3 -m verl.trainer.main_ppo`
(verl_export.py); import reads such a script or a YAML config (verl_import.py); the rules of
what verl expresses are in verl_rules.py, the keys and their sources in verl_keys.py, and
the space of expressible plans in verl_space.py.
"""

from __future__ import annotations

from pathlib import Path

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.workflow import Workflow
from planner.frameworks.target import (
    ExportedConfig,
    ImportedConfig,
    checked_export,
    synchronous_only,
    synchronous_plan_staleness,
)
from planner.frameworks.verl_export import script_text
from planner.frameworks.verl_import import import_verl
from planner.frameworks.verl_keys import KEY_SOURCES, VERL_VERSION
from planner.frameworks.verl_rules import unexpressible, workflow_problems
from planner.frameworks.verl_space import target_plans

NAME = "verl"
TARGET_VERSION = VERL_VERSION
__all__ = ["KEY_SOURCES", "NAME", "TARGET_VERSION", "export_config", "import_config",
           "plan_staleness", "target_plans", "unexpressible", "workflow_problems"]


plan_staleness = synchronous_plan_staleness   # its trainer is synchronous


def export_config(workflow: Workflow, cluster: ClusterSpec,
                  executions: dict[str, Execution], staleness: int = 0) -> ExportedConfig:
    """The verl script of an expressible plan; Unexpressible (one line per feature)
    otherwise."""
    return checked_export(NAME, unexpressible(workflow, cluster, executions)
                          + synchronous_only(TARGET_VERSION, staleness),
                          lambda: script_text(workflow, cluster, executions), ".sh")


def import_config(path: Path, cluster: ClusterSpec) -> ImportedConfig:
    """The plan a verl script or YAML config implies on `cluster`."""
    return import_verl(Path(path), cluster)
