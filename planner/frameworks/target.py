"""The interface every framework module (planner/frameworks/<name>.py) implements, and the
registry of them.

A target module defines:

- `NAME` (as typed after `--to` / `--from`) and `TARGET_VERSION` (the release whose config
  keys it writes and reads, named in every exported file, e.g. "verl 0.6.1"), and
  `KEY_SOURCES` (the published files the keys were taken from: repository, path, version);
- `workflow_problems(workflow) -> list[str]`: one line per reason the target cannot run
  `workflow` at all, whatever the plan (e.g. AReaL has no reward-model engine); empty
  when some plan may be expressible. `plan search --target` prints them when the space
  is empty;
- `unexpressible(workflow, cluster, executions) -> list[str]`: one line per feature of the
  plan the target cannot express (empty when it can express all of it; it includes
  workflow_problems);
- `export_config(workflow, cluster, executions, staleness=0) -> ExportedConfig`, raising
  `Unexpressible` with those lines when the list is not empty; `staleness` is the plan's
  (Plan.staleness): a target that runs synchronous training only refuses s >= 1 with
  `synchronous_only`'s line;
- `import_config(path, cluster) -> ImportedConfig`: the plan a user's config implies on
  `cluster`; InputError (one line: file, key, what is wrong, what would be valid) on a key we
  cannot read or a value we do not implement;
- `target_plans(workflow, cluster) -> Iterator[dict[str, Execution]]`: every plan of
  `workflow` on `cluster` the target can express (the space `plan search --target` searches;
  finite, at most a few hundred thousand plans), memory not yet considered;
- `plan_staleness(workflow) -> int`: the staleness those plans run at (0 for a synchronous
  trainer; AReaL: the workflow's max_staleness).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from planner.domain.layout import Execution
from planner.domain.workflow import Workflow

TARGET_NAMES = ("verl", "areal", "roll", "openrlhf")


class Unexpressible(Exception):
    """A plan the target cannot run; `reasons` has one line per feature."""

    def __init__(self, target: str, reasons: list[str]):
        super().__init__(f"{target} cannot express this plan: " + "; ".join(reasons))
        self.target = target
        self.reasons = reasons


@dataclass(frozen=True)
class ExportedConfig:
    """A target's config for a plan: the file's text, its usual suffix (".yaml", ".sh")."""

    text: str
    file_suffix: str


@dataclass(frozen=True)
class ImportedConfig:
    """What a user's framework config implies: the workflow (models, batch, lengths), one
    execution per call, and a line per assumption made while reading it (printed)."""

    workflow: Workflow
    executions: dict[str, Execution]
    notes: list[str] = field(default_factory=list)
    staleness: int = 0          # the plan's (Plan.staleness); the workflow allows it


def target_module(name: str) -> ModuleType:
    """The module of target `name` (one of TARGET_NAMES)."""
    assert name in TARGET_NAMES, name
    return importlib.import_module(f"planner.frameworks.{name}")


def synchronous_plan_staleness(workflow: Workflow) -> int:
    """`plan_staleness` of a target whose trainer is synchronous: 0, whatever the workflow's
    max_staleness allows."""
    return 0


def synchronous_only(target_version: str, staleness: int) -> list[str]:
    """The line of a target whose trainer (the one its export writes for) is synchronous,
    for a plan of staleness s >= 1; empty for s = 0."""
    if staleness == 0:
        return []
    return [f"plan staleness {staleness}: the {target_version} trainer this export writes "
            f"for is synchronous (generation waits for the last training step); export a "
            f"plan of staleness 0 (`plan search` with max_staleness 0), or to areal"]


def checked_export(target: str, reasons: list[str], text: Callable[[], str],
                   file_suffix: str) -> ExportedConfig:
    """What a target's `export_config` returns: the config `text()` writes, or Unexpressible
    with `reasons` (one line per feature the target cannot express) when there are any."""
    if reasons:
        raise Unexpressible(target, reasons)
    return ExportedConfig(text=text(), file_suffix=file_suffix)
