"""The test launcher reports a failing rank's error and never hangs on a stuck rank."""

from __future__ import annotations

import time

import pytest

from runtime.launch import WorkerError, run_distributed

pytestmark = pytest.mark.slow


def rank_one_fails_while_rank_zero_waits(rank: int, world_size: int) -> int:
    import torch
    import torch.distributed as dist

    if rank == 1:
        raise ValueError("boom on rank one")
    dist.all_reduce(torch.ones(1))  # never completes: rank 1 is gone
    return rank


def rank_one_hangs(rank: int, world_size: int) -> int:
    import torch.distributed as dist

    dist.barrier()  # both ranks are up before rank 0 returns, so only rank 1 can be stuck
    if rank == 1:
        time.sleep(600)
    return rank


def test_failing_rank_is_reported_and_others_stopped():
    # rank 0 waits in an all-reduce that can never complete: reporting rank 1's error
    # (not a timeout) shows the launcher stopped it rather than waiting out the 300 s
    with pytest.raises(WorkerError, match=r"(?s)rank 1 failed.*boom on rank one"):
        run_distributed(rank_one_fails_while_rank_zero_waits, 2, timeout_s=300)


def test_stuck_rank_times_out():
    with pytest.raises(WorkerError, match=r"timed out after 20 s; ranks \[1\]"):
        run_distributed(rank_one_hangs, 2, timeout_s=20)


def rank_two_stops_itself(rank: int, world_size: int) -> int:
    import os
    import signal

    import torch
    import torch.distributed as dist

    dist.barrier()
    if rank == 2:
        os.kill(os.getpid(), signal.SIGSTOP)   # frozen, as by a debugger or a bad driver
    dist.all_reduce(torch.ones(1))             # the others wait for rank 2 for ever
    return rank


def test_a_stopped_rank_is_named_and_every_rank_stops():
    import multiprocessing

    with pytest.raises(WorkerError, match=r"rank 2 stopped answering: no heartbeat for 5 s"):
        run_distributed(rank_two_stops_itself, 4, timeout_s=None, silent_rank_timeout_s=5)
    assert multiprocessing.active_children() == []   # no orphans, the stopped rank included
