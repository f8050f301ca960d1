"""Fixtures of the figure / show / diff tests: two saved PPO plans on 8 H100 and a CLI runner.

The plans are built by hand (no search, so the tests stay fast): `searched` is the plan
`plan search` finds for the default PPO workflow (calls on their own meshes and layouts,
critic reallocations), `separate` is the OpenRLHF-style split of device pools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from planner.cli.main import main
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.plan import Plan, Provenance, save_plan
from planner.domain.workflow_file import builtin_workflow


def _ex(devices: range, dp: int, tp: int, pp: int, micro_batches: int) -> Execution:
    return Execution(devices=tuple(devices), dp=dp, tp=tp, pp=pp, micro_batches=micro_batches)


SEARCHED = {
    "actor_gen": _ex(range(8), 4, 2, 1, 2),
    "rew_inf": _ex(range(4), 1, 2, 2, 16),
    "ref_inf": _ex(range(4, 8), 1, 2, 2, 16),
    "critic_inf": _ex(range(8), 8, 1, 1, 1),
    "actor_train": _ex(range(8), 4, 2, 1, 1),
    "critic_train": _ex(range(8), 2, 2, 2, 16),
}
SEPARATE = {
    "actor_gen": _ex(range(0, 2), 1, 2, 1, 8),
    "rew_inf": _ex(range(6, 7), 1, 1, 1, 4),
    "ref_inf": _ex(range(7, 8), 1, 1, 1, 8),
    "critic_inf": _ex(range(2, 4), 2, 1, 1, 4),
    "actor_train": _ex(range(4, 6), 2, 1, 1, 8),
    "critic_train": _ex(range(2, 4), 2, 1, 1, 4),
}


def make_ppo_plan(executions: dict[str, Execution]) -> Plan:
    plan = Plan(workflow=builtin_workflow("ppo"), cluster=cluster_preset("h100x8"),
                executions=executions, provenance=Provenance(created_by="tests/figures"))
    assert plan.problems() == [], plan.problems()
    return plan


@pytest.fixture(scope="session")
def plan_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'searched': path, 'separate': path} of the two saved plans."""
    folder = tmp_path_factory.mktemp("plans")
    paths = {}
    for name, executions in (("searched", SEARCHED), ("separate", SEPARATE)):
        paths[name] = folder / f"{name}.yaml"
        save_plan(make_ppo_plan(executions), paths[name])
    return paths


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    """Run `plan ARGS...` in-process; return (exit code, stdout, stderr)."""

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
