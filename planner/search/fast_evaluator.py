"""Vectorised plan evaluation: many plans at once, compiled with numba.

This is the search's compiled form of the plan simulator (costmodel's list scheduler): the
same priority order and the same memory rule, for N plans at once (one candidate index per
call), in a numba kernel that runs the chains in parallel. What it simplifies, and the exact
simulator does not:
- reallocation time is a closed form of the two layouts (every destination device receives
  its whole shard, every source device sends an equal share of dp_dst full copies, over the
  intra-node link when both meshes sit in one node, else the inter-node link: each device's
  share of its rail's NIC, as costmodel.comm.p2p_link prices the exact schedule's messages),
  not the per-tensor transfer schedule;
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

In code: `evaluate_plan` runs `_node_ranges_and_durations`, `_transfer_times`,
`_list_schedule` (the schedule above), `_memory_terms` and `_memory_overflow` (the memory
rule); `FastEvaluator.call_peak_bytes` returns the per-call peaks that rule compares with
the capacity, from the same compiled piece (`_call_peak_bytes`).
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
    order = list(tables.priority)
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

    def call_peak_bytes(self, choice: np.ndarray) -> np.ndarray:
        """Bytes per device at the peak of each call of one plan (array [num_calls]).

        `choice`: one candidate index per call. A call's peak is the persistent level over
        its mesh plus the call's extra, each term the largest over the mesh's pipeline
        stages: the quantity the memory rule compares with the call's capacity (module
        docstring), computed by the same compiled piece as `evaluate`'s overflow."""
        choice = np.asarray(choice, dtype=np.int64)
        sizes = self.tables.sizes
        if choice.shape != sizes.shape or (choice < 0).any() or (choice >= sizes).any():
            raise ValueError(f"choice {choice.tolist()} is not one candidate index per call "
                             f"(0 <= index < {sizes.tolist()})")
        peaks = np.empty(len(sizes))
        _call_peaks(choice + self.offset, self.kernel, peaks)
        return peaks


# Work arrays of one evaluation, reused from one evaluation to the next. Node types: call k
# is type k, the reallocation of pair p is type num_calls + p.
Scratch = namedtuple("Scratch", [
    "lo1", "hi1", "lo2", "hi2",   # device ranges of each node type: a call's mesh twice, a
    #                               reallocation's source mesh then destination mesh
    "duration",                   # seconds of each node type
    "end",                        # end of each node type's instance in this iteration
    "previous_end",               # ... and in the previous iteration
    "latest_end",                 # end of each node type's latest scheduled instance
    "transfer",                   # seconds of each data edge
    "persistent",                 # per call: the persistent memory term it starts on its mesh
    "extra",                      # per call: bytes it adds on its mesh while it runs
    "start_level",                # per call: the persistent level at its mesh's first device
    "shares_devices"])            # [type, type]: the two node types share a device

# Plans `_evaluate_many` evaluates with one scratch allocation (allocating per plan costs
# about a third of an evaluation; chunks this size still spread over all threads).
PLANS_PER_SCRATCH = 256


@numba.njit(cache=True, parallel=True)
def _evaluate_many(index, kt):
    """Evaluate every row of `index` (global candidate indices, one per call)."""
    num_plans = index.shape[0]
    out_time = np.empty(num_plans)
    out_overflow = np.empty(num_plans)
    num_chunks = (num_plans + PLANS_PER_SCRATCH - 1) // PLANS_PER_SCRATCH
    for chunk in numba.prange(num_chunks):
        scratch = new_scratch(kt)
        for n in range(chunk * PLANS_PER_SCRATCH,
                       min(num_plans, (chunk + 1) * PLANS_PER_SCRATCH)):
            out_time[n], out_overflow[n] = evaluate_plan(index[n], kt, scratch)
    return out_time, out_overflow


@numba.njit(cache=True)
def _call_peaks(g, kt, out):
    """`out[k]`: bytes per device at the peak of call k of plan `g` (global indices)."""
    scratch = new_scratch(kt)
    _node_ranges_and_durations(g, kt, scratch)
    _memory_terms(g, kt, scratch)
    for k in range(g.shape[0]):
        out[k] = _call_peak_bytes(k, scratch)


@numba.njit(cache=True)
def new_scratch(kt):
    """The work arrays of `evaluate_plan` (a `Scratch`), allocated once per chain or chunk of
    plans, not once per evaluation: two allocations, cut into named views."""
    num_calls = kt.memory_role.shape[0]
    num_types = num_calls + kt.pair_src.shape[0]
    num_edges = kt.edge_src.shape[0]
    ints = np.empty(4 * num_types, np.int64)
    floats = np.empty(4 * num_types + num_edges + 3 * num_calls)
    t, e = num_types, 4 * num_types + num_edges
    return Scratch(ints[0:t], ints[t:2 * t], ints[2 * t:3 * t], ints[3 * t:4 * t],
                   floats[0:t], floats[t:2 * t], floats[2 * t:3 * t], floats[3 * t:4 * t],
                   floats[4 * t:e], floats[e:e + num_calls],
                   floats[e + num_calls:e + 2 * num_calls], floats[e + 2 * num_calls:],
                   np.empty((t, t), np.bool_))


# Compiled without numba's runtime (`_nrt=False`), so without reference counting: numba
# counts references to arrays, and each piece below that takes the KernelTables or the
# Scratch namedtuple would count once per field per evaluation (atomic updates its pruning
# mostly leaves in place, shared by the threads: 15-20% of an evaluation). That is what
# lets the evaluation be split into pieces at no cost. The rules that follow:
# `evaluate_plan` allocates nothing (numba refuses to compile an allocation there), and its
# pieces are `inline="always"`, so they are compiled as part of it, not as functions of
# their own with reference counting.
@numba.njit(cache=True, _nrt=False)
def evaluate_plan(g, kt, scratch):
    """(iteration seconds, worst relative memory overflow) of one plan (module docstring).

    `g`: the global candidate index of every call; `scratch`: work arrays from `new_scratch`
    (overwritten). The schedule needs the node ranges, durations and transfer times; the
    memory rule needs the call ranges."""
    _node_ranges_and_durations(g, kt, scratch)
    _transfer_times(g, kt, scratch.transfer)
    iteration_s = _list_schedule(kt, scratch)
    _memory_terms(g, kt, scratch)
    return iteration_s, _memory_overflow(g, kt, scratch)


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


@numba.njit(cache=True, inline="always")
def _reallocation_s(model_bytes, src_devices, dst_dp, dst_tp, dst_pp, bandwidth, latency):
    """Seconds to move a model of `model_bytes` (all its weights) between two placements,
    uncalibrated: every receiver gets its whole new shard (model / (tp pp)) and every sender
    sends an equal share of dp_dst full copies, over one link."""
    receive_bytes = model_bytes / (dst_tp * dst_pp)
    send_bytes = model_bytes * dst_dp / src_devices
    return latency + max(receive_bytes, send_bytes) / bandwidth


@numba.njit(cache=True, inline="always")
def _node_ranges_and_durations(g, kt, scratch):
    """Fill the device ranges and the duration of every node type of plan `g`, and which
    node types share a device (`_fill_shares_devices`). A reallocation between equal
    placements takes no time."""
    num_calls = g.shape[0]
    lo, hi, placement, dp, tp, pp = kt.lo, kt.hi, kt.placement, kt.dp, kt.tp, kt.pp
    pair_src, pair_dst, pair_weights = kt.pair_src, kt.pair_dst, kt.pair_weights
    device_node, links, time_s = kt.device_node, kt.links, kt.time_s
    overhead_s, scale = kt.move_overhead_s, kt.move_scale
    lo1, hi1, lo2, hi2 = scratch.lo1, scratch.hi1, scratch.lo2, scratch.hi2
    duration = scratch.duration
    for k in range(num_calls):
        lo1[k] = lo2[k] = lo[g[k]]
        hi1[k] = hi2[k] = hi[g[k]]
        duration[k] = time_s[g[k]]
    for p in range(pair_src.shape[0]):
        a, b = g[pair_src[p]], g[pair_dst[p]]
        x = num_calls + p
        lo1[x], hi1[x], lo2[x], hi2[x] = lo[a], hi[a], lo[b], hi[b]
        if placement[a] == placement[b]:
            duration[x] = 0.0
        else:
            bandwidth, latency = _link(lo[a], hi[a], lo[b], hi[b], device_node, links)
            duration[x] = overhead_s + scale * _reallocation_s(
                pair_weights[p], hi[a] - lo[a], dp[b], tp[b], pp[b], bandwidth, latency)
    _fill_shares_devices(lo1, hi1, lo2, hi2, scratch.shares_devices)


@numba.njit(cache=True, inline="always")
def _fill_shares_devices(lo1, hi1, lo2, hi2, shares):
    """`shares[x, y]`: node types x and y share a device (their ranges overlap; a
    reallocation has two). Computed once per plan, where the list schedule would otherwise
    test the ranges of every pair of nodes in every iteration."""
    num_types = lo1.shape[0]
    for x in range(num_types):
        shares[x, x] = True
        for y in range(x + 1, num_types):
            overlap = (_ranges_overlap(lo1[x], hi1[x], lo1[y], hi1[y])
                       or _ranges_overlap(lo1[x], hi1[x], lo2[y], hi2[y])
                       or _ranges_overlap(lo2[x], hi2[x], lo1[y], hi1[y])
                       or _ranges_overlap(lo2[x], hi2[x], lo2[y], hi2[y]))
            shares[x, y] = shares[y, x] = overlap


@numba.njit(cache=True, inline="always")
def _transfer_times(g, kt, transfer):
    """`transfer[e]`: seconds data edge e delays its consumer in plan `g`. Zero on the same
    placement, else latency + payload / dp of the consumer / bandwidth (each replica
    receives its rows; an upper bound where the meshes overlap), calibrated."""
    lo, hi, placement, dp = kt.lo, kt.hi, kt.placement, kt.dp
    edge_src, edge_dst, edge_bytes = kt.edge_src, kt.edge_dst, kt.edge_bytes
    device_node, links = kt.device_node, kt.links
    overhead_s, scale = kt.move_overhead_s, kt.move_scale
    for e in range(edge_src.shape[0]):
        a, b = g[edge_src[e]], g[edge_dst[e]]
        if placement[a] == placement[b]:
            transfer[e] = 0.0
        else:
            bandwidth, latency = _link(lo[a], hi[a], lo[b], hi[b], device_node, links)
            transfer[e] = overhead_s + scale * (latency + edge_bytes[e] / dp[b] / bandwidth)


@numba.njit(cache=True, inline="always")
def _list_schedule(kt, scratch):
    """Seconds per iteration of the list schedule (module docstring), from the ranges,
    durations and transfer times in `scratch`; overwrites its end times."""
    num_calls = scratch.persistent.shape[0]
    num_types = scratch.duration.shape[0]
    order, num_iterations = kt.order, kt.num_iterations
    pair_src, pair_wraps, pair_into = kt.pair_src, kt.pair_wraps, kt.pair_into
    edge_src, edges_into, edges_into_offset = kt.edge_src, kt.edges_into, kt.edges_into_offset
    duration, transfer = scratch.duration, scratch.transfer
    end, previous_end, latest_end = scratch.end, scratch.previous_end, scratch.latest_end
    latest_end[:] = 0.0
    end[:] = 0.0
    first_iteration_end = 0.0
    iteration_end = 0.0
    for i in range(num_iterations):
        for t in range(num_types):
            previous_end[t] = end[t]
            end[t] = 0.0
        for x in order:
            ready = 0.0
            if x >= num_calls:
                # A reallocation waits for its source call; a wrapping one moves the model
                # of the previous iteration's call, so it first runs in iteration 1.
                p = x - num_calls
                if pair_wraps[p]:
                    if i == 0:
                        continue
                    ready = previous_end[pair_src[p]]
                else:
                    ready = end[pair_src[p]]
            else:
                # A call waits for its data (each edge plus its transfer) and its model.
                for j in range(edges_into_offset[x], edges_into_offset[x + 1]):
                    e = edges_into[j]
                    ready = max(ready, end[edge_src[e]] + transfer[e])
                p = pair_into[x]
                if p >= 0 and not (pair_wraps[p] and i == 0):
                    ready = max(ready, end[num_calls + p])
            free = _devices_free_s(x, scratch.shares_devices, latest_end)
            end[x] = max(ready, free) + duration[x]
            latest_end[x] = end[x]
        iteration_end = 0.0
        for k in range(num_calls):
            iteration_end = max(iteration_end, end[k])
        if i == 0:
            first_iteration_end = iteration_end
    return (iteration_end - first_iteration_end) / (num_iterations - 1)


@numba.njit(cache=True, inline="always")
def _devices_free_s(x, shares_devices, latest_end):
    """When all devices of node type x are free: the latest end of any node type sharing a
    device with it (meshes are contiguous ranges, so overlapping ranges share devices)."""
    free = 0.0
    for y in range(latest_end.shape[0]):
        if latest_end[y] > free and shares_devices[x, y]:
            free = latest_end[y]
    return free


@numba.njit(cache=True, inline="always")
def _is_transient_copy(k, g, memory_role, placement, train_call_of):
    """Call k is a non-train call of a trained model placed differently from its train
    call: its weights live on its mesh only while it runs."""
    return memory_role[k] == TRAINED_MODEL_CALL and \
        placement[g[k]] != placement[g[train_call_of[k]]]


@numba.njit(cache=True, inline="always")
def _memory_terms(g, kt, scratch):
    """Per call k of plan `g` (memory rule of the module docstring): `persistent[k]`, the
    bytes per device its placement keeps resident on its mesh (a train call's train state;
    an untrained model's weights on the first call of each distinct placement; else 0),
    and `extra[k]`, the bytes it adds while it runs (working set, plus its weights when it
    is a transient copy). Every value is the largest over the mesh's pipeline stages. Then
    `start_level[k]`: the persistent level at the first device of call k's mesh (when
    persistent[k] is not 0), which `_persistent_peak_bytes` reads. Needs the call ranges."""
    persistent, extra = scratch.persistent, scratch.extra
    placement, memory_role, train_call_of, model_id = (kt.placement, kt.memory_role,
                                                       kt.train_call_of, kt.model_id)
    state, weights, activation = kt.state, kt.weights, kt.activation
    for k in range(g.shape[0]):
        c = g[k]
        persistent[k] = 0.0
        extra[k] = activation[c]
        role = memory_role[k]
        if role == TRAIN_CALL:
            persistent[k] = state[c]
        elif role == TRAINED_MODEL_CALL:
            if _is_transient_copy(k, g, memory_role, placement, train_call_of):
                extra[k] += weights[c]
        else:
            repeat = False
            for j in range(k):
                if model_id[j] == model_id[k] and placement[g[j]] == placement[c]:
                    repeat = True
            if not repeat:
                persistent[k] = weights[c]
    lo1, hi1, start_level = scratch.lo1, scratch.hi1, scratch.start_level
    for q in range(g.shape[0]):
        start_level[q] = 0.0 if persistent[q] == 0.0 else _persistent_level(
            lo1[q], persistent, lo1, hi1)


@numba.njit(cache=True, inline="always")
def _persistent_level(device, persistent, lo1, hi1):
    """The persistent level on `device`: the sum of the terms whose call mesh covers it."""
    level = 0.0
    for t in range(persistent.shape[0]):
        if persistent[t] != 0.0 and lo1[t] <= device < hi1[t]:
            level += persistent[t]
    return level


@numba.njit(cache=True, inline="always")
def _persistent_peak_bytes(check_lo, check_hi, scratch):
    """The largest persistent level over devices [check_lo, check_hi): the sum of the
    persistent terms whose call mesh [lo1, hi1) covers a device. The level is piecewise
    constant and only rises where a non-zero term starts, so its maximum over a range is
    reached at the range's first device or at the first device of a term inside it (whose
    level `_memory_terms` keeps in start_level)."""
    persistent, lo1, hi1 = scratch.persistent, scratch.lo1, scratch.hi1
    start_level = scratch.start_level
    level_max = _persistent_level(check_lo, persistent, lo1, hi1)
    for q in range(persistent.shape[0]):
        if persistent[q] != 0.0 and check_lo <= lo1[q] < check_hi:
            level_max = max(level_max, start_level[q])
    return level_max


@numba.njit(cache=True, inline="always")
def _call_peak_bytes(k, scratch):
    """Bytes per device at the peak of call k: persistent level over its mesh + its extra."""
    return _persistent_peak_bytes(scratch.lo1[k], scratch.hi1[k], scratch) + scratch.extra[k]


@numba.njit(cache=True, inline="always")
def _memory_overflow(g, kt, scratch):
    """Worst (peak - capacity) / capacity over the calls and reallocations of plan `g`
    (<= 0 when the plan fits); needs `_memory_terms` and the call ranges in `scratch`."""
    placement, capacity, weights = kt.placement, kt.capacity, kt.weights
    pair_src, pair_dst, lo, hi = kt.pair_src, kt.pair_dst, kt.lo, kt.hi
    memory_role, train_call_of = kt.memory_role, kt.train_call_of
    worst = -np.inf
    for k in range(g.shape[0]):
        peak = _call_peak_bytes(k, scratch)
        worst = max(worst, (peak - capacity[g[k]]) / capacity[g[k]])
    for p in range(pair_src.shape[0]):
        k = pair_dst[p]
        b = g[k]
        if placement[g[pair_src[p]]] == placement[b]:
            continue          # the model stays where it is: nothing is received
        # The receivers hold a receive buffer (at most their whole new shard) and, when
        # the destination call is a transient copy, its weights.
        need = weights[b]
        if _is_transient_copy(k, g, memory_role, placement, train_call_of):
            need += weights[b]
        peak = _persistent_peak_bytes(lo[b], hi[b], scratch) + need
        worst = max(worst, (peak - capacity[b]) / capacity[b])
    return worst
