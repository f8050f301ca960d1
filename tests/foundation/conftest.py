"""Shared helpers of the foundation tests: building valid plans and running the `plan` CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import yaml
from foundation_support import make_plan

from planner.cli.main import main
from planner.domain.plan import save_plan


@pytest.fixture
def plan_file(tmp_path: Path) -> Callable[..., Path]:
    """Save a valid plan, optionally edit its YAML data, and return the file's path.

    `edit` receives the loaded YAML mapping and changes it in place.
    """

    def build(edit: Callable[[dict], None] | None = None, name: str = "plan.yaml",
              **plan_kwargs) -> Path:
        path = tmp_path / name
        save_plan(make_plan(**plan_kwargs), path)
        if edit is not None:
            data = yaml.safe_load(path.read_text())
            edit(data)
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return build


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    """Run `plan ARGS...` in-process; return (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
