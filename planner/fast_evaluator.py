"""Vectorised plan evaluation: many plans at once, compiled with numba.

This is the search's compiled form of the plan simulator (costmodel's list scheduler): the
same priority order and the same memory rule, for N plans at once (one candidate index per
call), in a numba kernel that runs the chains in parallel. What it simplifies, and the exact
simulator does not:
- reallocation time is a closed form of the two layouts (every destination device receives
  its whole shard, every source device sends an equal share of dp_dst full copies, over the
  intra-node link when both meshes sit in one node, else the inter-node link), not the
  per-tensor transfer schedule;
- a data transfer costs latency + payload / dp_dst / bandwidth when the meshes differ;
- per-device memory is the largest over the mesh's pipeline stages, and a reallocation's
  receive buffer is bounded by the receiver's whole new shard (the exact simulator uses the
  largest message of the transfer schedule), so it never calls a plan feasible that the
  exact memory rule rejects for that reason.
The search therefore re-prices its best plans with the exact simulator before choosing.

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

from dataclasses import dataclass

import numba
import numpy as np

from planner.search_tables import SearchTables

# Memory role of a call in the rule above.
TRAIN_CALL, TRAINED_MODEL_CALL, UNTRAINED_MODEL_CALL = 0, 1, 2


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


class FastEvaluator:
    """Evaluates arrays of plans against fixed `SearchTables`."""

    def __init__(self, tables: SearchTables):
        self.tables = tables
        calls, pairs, edges = tables.calls, tables.pairs, tables.edges
        num_calls = len(calls)
        self.offset = np.concatenate([[0], np.cumsum([len(c) for c in calls])[:-1]]).astype(
            np.int64)
        self.candidate = {name: _concat(tables, name, np.float64) for name in
                          ("time_s", "weights_bytes", "state_bytes", "activation_bytes",
                           "capacity_bytes", "dp", "tp", "pp")}
        self.lo = _concat(tables, "lo", np.int64)
        self.hi = _concat(tables, "hi", np.int64)
        self.placement = _concat(tables, "placement", np.int64)
        order = []
        for k in range(num_calls):
            order += [num_calls + p for p, pair in enumerate(pairs) if pair.dst == k]
            order.append(k)
        self.order = np.array(order, dtype=np.int64)
        self.edge_src = np.array([e.src for e in edges], dtype=np.int64)
        self.edge_dst = np.array([e.dst for e in edges], dtype=np.int64)
        self.edge_bytes = np.array([e.payload_bytes for e in edges], dtype=np.float64)
        self.pair_src = np.array([p.src for p in pairs], dtype=np.int64)
        self.pair_dst = np.array([p.dst for p in pairs], dtype=np.int64)
        self.pair_wraps = np.array([p.wraps for p in pairs], dtype=np.bool_)
        self.pair_weights = np.array([p.weights_bytes_total for p in pairs], dtype=np.float64)
        train_call = {c.model: k for k, c in enumerate(calls) if c.kind == "train"}
        self.memory_role = np.array(
            [TRAIN_CALL if c.kind == "train" else
             TRAINED_MODEL_CALL if c.model in train_call else UNTRAINED_MODEL_CALL
             for c in calls], dtype=np.int64)
        self.train_call_of = np.array([train_call.get(c.model, -1) for c in calls],
                                      dtype=np.int64)
        self.model_id = np.array([sorted({c.model for c in calls}).index(c.model)
                                  for c in calls], dtype=np.int64)
        self.links = np.array([tables.intra_node_bandwidth_bytes_per_s,
                               tables.intra_node_latency_s,
                               tables.inter_node_bandwidth_bytes_per_s,
                               tables.inter_node_latency_s], dtype=np.float64)
        self.device_node = np.asarray(tables.device_node, dtype=np.int64)

    def evaluate(self, choice: np.ndarray) -> Evaluation:
        choice = np.ascontiguousarray(np.atleast_2d(choice), dtype=np.int64)
        global_index = choice + self.offset[None, :]
        c = self.candidate
        time_s, overflow = _evaluate_kernel(
            global_index, c["time_s"], c["weights_bytes"], c["state_bytes"],
            c["activation_bytes"], c["capacity_bytes"], c["dp"], c["tp"], c["pp"], self.lo,
            self.hi, self.placement, self.order, self.edge_src, self.edge_dst, self.edge_bytes,
            self.pair_src, self.pair_dst, self.pair_wraps, self.pair_weights, self.memory_role,
            self.train_call_of, self.model_id, self.links, self.device_node,
            self.tables.num_iterations)
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
def _evaluate_kernel(index, time_s, weights, state, activation, capacity, dp, tp, pp, lo, hi,
                     placement, order, edge_src, edge_dst, edge_bytes, pair_src, pair_dst,
                     pair_wraps, pair_weights, memory_role, train_call_of, model_id, links,
                     device_node, num_iterations):
    num_plans, num_calls = index.shape
    num_pairs = pair_src.shape[0]
    num_types = num_calls + num_pairs
    out_time = np.empty(num_plans)
    out_overflow = np.empty(num_plans)
    for n in numba.prange(num_plans):
        g = index[n]
        # Device ranges of every node type: a call has one, a reallocation two.
        lo1 = np.empty(num_types, np.int64)
        hi1 = np.empty(num_types, np.int64)
        lo2 = np.empty(num_types, np.int64)
        hi2 = np.empty(num_types, np.int64)
        duration = np.empty(num_types)
        for k in range(num_calls):
            lo1[k] = lo2[k] = lo[g[k]]
            hi1[k] = hi2[k] = hi[g[k]]
            duration[k] = time_s[g[k]]
        for p in range(num_pairs):
            a, b = g[pair_src[p]], g[pair_dst[p]]
            x = num_calls + p
            lo1[x], hi1[x], lo2[x], hi2[x] = lo[a], hi[a], lo[b], hi[b]
            if placement[a] == placement[b]:
                duration[x] = 0.0
            else:
                bandwidth, latency = _link(lo[a], hi[a], lo[b], hi[b], device_node, links)
                recv = pair_weights[p] / (tp[b] * pp[b])
                send = pair_weights[p] * dp[b] / (hi[a] - lo[a])
                duration[x] = latency + max(recv, send) / bandwidth
        transfer = np.empty(edge_src.shape[0])
        for e in range(edge_src.shape[0]):
            a, b = g[edge_src[e]], g[edge_dst[e]]
            if lo[a] == lo[b] and hi[a] == hi[b]:
                transfer[e] = 0.0
            else:
                bandwidth, latency = _link(lo[a], hi[a], lo[b], hi[b], device_node, links)
                transfer[e] = latency + edge_bytes[e] / dp[b] / bandwidth
        latest_end = np.zeros(num_types)
        end = np.zeros(num_types)
        previous_end = np.zeros(num_types)
        first_iteration_end = 0.0
        iteration_end = 0.0
        for i in range(num_iterations):
            for t in range(num_types):
                previous_end[t] = end[t]
                end[t] = 0.0
            for x in order:
                ready = 0.0
                if x >= num_calls:
                    p = x - num_calls
                    if pair_wraps[p]:
                        if i == 0:
                            continue
                        ready = previous_end[pair_src[p]]
                    else:
                        ready = end[pair_src[p]]
                else:
                    for e in range(edge_src.shape[0]):
                        if edge_dst[e] == x:
                            ready = max(ready, end[edge_src[e]] + transfer[e])
                    for p in range(num_pairs):
                        if pair_dst[p] == x and not (pair_wraps[p] and i == 0):
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
        out_time[n] = (iteration_end - first_iteration_end) / (num_iterations - 1)
        # Memory: persistent terms, then each call's worst device.
        persistent = np.zeros(num_calls)
        extra = np.empty(num_calls)
        for k in range(num_calls):
            extra[k] = activation[g[k]]
            role = memory_role[k]
            if role == TRAIN_CALL:
                persistent[k] = state[g[k]]
            elif role == TRAINED_MODEL_CALL:
                if placement[g[k]] != placement[g[train_call_of[k]]]:
                    extra[k] += weights[g[k]]
            else:
                repeat = False
                for j in range(k):
                    if model_id[j] == model_id[k] and placement[g[j]] == placement[g[k]]:
                        repeat = True
                if not repeat:
                    persistent[k] = weights[g[k]]
        worst = -np.inf
        for c in range(num_calls + num_pairs):
            if c < num_calls:
                check_lo, check_hi, need, cap = lo1[c], hi1[c], extra[c], capacity[g[c]]
            else:
                # A reallocation's receivers hold a receive buffer (at most their whole new
                # shard) and, when the destination is a transient copy, its weights.
                p = c - num_calls
                b = g[pair_dst[p]]
                if placement[g[pair_src[p]]] == placement[b]:
                    continue
                check_lo, check_hi, cap = lo[b], hi[b], capacity[b]
                need = weights[b]
                k = pair_dst[p]
                if memory_role[k] == TRAINED_MODEL_CALL and \
                        placement[b] != placement[g[train_call_of[k]]]:
                    need += weights[b]
            # persistent(d) is piecewise constant: its maximum over a range is reached at
            # the range's first device or at the first device of a term inside the range.
            level_max = 0.0
            for q in range(-1, num_calls):
                point = check_lo if q < 0 else lo1[q]
                if point < check_lo or point >= check_hi:
                    continue
                level = 0.0
                for t in range(num_calls):
                    if lo1[t] <= point < hi1[t]:
                        level += persistent[t]
                level_max = max(level_max, level)
            worst = max(worst, (level_max + need - cap) / cap)
        out_overflow[n] = worst
    return out_time, out_overflow
