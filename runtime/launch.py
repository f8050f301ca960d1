"""Run a function on N local processes with torch.distributed initialised (tests, benchmarks).

Each process is spawned fresh, uses one CPU thread, initialises the default group (gloo unless
told otherwise) and calls `fn(rank, world_size, *args)`. Results come back pickled, in rank
order. If any rank raises, the others are terminated at once and `WorkerError` carries the
failing rank's traceback; if the whole run exceeds `timeout_s`, every process is terminated
and `WorkerError` says which ranks had not finished. Nothing hangs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

POLL_S = 0.05
TERMINATE_GRACE_S = 2.0


class WorkerError(RuntimeError):
    """A rank failed or the run timed out."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, backend: str, timeout_s: float,
            fn: Callable, args: tuple, results: mp.Queue) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)  # one GPU per rank; NCCL refuses two ranks on one GPU
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        value = fn(rank, world_size, *args)
        results.put((rank, True, pickle.dumps(value)))
        dist.destroy_process_group()
    except BaseException:  # report everything, including KeyboardInterrupt in a worker
        results.put((rank, False, traceback.format_exc()))


def run_distributed(fn: Callable, world_size: int, args: tuple = (), timeout_s: float = 120.0,
                    backend: str = "gloo") -> list[Any]:
    """`fn(rank, world_size, *args)` on `world_size` fresh processes; their results by rank.

    `fn` and `args` must be picklable (a module-level function).
    """
    context = mp.get_context("spawn")
    results: mp.Queue = context.Queue()
    port = free_port()
    procs = [context.Process(target=_worker, daemon=True,
                             args=(rank, world_size, port, backend, timeout_s, fn, args, results))
             for rank in range(world_size)]
    for p in procs:
        p.start()
    values: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < world_size:
            try:
                rank, ok, payload = results.get(timeout=POLL_S)
            except queue.Empty:
                if time.monotonic() > deadline:
                    missing = sorted(set(range(world_size)) - set(values))
                    raise WorkerError(f"timed out after {timeout_s:.0f} s; ranks {missing} "
                                      f"did not finish") from None
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)
                        and r not in values]
                if dead and results.empty():
                    raise WorkerError(f"rank {dead[0]} exited with code "
                                      f"{procs[dead[0]].exitcode} without a result")
                continue
            if not ok:
                raise WorkerError(f"rank {rank} failed:\n{payload}")
            values[rank] = pickle.loads(payload)
    finally:
        _stop(procs)
    return [values[r] for r in range(world_size)]


def _stop(procs: list) -> None:
    """Let finished workers exit; terminate, then kill, the others."""
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=TERMINATE_GRACE_S)
        if p.is_alive():
            p.kill()
            p.join()
