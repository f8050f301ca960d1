"""Run a function on N local processes with torch.distributed initialised (tests, benchmarks).

Each process is spawned fresh, uses one CPU thread, initialises the default group (gloo unless
told otherwise) and calls `fn(rank, world_size, *args)`. Results come back pickled, in rank
order. If any rank raises, the others are terminated at once and `WorkerError` carries the
failing rank's traceback; if the whole run exceeds `timeout_s`, every process is terminated
and `WorkerError` says which ranks had not finished. Nothing hangs.

With `on_message`, `fn` is called as `fn(rank, world_size, post, *args)`: `post(obj)` sends a
picklable object to the parent, which calls `on_message(obj)` as it arrives (progress lines).

Root cause: when one rank dies, its peers usually fail too (connection reset in gloo). The
parent waits ROOT_CAUSE_GRACE_S after the first failure and names a rank that exited without
reporting (killed, os._exit, segfault) before one that raised, then the earliest report.
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
ROOT_CAUSE_GRACE_S = 1.0


class WorkerError(RuntimeError):
    """A rank failed or the run timed out."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, backend: str, timeout_s: float,
            fn: Callable, args: tuple, results: mp.Queue, with_post: bool = False) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)  # one GPU per rank; NCCL refuses two ranks on one GPU
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        if with_post:
            def post(obj: Any) -> None:
                results.put((rank, "message", pickle.dumps(obj)))
            value = fn(rank, world_size, post, *args)
        else:
            value = fn(rank, world_size, *args)
        results.put((rank, True, pickle.dumps(value)))
        dist.destroy_process_group()
    except BaseException:  # report everything, including KeyboardInterrupt in a worker
        results.put((rank, False, traceback.format_exc()))


def run_distributed(fn: Callable, world_size: int, args: tuple = (),
                    timeout_s: float | None = 120.0, backend: str = "gloo",
                    on_message: Callable[[Any], None] | None = None,
                    group_timeout_s: float | None = None) -> list[Any]:
    """`fn(rank, world_size, *args)` on `world_size` fresh processes; their results by rank.

    `fn` and `args` must be picklable (a module-level function). timeout_s None: no limit on
    the whole run. group_timeout_s: torch.distributed's per-operation timeout (default
    timeout_s, or 30 minutes without one).
    """
    context = mp.get_context("spawn")
    results: mp.Queue = context.Queue()
    port = free_port()
    group_timeout = group_timeout_s or timeout_s or 1800.0
    procs = [context.Process(target=_worker, daemon=True,
                             args=(rank, world_size, port, backend, group_timeout, fn, args,
                                   results, on_message is not None))
             for rank in range(world_size)]
    for p in procs:
        p.start()
    values: dict[int, Any] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while len(values) < world_size:
            try:
                rank, ok, payload = results.get(timeout=POLL_S)
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    missing = sorted(set(range(world_size)) - set(values))
                    raise WorkerError(f"timed out after {timeout_s:.0f} s; ranks {missing} "
                                      f"did not finish") from None
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)
                        and r not in values]
                if dead and results.empty():
                    raise _root_cause(procs, results, values, None)
                continue
            if ok == "message":
                on_message(pickle.loads(payload))
                continue
            if not ok:
                raise _root_cause(procs, results, values, (rank, payload))
            values[rank] = pickle.loads(payload)
    finally:
        _stop(procs)
    return [values[r] for r in range(world_size)]


def _root_cause(procs: list, results: mp.Queue, values: dict,
                first_error: tuple[int, str] | None) -> WorkerError:
    """The error to report once some rank failed (module docstring)."""
    errors = [first_error] if first_error else []
    deadline = time.monotonic() + ROOT_CAUSE_GRACE_S
    while time.monotonic() < deadline:
        try:
            rank, ok, payload = results.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if ok is False:
            errors.append((rank, payload))
        elif ok is True:
            values[rank] = None
    reported = {r for r, _ in errors}
    silent = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)
              and r not in values and r not in reported]
    if silent:
        r = silent[0]
        return WorkerError(f"rank {r} exited with code {procs[r].exitcode} without a result")
    rank, payload = errors[0]
    return WorkerError(f"rank {rank} failed:\n{payload}")


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
