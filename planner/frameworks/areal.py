"""AReaL (inclusionAI/AReaL, v1.0.4) as a plan export / import / search target.

Export writes the keys of an AReaL experiment config (nested YAML) that fix the plan
(areal_export.py); import reads such a config, or a launch script running one with
overrides (areal_launch.py, areal_import.py); per-engine backend strings are read and
written by areal_backend.py, the rules of what AReaL expresses are in areal_rules.py, the
keys and their sources in areal_keys.py, and the space of expressible plans in
areal_space.py.
"""

from __future__ import annotations

from pathlib import Path

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution
from planner.domain.workflow import Workflow
from planner.frameworks.areal_export import config_text
from planner.frameworks.areal_import import import_areal
from planner.frameworks.areal_keys import AREAL_VERSION, KEY_SOURCES
from planner.frameworks.areal_rules import unexpressible, workflow_problems
from planner.frameworks.areal_space import target_plans
from planner.frameworks.target import ExportedConfig, ImportedConfig, checked_export

NAME = "areal"
TARGET_VERSION = AREAL_VERSION
__all__ = ["KEY_SOURCES", "NAME", "TARGET_VERSION", "export_config", "import_config",
           "plan_staleness", "target_plans", "unexpressible", "workflow_problems"]


def plan_staleness(workflow: Workflow) -> int:
    """The staleness AReaL's plans of `workflow` run at: its max_staleness, which export
    writes as rollout.max_head_offpolicyness (AReaL keeps the rollout that far ahead)."""
    return workflow.max_staleness


def export_config(workflow: Workflow, cluster: ClusterSpec,
                  executions: dict[str, Execution], staleness: int = 0) -> ExportedConfig:
    """The AReaL config of an expressible plan, asynchronous at `staleness` s >= 1
    (areal_export.py); Unexpressible (one line per feature) otherwise."""
    return checked_export(NAME, unexpressible(workflow, cluster, executions),
                          lambda: config_text(workflow, cluster, executions, staleness),
                          ".yaml")


def import_config(path: Path, cluster: ClusterSpec) -> ImportedConfig:
    """The plan an AReaL YAML config or launch script implies on `cluster`."""
    return import_areal(Path(path), cluster)
