"""Vectorised plan evaluation: many plans at once, compiled with numba.

This is the search's compiled form of the plan simulator (costmodel's list scheduler): the
same priority order and the same memory rule, for N plans at once (one candidate index per
call), in a numba kernel that runs the chains in parallel. What it simplifies, and the exact
simulator does not:
- reallocation time is a closed form of the two layouts (every destination device receives
  its whole shard, every source device sends an equal share of dp_dst full copies, over the
  intra-node link when both meshes sit in one node, else the inter-node link), not the
  per-tensor transfer schedule;
- a data transfer costs latency + payload / dp_dst / bandwidth when the placements differ
  (an upper bound where the two meshes overlap and some rows are already local);
- per-device memory is the largest over the mesh's pipeline stages, and a reallocation's
  receive buffer is bounded by the receiver's whole new shard (the exact simulator uses the
  largest message of the transfer schedule), so it never calls a plan feasible that the
  exact memory rule rejects for that reason.
The search therefore re-prices its best plans with the exact simulator before choosing.
With a calibration, moves cost move_overhead_s + move_scale x the closed form, as in
costmodel.calibration.

Schedule semantics (list scheduling in a fixed priority order): iteration by iteration; in
each, the calls in workflow order, each preceded by the reallocation nodes into it (one node
per consecutive-call pair of a model, zero time when the two placements are equal). A node
starts when its inputs are ready and all of its devices are free; a reallocation occupies the
union of both meshes. A device is free after the latest earlier node on it, so it suffices to
remember, per node type, the end of its latest instance (meshes are contiguous ranges).
Iteration time = (end of the last iteration - end of the first) / (iterations - 1), an
iteration's end being the latest end of its calls.

Memory rule (per device d): persistent(d) = trained models' train-layout state (weights,
gradients, optimizer) on the train mesh + untrained models' weights on each distinct
placement; each call c adds its working memory, plus its own weights when it is a non-train
call of a trained model placed differently from its train call. Feasible iff for every call
c and device d of its mesh, persistent(d) + extra(c) <= capacity, and likewise for every
reallocation on its receiving devices (receive buffer, plus the new weights when the
destination call is a transient copy).
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numba
import numpy as np

from planner.search.tables import SearchTables

# Memory role of a call in the rule above.
TRAIN_CALL, TRAINED_MODEL_CALL, UNTRAINED_MODEL_CALL = 0, 1, 2

# The tables as flat arrays for the compiled kernels (numba reads namedtuple fields).
# Candidate arrays are indexed by global candidate index = offset[call] + local index.
KernelTables = namedtuple("KernelTables", [
    "time_s", "weights", "state", "activation", "capacity", "dp", "tp", "pp", "lo", "hi",
    "placement", "order", "edge_src", "edge_dst", "edge_bytes", "pair_src", "pair_dst",
    "pair_wraps", "pair_weights", "memory_role", "train_call_of", "model_id", "links",
    "device_node", "num_iterations", "move_scale", "move_overhead_s", "edges_into_offset",
    "edges_into", "pair_into"])


@dataclass
class Evaluation:
    """Results for N plans."""

    iteration_s: np.ndarray          # steady-state seconds per iteration
    overflow: np.ndarray             # worst (peak - capacity) / capacity; <= 0 when it fits

    @property
    def feasible(self) -> np.ndarray:
        return self.overflow <= 0.0


def _concat(tables: SearchTables, field: str, dtype) -> np.ndarray:
    return np.concatenate([getattr(c, field) for c in tables.calls]).astype(dtype)


def kernel_tables(tables: SearchTables) -> KernelTables:
    """Flatten `tables` into the arrays the kernels read."""
    calls, pairs, edges = tables.calls, tables.pairs, tables.edges
    order = []
    for k in range(len(calls)):
        order += [len(calls) + p for p, pair in enumerate(pairs) if pair.dst == k]
        order.append(k)
    train_call = {c.model: k for k, c in enumerate(calls) if c.kind == "train"}
    models = sorted({c.model for c in calls})
    assert all(sum(p.dst == k for p in pairs) <= 1 for k in range(len(calls))), pairs
    # A candidate's fields side by side in memory (one row each), so that the random
    # candidate lookups of an evaluation touch one cache line per call rather than one per
    # field: the per-field arrays below are column views of these rows.
    floats = np.stack([_concat(tables, name, np.float64) for name in (
        "time_s", "weights_bytes", "state_bytes", "activation_bytes", "capacity_bytes", "dp",
        "tp", "pp")], axis=1)
    ints = np.stack([_concat(tables, name, np.int64) for name in ("lo", "hi", "placement")],
                    axis=1)
    return KernelTables(
        time_s=floats[:, 0], weights=floats[:, 1], state=floats[:, 2], activation=floats[:, 3],
        capacity=floats[:, 4], dp=floats[:, 5], tp=floats[:, 6], pp=floats[:, 7],
        lo=ints[:, 0], hi=ints[:, 1], placement=ints[:, 2],
        order=np.array(order, dtype=np.int64),
        edge_src=np.array([e.src for e in edges], dtype=np.int64),
        edge_dst=np.array([e.dst for e in edges], dtype=np.int64),
        edge_bytes=np.array([e.payload_bytes for e in edges], dtype=np.float64),
        pair_src=np.array([p.src for p in pairs], dtype=np.int64),
        pair_dst=np.array([p.dst for p in pairs], dtype=np.int64),
        pair_wraps=np.array([p.wraps for p in pairs], dtype=np.bool_),
        pair_weights=np.array([p.weights_bytes_total for p in pairs], dtype=np.float64),
        memory_role=np.array([TRAIN_CALL if c.kind == "train" else
                              TRAINED_MODEL_CALL if c.model in train_call else
                              UNTRAINED_MODEL_CALL for c in calls], dtype=np.int64),
        train_call_of=np.array([train_call.get(c.model, -1) for c in calls], dtype=np.int64),
        model_id=np.array([models.index(c.model) for c in calls], dtype=np.int64),
        links=np.array([tables.intra_node_bandwidth_bytes_per_s, tables.intra_node_latency_s,
                        tables.inter_node_bandwidth_bytes_per_s, tables.inter_node_latency_s],
                       dtype=np.float64),
        device_node=np.asarray(tables.device_node, dtype=np.int64),
        num_iterations=int(tables.num_iterations),
        move_scale=float(tables.move_scale), move_overhead_s=float(tables.move_overhead_s),
        # data edges into each call: edges_into[edges_into_offset[k]:edges_into_offset[k+1]]
        edges_into_offset=np.cumsum([0] + [sum(e.dst == k for e in edges)
                                           for k in range(len(calls))]).astype(np.int64),
        edges_into=np.array([i for k in range(len(calls)) for i, e in enumerate(edges)
                             if e.dst == k], dtype=np.int64),
        # the reallocation node into each call (a call follows at most one call of its model)
        pair_into=np.array([next((p for p, pair in enumerate(pairs) if pair.dst == k), -1)
                            for k in range(len(calls))], dtype=np.int64))


class FastEvaluator:
    """Evaluates arrays of plans against fixed `SearchTables`."""

    def __init__(self, tables: SearchTables):
        self.tables = tables
        sizes = [len(c) for c in tables.calls]
        self.offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.kernel = kernel_tables(tables)

    def evaluate(self, choice: np.ndarray) -> Evaluation:
        choice = np.ascontiguousarray(np.atleast_2d(choice), dtype=np.int64)
        time_s, overflow = _evaluate_many(choice + self.offset[None, :], self.kernel)
        return Evaluation(iteration_s=time_s, overflow=overflow)


@numba.njit(cache=True, inline="always")
def _link(lo_a, hi_a, lo_b, hi_b, device_node, links):
    """(bandwidth, latency): intra-node when both meshes sit in one node."""
    node = device_node[lo_a]
    if device_node[hi_a - 1] == node and device_node[lo_b] == node and \
            device_node[hi_b - 1] == node:
        return links[0], links[1]
    return links[2], links[3]


@numba.njit(cache=True, inline="always")
def _ranges_overlap(lo_a, hi_a, lo_b, hi_b):
    return lo_a < hi_b and lo_b < hi_a


@numba.njit(cache=True, parallel=True)
def _evaluate_many(index, kt):
    """Evaluate every row of `index` (global candidate indices, one per call)."""
    num_plans, num_calls = index.shape
    out_time = np.empty(num_plans)
    out_overflow = np.empty(num_plans)
    for n in numba.prange(num_plans):
        int_scratch, float_scratch = new_scratch(num_calls, kt)
        out_time[n], out_overflow[n] = evaluate_plan(index[n], kt, int_scratch, float_scratch)
    return out_time, out_overflow


@numba.njit(cache=True)
def new_scratch(num_calls, kt):
    """Work arrays of `evaluate_plan`, allocated once per chain (not once per evaluation:
    the allocations cost about a third of an evaluation)."""
    num_types = num_calls + kt.pair_src.shape[0]
    return (np.empty(4 * num_types, np.int64),
            np.empty(4 * num_types + kt.edge_src.shape[0] + 2 * num_calls))


@numba.njit(cache=True)
def evaluate_plan(g, kt, int_scratch, float_scratch):
    """(iteration seconds, worst relative memory overflow) of one plan (module docstring).

    `int_scratch`, `float_scratch`: work arrays from `new_scratch` (overwritten)."""
    num_calls = g.shape[0]
    lo, hi, placement = kt.lo, kt.hi, kt.placement
    pair_src, pair_dst, edge_src, edge_dst = kt.pair_src, kt.pair_dst, kt.edge_src, kt.edge_dst
    num_pairs = pair_src.shape[0]
    num_types = num_calls + num_pairs
    num_edges = edge_src.shape[0]
    # Device ranges of every node type: a call has one, a reallocation two.
    lo1 = int_scratch[0:num_types]
    hi1 = int_scratch[num_types:2 * num_types]
    lo2 = int_scratch[2 * num_types:3 * num_types]
    hi2 = int_scratch[3 * num_types:4 * num_types]
    duration = float_scratch[0:num_types]
    latest_end = float_scratch[num_types:2 * num_types]
    end = float_scratch[2 * num_types:3 * num_types]
    previous_end = float_scratch[3 * num_types:4 * num_types]
    transfer = float_scratch[4 * num_types:4 * num_types + num_edges]
    persistent = float_scratch[4 * num_types + num_edges:4 * num_types + num_edges + num_calls]
    extra = float_scratch[4 * num_types + num_edges + num_calls:]
    for k in range(num_calls):
        lo1[k] = lo2[k] = lo[g[k]]
        hi1[k] = hi2[k] = hi[g[k]]
        duration[k] = kt.time_s[g[k]]
    for p in range(num_pairs):
        a, b = g[pair_src[p]], g[pair_dst[p]]
        x = num_calls + p
        lo1[x], hi1[x], lo2[x], hi2[x] = lo[a], hi[a], lo[b], hi[b]
        if placement[a] == placement[b]:
            duration[x] = 0.0
        else:
            bandwidth, latency = _link(lo[a], hi[a], lo[b], hi[b], kt.device_node, kt.links)
            recv = kt.pair_weights[p] / (kt.tp[b] * kt.pp[b])
            send = kt.pair_weights[p] * kt.dp[b] / (hi[a] - lo[a])
            duration[x] = kt.move_overhead_s + kt.move_scale * (
                latency + max(recv, send) / bandwidth)
    for e in range(num_edges):
        a, b = g[edge_src[e]], g[edge_dst[e]]
        if placement[a] == placement[b]:
            transfer[e] = 0.0
        else:
            bandwidth, latency = _link(lo[a], hi[a], lo[b], hi[b], kt.device_node, kt.links)
            transfer[e] = kt.move_overhead_s + kt.move_scale * (
                latency + kt.edge_bytes[e] / kt.dp[b] / bandwidth)
    latest_end[:] = 0.0
    end[:] = 0.0
    first_iteration_end = 0.0
    iteration_end = 0.0
    for i in range(kt.num_iterations):
        for t in range(num_types):
            previous_end[t] = end[t]
            end[t] = 0.0
        for x in kt.order:
            ready = 0.0
            if x >= num_calls:
                p = x - num_calls
                if kt.pair_wraps[p]:
                    if i == 0:
                        continue
                    ready = previous_end[pair_src[p]]
                else:
                    ready = end[pair_src[p]]
            else:
                for j in range(kt.edges_into_offset[x], kt.edges_into_offset[x + 1]):
                    e = kt.edges_into[j]
                    ready = max(ready, end[edge_src[e]] + transfer[e])
                p = kt.pair_into[x]
                if p >= 0 and not (kt.pair_wraps[p] and i == 0):
                    ready = max(ready, end[num_calls + p])
            free = 0.0
            for y in range(num_types):
                if latest_end[y] > free and (
                        _ranges_overlap(lo1[x], hi1[x], lo1[y], hi1[y])
                        or _ranges_overlap(lo1[x], hi1[x], lo2[y], hi2[y])
                        or _ranges_overlap(lo2[x], hi2[x], lo1[y], hi1[y])
                        or _ranges_overlap(lo2[x], hi2[x], lo2[y], hi2[y])):
                    free = latest_end[y]
            end[x] = max(ready, free) + duration[x]
            latest_end[x] = end[x]
        iteration_end = 0.0
        for k in range(num_calls):
            iteration_end = max(iteration_end, end[k])
        if i == 0:
            first_iteration_end = iteration_end
    iteration_s = (iteration_end - first_iteration_end) / (kt.num_iterations - 1)
    # Memory: persistent terms, then each call's and each reallocation's worst device.
    persistent[:] = 0.0
    for k in range(num_calls):
        extra[k] = kt.activation[g[k]]
        role = kt.memory_role[k]
        if role == TRAIN_CALL:
            persistent[k] = kt.state[g[k]]
        elif role == TRAINED_MODEL_CALL:
            if placement[g[k]] != placement[g[kt.train_call_of[k]]]:
                extra[k] += kt.weights[g[k]]
        else:
            repeat = False
            for j in range(k):
                if kt.model_id[j] == kt.model_id[k] and placement[g[j]] == placement[g[k]]:
                    repeat = True
            if not repeat:
                persistent[k] = kt.weights[g[k]]
    worst = -np.inf
    for c in range(num_calls + num_pairs):
        if c < num_calls:
            check_lo, check_hi, need, cap = lo1[c], hi1[c], extra[c], kt.capacity[g[c]]
        else:
            # A reallocation's receivers hold a receive buffer (at most their whole new
            # shard) and, when the destination is a transient copy, its weights.
            p = c - num_calls
            b = g[pair_dst[p]]
            if placement[g[pair_src[p]]] == placement[b]:
                continue
            check_lo, check_hi, cap = lo[b], hi[b], kt.capacity[b]
            need = kt.weights[b]
            k = pair_dst[p]
            if kt.memory_role[k] == TRAINED_MODEL_CALL and \
                    placement[b] != placement[g[kt.train_call_of[k]]]:
                need += kt.weights[b]
        # persistent(d) is piecewise constant: its maximum over a range is reached at the
        # range's first device or at the first device of a term inside the range.
        level_max = 0.0
        for q in range(-1, num_calls):
            if q >= 0 and persistent[q] == 0.0:
                continue      # persistent(d) only rises where a non-zero term starts
            point = check_lo if q < 0 else lo1[q]
            if point < check_lo or point >= check_hi:
                continue
            level = 0.0
            for t in range(num_calls):
                if persistent[t] != 0.0 and lo1[t] <= point < hi1[t]:
                    level += persistent[t]
            level_max = max(level_max, level)
        worst = max(worst, (level_max + need - cap) / cap)
    return iteration_s, worst
