"""Pricing the mesh shapes of the search tables in several processes at once.

Building the tables is pricing every call on one representative mesh per mesh shape
(planner/search/builder.py full_tables), and the shapes are independent of each other: each
costs some hundred scalar cost-model evaluations in Python, so one process prices about
30 shapes a second (`benchmarks/search_speed.py`: 114 shapes in 3.8 s at 128 H100, 131 in
35 s at 1,024). `price_shapes` hands the shapes to up to `workers` processes: this one and
forked children, each taking the next unpriced shape of the priority order from a shared
counter, so the shapes priced by a deadline are the same prefix of the order as in one
process, only longer.

The stopping rule is full_tables' own, on what all workers have priced: the first shape is
always priced; after it, no new shape is taken once the deadline has expired and every call
has a candidate that fits alone on some priced shape (`fits`, shared between the workers).
Without a deadline (or one that does not expire) every shape is priced, and the result is
the same as one process's: `price_one` is a pure function of the shape.

Children are forked (they inherit the workflow, cluster and profile tables without pickling
them, and start in milliseconds); they send each shape's prices back pickled through a pipe
as soon as it is priced, and a thread here reads and unpacks them while this process prices
its own shapes (_Receiver). Where fork is not available or not safe (not Linux), or there
are too few shapes to pay for a fork (MIN_SHAPES_PER_WORKER), the shapes are priced here, in
order. A child's exception is raised here; a child that dies without a word is an error
naming its exit code.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from planner.search.deadline import Deadline

# A worker is forked only when it gets at least this many shapes to price: a fork and the
# pickled answer cost some milliseconds, one shape some 10-30 ms.
MIN_SHAPES_PER_WORKER = 8


def available_workers() -> int:
    """The CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:      # no affinity API on this platform
        return max(1, os.cpu_count() or 1)


def worker_count(num_shapes: int, workers: int | None) -> int:
    """Processes to price `num_shapes` shapes with: `workers` (None: available_workers()),
    at most one per MIN_SHAPES_PER_WORKER shapes, and 1 where fork is not used."""
    wanted = available_workers() if workers is None else workers
    if not sys.platform.startswith("linux") or \
            "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(wanted, num_shapes // MIN_SHAPES_PER_WORKER))


class _SharedProgress:
    """The next position in the priority order to price and which calls fit somewhere, as
    shared memory of the workers (or plain values in one process)."""

    def __init__(self, num_calls: int, shared: bool):
        context = multiprocessing.get_context("fork") if shared else None
        self._next = context.Value("q", 0) if shared else None
        self._fits = context.Array("b", num_calls) if shared else None
        self._local_next = 0
        self._local_fits = [False] * num_calls

    def claim(self) -> int:
        """The next position of the order to price (each is handed out once)."""
        if self._next is None:
            step, self._local_next = self._local_next, self._local_next + 1
            return step
        with self._next.get_lock():
            step = self._next.value
            self._next.value = step + 1
        return step

    def record_fits(self, fits: Sequence[bool]) -> None:
        if self._fits is None:
            self._local_fits = [a or bool(b) for a, b in zip(self._local_fits, fits)]
            return
        with self._fits.get_lock():
            for k, fit in enumerate(fits):
                if fit:
                    self._fits[k] = 1

    def all_fit(self) -> bool:
        if self._fits is None:
            return all(self._local_fits)
        with self._fits.get_lock():
            return all(self._fits[:])


def _price_claimed(order: Sequence[int], price_one: Callable[[int], Any],
                   fits_of: Callable[[Any], Sequence[bool]], progress: _SharedProgress,
                   deadline: Deadline | None,
                   on_priced: Callable[[int, Any], None] | None = None) -> dict[int, Any]:
    """Price shapes of `order` as they are claimed, until none is left or the stopping
    rule (module docstring) says stop; `on_priced(shape, prices)` is told of each at once."""
    priced: dict[int, Any] = {}
    while True:
        step = progress.claim()
        if step >= len(order):
            return priced
        if step > 0 and deadline is not None and deadline.expired() and progress.all_fit():
            return priced
        prices = price_one(order[step])
        priced[order[step]] = prices
        if on_priced is not None:
            on_priced(order[step], prices)
        progress.record_fits(fits_of(prices))


def _child(connection, order, price_one, fits_of, progress, deadline, pack) -> None:
    """A forked worker: sends ("shape", shape, pack(prices)) of each shape it prices as soon
    as it is priced, then ("done", None), or ("error", exception)."""
    try:
        _price_claimed(order, price_one, fits_of, progress, deadline,
                       lambda shape, prices: connection.send(("shape", shape, pack(prices))))
        answer = ("done", None)
    except BaseException as err:        # noqa: BLE001 - every failure goes to the parent
        answer = ("error", err)
    try:
        connection.send(answer)
    except Exception as err:            # noqa: BLE001 - e.g. an exception that won't pickle
        connection.send(("error", RuntimeError(f"pricing worker failed: {err!r}")))
    connection.close()


class _Receiver(threading.Thread):
    """Reads a child's messages (_child) as they come, beside this process's own pricing:
    the unpacking of a child's prices, which costs about as much as their transfer, then
    overlaps the pricing instead of following it (and the shape claims balance the two).
    A thread waiting on the pipe holds no lock; unpacking shares this process's core."""

    def __init__(self, child, connection, unpack: Callable[[Any], Any]):
        super().__init__(daemon=True)
        self.child, self.connection, self.unpack = child, connection, unpack
        self.priced: dict[int, Any] = {}
        self.failure: BaseException | None = None
        self.died = False          # the pipe closed without a last message

    def run(self) -> None:
        try:
            while True:
                message = self.connection.recv()
                if message[0] == "shape":
                    self.priced[message[1]] = self.unpack(message[2])
                    continue
                if message[0] == "error":
                    self.failure = message[1]
                return
        except EOFError:
            self.died = True
        except BaseException as err:        # noqa: BLE001 - raised by the caller
            self.failure = err


def price_shapes(order: Sequence[int], price_one: Callable[[int], Any],
                 fits_of: Callable[[Any], Sequence[bool]], num_calls: int,
                 deadline: Deadline | None = None, workers: int | None = None,
                 pack: Callable[[Any], Any] = lambda prices: prices,
                 unpack: Callable[[Any], Any] = lambda packed: packed) -> dict[int, Any]:
    """`price_one(shape)` of the shapes of `order` priced before the stopping rule (module
    docstring) stopped, by shape; `fits_of(prices)` says per call whether some of its
    candidates on that shape fit alone (there are `num_calls`); `workers` processes at most
    (None: one per available core). A child sends `pack(prices)` of each shape, and this
    process keeps `unpack` of it: a form that pickles faster than the prices themselves."""
    count = worker_count(len(order), workers)
    progress = _SharedProgress(num_calls, shared=count > 1)
    if count == 1:
        return _price_claimed(order, price_one, fits_of, progress, deadline)
    context = multiprocessing.get_context("fork")
    children, receivers = [], []
    try:
        for _ in range(count - 1):
            receive, send = context.Pipe(duplex=False)
            child = context.Process(target=_child, daemon=True,
                                    args=(send, order, price_one, fits_of, progress, deadline,
                                          pack))
            child.start()
            send.close()
            children.append((child, receive))
        for child, receive in children:
            receivers.append(_Receiver(child, receive, unpack))
            receivers[-1].start()
        priced = _price_claimed(order, price_one, fits_of, progress, deadline)
        for receiver in receivers:
            receiver.join()
            if receiver.died:
                receiver.child.join()
                raise RuntimeError(f"a table-pricing worker process died (exit code "
                                   f"{receiver.child.exitcode})")
            if receiver.failure is not None:
                raise receiver.failure
            priced.update(receiver.priced)
        return priced
    finally:
        for child, receive in children:
            if child.is_alive():
                child.terminate()
            child.join()
        for receiver in receivers:
            receiver.join()
        for _, receive in children:
            receive.close()
