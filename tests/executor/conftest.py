"""Fixtures shared by the executor tests."""

import pytest
import torch.distributed as dist

from runtime.executor import launcher


@pytest.fixture
def no_spawning(monkeypatch):
    """Fail the test if a refused plan would still start ranks."""
    def refuse(*args, **kwargs):
        raise AssertionError("ranks were started")
    monkeypatch.setattr(launcher, "run_distributed", refuse)
    monkeypatch.setattr(dist, "init_process_group", refuse)
