"""Run a function on N local processes with torch.distributed initialised (tests, benchmarks).

Each process is spawned fresh, uses one CPU thread, initialises the default group (gloo unless
told otherwise) and calls `fn(rank, world_size, *args)`. Results come back pickled, in rank
order. If any rank raises, the others are terminated at once and `WorkerError` carries the
failing rank's traceback; if the whole run exceeds `timeout_s`, every process is terminated
and `WorkerError` says which ranks had not finished. Nothing hangs: a rank that stops
answering (SIGSTOPped, frozen) is found by its heartbeat, a thread that stamps the time
every HEARTBEAT_S into shared memory; silent for `silent_rank_timeout_s`, it fails the run
with that rank named and every rank is stopped (a stopped process by SIGKILL). A
collective's own timeout would come only after torch.distributed's group timeout (30 min).

With `on_message`, `fn` is called as `fn(rank, world_size, post, *args)`: `post(obj)` sends a
picklable object to the parent, which calls `on_message(obj)` as it arrives (progress lines).

Root cause: when one rank dies, its peers usually fail too (connection reset in gloo). The
parent waits ROOT_CAUSE_GRACE_S after the first failure and names a rank that exited without
reporting (killed, os._exit, segfault) before one that raised, then the earliest report.

Nothing listens beyond this machine. The parent serves the rendezvous store on 127.0.0.1
only (`serve_rendezvous_store`): torch's TCPStore server listens on every interface
whatever host name it is given (torch 2.13: `ss -ltn` shows `*:PORT`) unless it is handed a
socket already bound, which we do. The ranks' gloo (and NCCL bootstrap) sockets use the
loopback interface (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, unless already set).

Ctrl-C: the ranks start with SIGINT blocked, so a Ctrl-C in the terminal reaches only the
parent (KeyboardInterrupt), which terminates them at once; they print no traceback.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import signal
import socket
import threading
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

POLL_S = 0.05
TERMINATE_GRACE_S = 2.0
ROOT_CAUSE_GRACE_S = 1.0
HEARTBEAT_S = 1.0               # how often a rank stamps that it is alive
SILENT_RANK_TIMEOUT_S = 30.0    # so a hung run ends within the minute (30 heartbeats missed)
# Before its first heartbeat a rank starts an interpreter and unpickles its function, which
# imports its module (torch: seconds, more on a busy machine): a longer grace than a hang.
STARTUP_GRACE_S = 120.0
LOOPBACK_HOST = "127.0.0.1"
LOOPBACK_INTERFACES = ("lo", "lo0")   # Linux, macOS


class WorkerError(RuntimeError):
    """A rank failed or the run timed out."""


def loopback_listener() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 at a port the kernel picks, held from now on (no
    other process can take the port between choosing and serving it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK_HOST, 0))
    sock.listen()
    return sock


def serve_rendezvous_store(timeout_s: float):
    """(store, port): a TCPStore server of a local run, listening on 127.0.0.1 only (module
    docstring). Keep the store alive while the ranks run: they are its clients."""
    import torch.distributed as dist

    sock = loopback_listener()
    port = sock.getsockname()[1]
    store = dist.TCPStore(LOOPBACK_HOST, port, None, True, timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=False, master_listen_fd=sock.detach())  # owns the fd
    return store, port


def _loopback_interface() -> str | None:
    names = {name for _, name in socket.if_nameindex()}
    return next((name for name in LOOPBACK_INTERFACES if name in names), None)


def _use_loopback_sockets() -> None:
    """Make gloo and NCCL open their sockets on the loopback interface (all ranks are here)."""
    interface = _loopback_interface()
    if interface:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)


def _beat(beats, rank: int) -> None:
    """Stamp `beats[rank]` with the time every HEARTBEAT_S, for as long as the process lives
    (a daemon thread: the GIL is free while the main thread waits in a collective)."""
    while True:
        beats[rank] = time.monotonic()
        time.sleep(HEARTBEAT_S)


def _worker(rank: int, world_size: int, port: int, backend: str, timeout_s: float,
            fn: Callable, args: tuple, results: mp.Queue, beats,
            with_post: bool = False) -> None:
    threading.Thread(target=_beat, args=(beats, rank), daemon=True).start()
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)  # one GPU per rank; NCCL refuses two ranks on one GPU
    _use_loopback_sockets()
    try:
        store = dist.TCPStore(LOOPBACK_HOST, port, world_size, False,
                              timeout=timedelta(seconds=timeout_s))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
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
                    group_timeout_s: float | None = None,
                    silent_rank_timeout_s: float = SILENT_RANK_TIMEOUT_S) -> list[Any]:
    """`fn(rank, world_size, *args)` on `world_size` fresh processes; their results by rank.

    `fn` and `args` must be picklable (a module-level function). timeout_s None: no limit on
    the whole run. group_timeout_s: torch.distributed's per-operation timeout (default
    timeout_s, or 30 minutes without one). silent_rank_timeout_s: how long a rank may go
    without a heartbeat (module docstring).
    """
    context = mp.get_context("spawn")
    results: mp.Queue = context.Queue()
    beats = context.Array("d", world_size, lock=False)   # monotonic time of each heartbeat
    group_timeout = group_timeout_s or timeout_s or 1800.0
    store, port = serve_rendezvous_store(group_timeout)
    procs = [context.Process(target=_worker, daemon=True,
                             args=(rank, world_size, port, backend, group_timeout, fn, args,
                                   results, beats, on_message is not None))
             for rank in range(world_size)]
    try:
        _start_with_sigint_blocked(procs)
        watch = HeartbeatWatch(beats, silent_rank_timeout_s)
        values = _collect(procs, results, world_size, timeout_s, on_message, watch)
    except BaseException:   # a failed rank, a timeout or Ctrl-C: nothing left to wait for
        _terminate(procs)
        raise
    finally:
        _stop(procs)
        del store   # closes the rendezvous server once no rank needs it
    return [values[r] for r in range(world_size)]


def _start_with_sigint_blocked(procs: list) -> None:
    """Start the processes with SIGINT blocked, a mask they keep across exec: a terminal's
    Ctrl-C then interrupts only the parent. A Ctrl-C meanwhile waits for the unblock."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for p in procs:
            p.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class HeartbeatWatch:
    """Which running rank has gone silent: no heartbeat for `timeout_s`, or none at all
    STARTUP_GRACE_S after the start."""

    def __init__(self, beats, timeout_s: float):
        self.beats, self.timeout_s = beats, timeout_s
        self.started = time.monotonic()

    def silent_rank(self, procs: list, finished: dict[int, Any]) -> int | None:
        now = time.monotonic()
        for rank, process in enumerate(procs):
            if rank in finished or not process.is_alive():
                continue
            last = self.beats[rank]
            if (last == 0.0 and now - self.started > STARTUP_GRACE_S) or \
                    (last > 0.0 and now - last > self.timeout_s):
                return rank
        return None


def _collect(procs: list, results: mp.Queue, world_size: int, timeout_s: float | None,
             on_message: Callable[[Any], None] | None,
             watch: HeartbeatWatch) -> dict[int, Any]:
    """The ranks' results by rank; WorkerError when one fails, stops answering, or the run
    times out."""
    values: dict[int, Any] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while len(values) < world_size:
        silent = watch.silent_rank(procs, values)
        if silent is not None:
            raise WorkerError(f"rank {silent} stopped answering: no heartbeat for "
                              f"{watch.timeout_s:.0f} s (a stopped or frozen process); every "
                              f"rank was stopped")
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
    return values


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


def _terminate(procs: list) -> None:
    """Terminate every rank still running (SIGTERM); `_stop` then reaps them."""
    for p in procs:
        if p.is_alive():
            p.terminate()


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
