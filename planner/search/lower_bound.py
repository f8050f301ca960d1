"""A lower bound on the iteration time of every plan of a search space, under the cost model.

What it bounds: the simulator's steady-state time V = (e(K-1) - e(0)) / (K-1), where e(i)
is the latest end of iteration i's nodes and K the simulated iterations
(costmodel.simulator rule 5; the fast evaluator computes the same schedule). Both list-
schedule the augmented graph in one fixed priority order: a node starts once its
predecessors ended (plus a transfer on a data edge) and its devices are free, and it holds
its devices for its duration. The bound holds for every plan whose executions are
candidates of the tables that fit in memory alone (a plan with another execution fits
nowhere, builder.py's pruning step 1); the builder's second pruning step keeps the fastest
candidate of each placement, so the full and the pruned tables give the same bound.

Relaxation: every call takes at least the time of its fastest candidate (w), and holds at
least the device-seconds of its cheapest one (time x devices, d); reallocations and
transfers take at least zero (a calibration's move scale and overhead are non-negative).
The plan-independent precedences are those of the augmented graph (data edges, a model's
consecutive calls, the wrap from a model's last call of iteration i to its first call of
i+1: the parameter version) plus one more: a call of iteration i+1 runs on the same mesh
as in iteration i and comes later in the priority order, so it starts after it ("self" edges).

Why a finite K needs care: V is not the cycle mean of the steady state. Iteration 0 has no
wrapping reallocation into it and starts on idle devices, so e(0) may end late relative to
the chain that sets later iterations, and a bound like "each model's chain of calls"
applied to e(K-1) - e(0) needs a path that starts where e(0) is reached. Two arguments give
such paths; V is at least the larger of the two.

1. Sink argument. Some call y that has no successor inside an iteration reaches e(0) (a
   successor ends no earlier). Every node of a later iteration reachable from y(0) starts
   after e(0) and ends by e(K-1) (a call of iteration j < K-1 ends before the same call of
   K-1 starts, on its own mesh), so e(K-1) - e(0) is at least the longest path out of y(0),
   and at least the device-seconds of y(0)'s descendants over the number of devices. A
   later node that does not descend from y(0) is in that window too when its call shares
   a device with y (it comes after y(0) in the priority order); when it shares none, y has
   at most the devices that call leaves free. The bound takes the least over these cases
   (which calls share a device with y) and over the sinks, since y is not known.
2. Source argument. Walk back from y(0) along the constraint that set each start (the
   simulator's critical path): it ends at a node n0 that starts at time 0, and every link
   (a predecessor, or an earlier node in the priority order on a shared device) repeats in
   iteration K-1 with the same durations, so y(K-1) ends at least L0 = e(0) after n0(K-1)
   starts: e(K-1) - e(0) >= start of n0(K-1). That start is at least the longest path to it
   from time 0, and at least the device-seconds of its ancestors (all done by then) over
   the number of devices. A node before n0(K-1) in the priority order whose call shares a
   device with n0 also ends before it starts (its ancestors too); a call that shares none
   leaves n0 at most the devices it does not use. Split on these cases as in argument 1.
   n0 is not known either: take the least over the calls that can start at time 0 (a
   reallocation runs after its source call, so a chain it starts also has that call's
   start as a bound).

Both arguments are checked in tests/search/test_lower_bound.py against the exhaustive
optimum and random plans, under the fast evaluator and the exact simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.search.tables import SearchTables


@dataclass(frozen=True)
class LowerBound:
    """A lower bound on the iteration time, from the two arguments of the module docstring
    (each the least, over the unknown sink or source, of its path and device-seconds
    terms, per iteration)."""

    sink_s: float               # argument 1
    source_s: float             # argument 2

    @property
    def iteration_s(self) -> float:
        return max(self.sink_s, self.source_s)


def gap_text(iteration_s: float, bound: LowerBound | float) -> str:
    """'within X% of a lower bound (Y s)' for a plan of `iteration_s` seconds."""
    bound_s = bound.iteration_s if isinstance(bound, LowerBound) else float(bound)
    return f"within {gap_fraction(iteration_s, bound_s) * 100:.1f}% of a lower bound " \
           f"({bound_s:.2f} s)"


def gap_fraction(iteration_s: float, bound_s: float) -> float:
    """How far a plan is above the bound: iteration / bound - 1."""
    return iteration_s / bound_s - 1.0


@dataclass(frozen=True)
class CallOptions:
    """Per call, over its candidates that fit alone: seconds, devices and device-seconds."""

    seconds: list[np.ndarray]
    devices: list[np.ndarray]

    def fastest(self, k: int, max_devices: float = np.inf) -> tuple[float, float]:
        """(least seconds, least device-seconds) of call k on at most `max_devices`
        devices; (inf, inf) when no candidate is that small."""
        small = self.devices[k] <= max_devices
        if not small.any():
            return np.inf, np.inf
        seconds, devices = self.seconds[k][small], self.devices[k][small]
        return float(seconds.min()), float((seconds * devices).min())

    def fewest_devices(self, k: int) -> int:
        return int(self.devices[k].min())


def call_options(tables: SearchTables) -> CallOptions | None:
    """The candidates of every call that fit alone; None when some call has none (no plan
    fits)."""
    seconds, devices = [], []
    for table in tables.calls:
        fits = table.fits_alone()
        if not fits.any():
            return None
        seconds.append(table.time_s[fits])
        devices.append((table.hi - table.lo)[fits])
    return CallOptions(seconds, devices)


class UnrolledGraph:
    """The plan-independent precedences over K iterations (module docstring); node
    i * num_calls + k is call k of iteration i, numbered in a topological order."""

    def __init__(self, tables: SearchTables):
        self.num_calls = n = len(tables.calls)
        self.num_iterations = num_iterations = int(tables.num_iterations)
        inner = [(e.src, e.dst) for e in tables.edges]
        inner += [(p.src, p.dst) for p in tables.pairs if not p.wraps]
        self.sinks = [k for k in range(n) if not any(a == k for a, _ in inner)]
        order = _topological(n, inner)
        position = {k: r for r, k in enumerate(order)}
        self.preds: list[list[int]] = [[] for _ in range(n * num_iterations)]
        for i in range(num_iterations):
            for a, b in inner:
                self.preds[i * n + b].append(i * n + a)
            if i == 0:
                continue
            for k in range(n):
                self.preds[i * n + k].append((i - 1) * n + k)     # self edge
            for p in tables.pairs:
                if p.wraps:
                    self.preds[i * n + p.dst].append((i - 1) * n + p.src)
        self.order = [i * n + k for i in range(num_iterations) for k in order]
        assert all(position[a] < position[b] for a, b in inner)

    def earliest_starts(self, weight: np.ndarray) -> np.ndarray:
        """Longest path from time 0 to each node's start (nodes take `weight[call]`)."""
        n = self.num_calls
        start = np.zeros(n * self.num_iterations)
        for v in self.order:
            for u in self.preds[v]:
                start[v] = max(start[v], start[u] + weight[u % n])
        return start

    def longest_from(self, sources: dict[int, float], weight: np.ndarray) -> np.ndarray:
        """End of each node on the longest path from `sources` (node -> its earliest end),
        nodes taking `weight[call]`; -inf where no source reaches."""
        n = self.num_calls
        end = np.full(n * self.num_iterations, -np.inf)
        for node, at in sources.items():
            end[node] = at
        for v in self.order:
            for u in self.preds[v]:
                if np.isfinite(end[u]):
                    end[v] = max(end[v], end[u] + weight[v % n])
        return end

    def ancestors(self, node: int) -> np.ndarray:
        """Mask of the strict ancestors of `node`."""
        mask = np.zeros(self.num_calls * self.num_iterations, dtype=bool)
        stack = list(self.preds[node])
        while stack:
            u = stack.pop()
            if not mask[u]:
                mask[u] = True
                stack.extend(self.preds[u])
        return mask


def _topological(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """The calls in an order where every edge goes forward (the workflow is acyclic)."""
    indegree = [0] * n
    for _, b in edges:
        indegree[b] += 1
    ready = [k for k in range(n) if indegree[k] == 0]
    order = []
    while ready:
        k = ready.pop(0)
        order.append(k)
        for a, b in edges:
            if a == k:
                indegree[b] -= 1
                if indegree[b] == 0:
                    ready.append(b)
    assert len(order) == n, "the workflow's calls are not acyclic"
    return order


# Each argument splits on which calls outside the chain share a device with its sink or
# source (2^m cases); beyond this many such calls it takes the case where none does.
MAX_SPLIT_CALLS = 10


def lower_bound(tables: SearchTables) -> LowerBound | None:
    """The bound of the module docstring for every plan of `tables`; None when no plan fits
    (some call fits nowhere alone)."""
    options = call_options(tables)
    if options is None:
        return None
    graph = UnrolledGraph(tables)
    num_devices = len(tables.device_node)
    sink = min(_split_cases(graph, options, y, num_devices, _sink_case) for y in graph.sinks)
    start = graph.earliest_starts(np.array([options.fastest(k)[0]
                                            for k in range(graph.num_calls)]))
    source = min(_split_cases(graph, options, k, num_devices, _source_case)
                 for k in range(graph.num_calls) if start[k] == 0.0)
    span = graph.num_iterations - 1
    return LowerBound(sink_s=sink / span, source_s=source / span)


def _split_cases(graph: UnrolledGraph, options: CallOptions, call: int, num_devices: int,
                 case_bound) -> float:
    """The least of `case_bound` over which calls outside its chain share a device with
    `call` (the sink y or the source n0 of the module docstring)."""
    outside = case_bound(graph, options, call, num_devices, None)
    others = sorted({int(v) % graph.num_calls for v in np.flatnonzero(outside)})
    if len(others) > MAX_SPLIT_CALLS:
        return case_bound(graph, options, call, num_devices, [], ())   # assumes nothing
    best = np.inf
    for case in range(1 << len(others)):
        apart = [z for bit, z in enumerate(others) if case >> bit & 1]
        best = min(best, case_bound(graph, options, call, num_devices, apart,
                                    [z for z in others if z not in apart]))
    return best


def _restricted(options: CallOptions, call: int, num_devices: int,
                apart: list[int]) -> np.ndarray | None:
    """(seconds, device-seconds) per call, `call` on at most the devices the calls `apart`
    leave free; None when no candidate of `call` is that small."""
    limit = num_devices - max((options.fewest_devices(z) for z in apart), default=0)
    fastest = np.array([options.fastest(k, limit if k == call else np.inf)
                        for k in range(len(options.seconds))])
    return fastest if np.isfinite(fastest[call, 0]) else None


def _sink_case(graph: UnrolledGraph, options: CallOptions, y: int, num_devices: int,
               apart: list[int] | None, sharing: tuple[int, ...] = ()):
    """Argument 1 for sink y. With `apart` None: the mask of later nodes that do not descend
    from y(0). Else: e(K-1) - e(0) is at least this when the calls `apart` share no device
    with y and the calls `sharing` each share one. A sharing call runs after y(0) in every
    later iteration, so its later nodes, like y(0)'s descendants and theirs, start after
    e(0) and end by e(K-1); a call apart leaves y at most the devices it does not use."""
    n, size = graph.num_calls, graph.num_calls * graph.num_iterations
    later = np.arange(size) >= n
    if apart is None:
        seconds = np.array([options.fastest(k)[0] for k in range(n)])
        return later & ~np.isfinite(graph.longest_from({y: 0.0}, seconds))
    fastest = _restricted(options, y, num_devices, apart)
    if fastest is None:
        return np.inf
    sources = {y: 0.0}
    sources.update({v: fastest[v % n, 0] for v in np.flatnonzero(later)
                    if v % n in sharing})
    end = graph.longest_from(sources, fastest[:, 0])
    window = later & np.isfinite(end)
    device_seconds = np.tile(fastest[:, 1], graph.num_iterations)
    return max(float(end[window].max()), float(device_seconds[window].sum()) / num_devices)


def _source_case(graph: UnrolledGraph, options: CallOptions, k: int, num_devices: int,
                 apart: list[int] | None, sharing: tuple[int, ...] = ()):
    """Argument 2 for a call k that can start at time 0: a bound on the start of its node
    in the last iteration. With `apart` None: the mask of nodes before that node in the
    priority order that are not its ancestors. Else: the bound when the calls `apart`
    share no device with k and the calls `sharing` each share one (their nodes before it
    in the priority order, and those nodes' ancestors, end before it starts)."""
    n, size = graph.num_calls, graph.num_calls * graph.num_iterations
    target = (graph.num_iterations - 1) * n + k
    ancestors = graph.ancestors(target)
    before = np.arange(size) < target     # the calls of an iteration in priority order
    if apart is None:
        return before & ~ancestors
    fastest = _restricted(options, k, num_devices, apart)
    if fastest is None:
        return np.inf
    start = graph.earliest_starts(fastest[:, 0])
    ends = start + np.tile(fastest[:, 0], graph.num_iterations)
    window = ancestors.copy()
    start_s = float(start[target])
    for v in np.flatnonzero(before & ~ancestors):
        if v % n in sharing:
            window |= graph.ancestors(v)
            window[v] = True
            start_s = max(start_s, float(ends[v]))
    device_seconds = np.tile(fastest[:, 1], graph.num_iterations)
    return max(start_s, float(device_seconds[window].sum()) / num_devices)
