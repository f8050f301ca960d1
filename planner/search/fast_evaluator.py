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

Memory rule (per device d, costmodel/plan_memory.py): persistent(d) = trained models'
train-layout state (weights, gradients, optimizer) on the train mesh + untrained models'
weights on each distinct placement. A non-train call of a trained model placed differently
from its train call holds a transient weights copy on its mesh, alive (as the runtime keeps
it) from the reallocation into that call through the reallocation out of it, in the
priority order below, wrapping round into the next iteration; copies(x, d) = the copies
alive on d while node x runs. Feasible iff for every call c and device d of its mesh,
persistent(d) + copies(c, d) + working(c) <= capacity, and for every reallocation r,
persistent(d) + copies(r, d) <= capacity on its source mesh and, plus the receive buffer,
on its destination mesh. Each term is the largest over the mesh's pipeline stages; the
level persistent + copies is maximised over the mesh's devices exactly (both are sums of
per-mesh constants), so with no call pipelined the call peaks equal the exact ones.

In code: `evaluate_plan` runs `fill_plan` (every call's candidate fields, every node's
device ranges and duration, the transfer times, which nodes share devices, into a Scratch),
then `_list_schedule` (the schedule above), `_memory_terms` and `_memory_overflow` (the
memory rule), which read only the Scratch (`price`). The search's moves change one call:
`apply_call` updates only what that call touches, and `price` then gives the same numbers
bit for bit as `evaluate_plan` of the changed plan. `FastEvaluator.call_peak_bytes` returns
the per-call peaks the memory rule compares with the capacity, from the same pieces.
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
    "edges_into", "pair_into", "pair_out_of", "position", "pairs_of_call_offset",
    "pairs_of_call", "edges_of_call_offset", "edges_of_call"])


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
    assert all(sum(p.dst == k for p in pairs) <= 1 and sum(p.src == k for p in pairs) <= 1
               for k in range(len(calls))), pairs
    assert sorted(order) == list(range(len(calls) + len(pairs))), order
    floats, ints = _candidate_rows(tables)
    return KernelTables(
        time_s=floats[:, 0], weights=floats[:, 1], state=floats[:, 2], activation=floats[:, 3],
        capacity=floats[:, 4], dp=ints[:, 10], tp=ints[:, 11], pp=ints[:, 12],
        lo=ints[:, 13], hi=ints[:, 14], placement=ints[:, 15],
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
                            for k in range(len(calls))], dtype=np.int64),
        # ... and the reallocation node out of it (to the model's next call), likewise
        pair_out_of=np.array([next((p for p, pair in enumerate(pairs) if pair.src == k), -1)
                              for k in range(len(calls))], dtype=np.int64),
        # each node type's place in the priority order: order[position[x]] == x
        position=np.argsort(np.array(order, dtype=np.int64)).astype(np.int64),
        # what a change of call k's candidate touches (apply_call): the reallocations into
        # and out of it, pairs_of_call[pairs_of_call_offset[k]:pairs_of_call_offset[k+1]],
        # and its data edges, likewise
        **_touching("pairs_of_call", [[p for p, pair in enumerate(pairs)
                                       if k in (pair.src, pair.dst)]
                                      for k in range(len(calls))]),
        **_touching("edges_of_call", [[i for i, e in enumerate(edges) if k in (e.src, e.dst)]
                                      for k in range(len(calls))]))


# A candidate's fields in one 64-byte row (one cache line: the random candidate lookups of
# a move touch one line per call rather than one per field; at 1,024 devices the tables are
# far larger than the caches): five float64 (seconds and bytes), then six int32 (the
# degrees, which the kernels read into float64 exactly, the mesh, and the placement as a
# dense rank of the tables' placement ids, which the kernels only compare for equality).
_ROW_FLOATS = ("time_s", "weights_bytes", "state_bytes", "activation_bytes", "capacity_bytes")
_ROW_INTS = ("dp", "tp", "pp", "lo", "hi", "placement")
_ROW_BYTES = 64


def _candidate_rows(tables: SearchTables) -> tuple[np.ndarray, np.ndarray]:
    """(floats, ints): the candidates' rows as [candidates, 8] float64 and the same memory
    as [candidates, 16] int32, the rows aligned to 64 bytes; the float fields are columns
    0-4 of `floats`, the int fields columns 10-15 of `ints`."""
    total = int(sum(len(c) for c in tables.calls))
    words = _ROW_BYTES // 8
    raw = np.zeros(total * words + words)
    skip = (-raw.ctypes.data % _ROW_BYTES) // 8
    floats = raw[skip:skip + total * words].reshape(total, words)
    ints = floats.view(np.int32)
    for column, name in enumerate(_ROW_FLOATS):
        floats[:, column] = _concat(tables, name, np.float64)
    for column, name in enumerate(_ROW_INTS):
        values = _concat(tables, name, np.int64)
        if name == "placement":
            values = _dense_rank(values)
        ints[:, 2 * len(_ROW_FLOATS) + column] = values
        assert (ints[:, 2 * len(_ROW_FLOATS) + column] == values).all(), name
    return floats, ints


def _dense_rank(values: np.ndarray) -> np.ndarray:
    """Each value's rank among the distinct values (equal values, equal ranks): a stable
    argsort, 10x faster than np.unique(return_inverse=True) on the millions of candidates
    of 1,024 devices."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])])
    return rank


def _touching(name: str, lists: list[list[int]]) -> dict[str, np.ndarray]:
    """`lists` (one list of indices per call) as the flat arrays name and name_offset."""
    return {f"{name}_offset": np.cumsum([0] + [len(x) for x in lists]).astype(np.int64),
            name: np.array([i for x in lists for i in x], dtype=np.int64)}


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

        `choice`: one candidate index per call. A call's peak is the largest over its mesh
        of the persistent level plus the transient copies alive while it runs, plus the
        call's working set, each term the largest over the mesh's pipeline stages: the
        quantity the memory rule compares with the call's capacity (module
        docstring), computed by the same compiled piece as `evaluate`'s overflow."""
        choice = np.asarray(choice, dtype=np.int64)
        sizes = self.tables.sizes
        if choice.shape != sizes.shape or (choice < 0).any() or (choice >= sizes).any():
            raise ValueError(f"choice {choice.tolist()} is not one candidate index per call "
                             f"(0 <= index < {sizes.tolist()})")
        peaks = np.empty(len(sizes))
        _call_peaks(choice + self.offset, self.kernel, peaks)
        return peaks


# The state of one plan's evaluation, kept from one evaluation to the next: a Metropolis
# move changes one call's candidate, and `apply_call` recomputes only what that call
# touches (its own fields, the reallocations into and out of it, the data edges it
# sends or receives, the device sharing of those node types), then the schedule and the
# memory rule, which read only these arrays, never the candidate tables. Node types: call
# k is type k, the reallocation of pair p is type num_calls + p.
Scratch = namedtuple("Scratch", [
    "lo1", "hi1", "lo2", "hi2",   # device ranges of each node type: a call's mesh twice, a
    #                               reallocation's source mesh then destination mesh
    "placement",                  # per call: its candidate's placement id
    "dp", "tp", "pp",             # per call: its candidate's degrees
    "weights", "state", "activation", "capacity",   # per call: its candidate's memory bytes
    "duration",                   # seconds of each node type
    "end",                        # end of each node type's instance in this iteration
    "previous_end",               # ... and in the previous iteration
    "latest_end",                 # end of each node type's latest scheduled instance
    "transfer",                   # seconds of each data edge
    "persistent",                 # per call: the persistent memory term it starts on its mesh
    "extra",                      # per call: its working set on its mesh while it runs
    "start_level",                # per call: the persistent level at its mesh's first device
    "held_peak",                  # per call: the largest persistent level plus transient
    #                               copies alive while it runs, over its mesh
    "terms",                      # the calls whose persistent term is not 0, in call order
    "copies",                     # the calls that hold a transient copy, in call order
    "copy_first", "copy_span",    # ... and each one's lifetime (`_copy_lifetime`)
    "share_count",                # per node type: the node types it shares a device with
    "shares_devices"])            # [type, type]: the two node types share a device

# Per call: fields copied from its candidate's row by `_load_call`, each the float64 of
# Scratch (dp, tp, pp, weights, state, activation, capacity).
_CALL_FLOATS = 7
_CALL_FLOAT_SLOTS = 4         # persistent, extra, start_level, held_peak

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
    fill_plan(g, kt, scratch)
    count, num_copies = _memory_terms(kt, scratch)
    for k in range(g.shape[0]):
        out[k] = _held_peak_bytes(k, k, count, num_copies, kt, scratch) + scratch.extra[k]


@numba.njit(cache=True)
def scratch_sizes(kt):
    """(int64 count, float64 count, node types) of one Scratch: the sizes of the buffers
    `scratch_view` cuts (the shares matrix is [node types, node types] of bool)."""
    num_calls = kt.memory_role.shape[0]
    num_types = num_calls + kt.pair_src.shape[0]
    num_edges = kt.edge_src.shape[0]
    return (5 * num_types + 5 * num_calls,
            4 * num_types + num_edges + (_CALL_FLOATS + _CALL_FLOAT_SLOTS) * num_calls,
            num_types)


@numba.njit(cache=True, inline="always")
def scratch_view(ints, floats, shares, kt):
    """A Scratch cut from buffers of the sizes `scratch_sizes` gives (views, no copies): the
    search keeps one per chain in rows of larger buffers. Inlined, so that a caller compiled
    without reference counting makes it without counting the 27 views."""
    c = kt.memory_role.shape[0]
    t = c + kt.pair_src.shape[0]
    e = 4 * t + kt.edge_src.shape[0]
    return Scratch(ints[0:t], ints[t:2 * t], ints[2 * t:3 * t], ints[3 * t:4 * t],
                   ints[4 * t:4 * t + c],
                   floats[e:e + c], floats[e + c:e + 2 * c], floats[e + 2 * c:e + 3 * c],
                   floats[e + 3 * c:e + 4 * c], floats[e + 4 * c:e + 5 * c],
                   floats[e + 5 * c:e + 6 * c], floats[e + 6 * c:e + 7 * c],
                   floats[0:t], floats[t:2 * t], floats[2 * t:3 * t], floats[3 * t:4 * t],
                   floats[4 * t:e],
                   floats[e + 7 * c:e + 8 * c], floats[e + 8 * c:e + 9 * c],
                   floats[e + 9 * c:e + 10 * c], floats[e + 10 * c:e + 11 * c],
                   ints[4 * t + c:4 * t + 2 * c], ints[4 * t + 2 * c:4 * t + 3 * c],
                   ints[4 * t + 3 * c:4 * t + 4 * c], ints[4 * t + 4 * c:4 * t + 5 * c],
                   ints[4 * t + 5 * c:5 * t + 5 * c], shares)


@numba.njit(cache=True)
def new_scratch(kt):
    """The work arrays of `evaluate_plan` (a `Scratch`), allocated once per chain or chunk of
    plans, not once per evaluation."""
    num_ints, num_floats, num_types = scratch_sizes(kt)
    return scratch_view(np.empty(num_ints, np.int64), np.empty(num_floats),
                        np.empty((num_types, num_types), np.bool_), kt)


# Compiled without numba's runtime (`_nrt=False`), so without reference counting: numba
# counts references to arrays, and each piece below that takes the KernelTables or the
# Scratch namedtuple would count once per field per evaluation (atomic updates its pruning
# mostly leaves in place, shared by the threads: 15-20% of an evaluation). That is what
# lets the evaluation be split into pieces at no cost. The rules that follow:
# `evaluate_plan`, `apply_call` and `price` allocate nothing (numba refuses to compile an
# allocation there), and their pieces are `inline="always"`, so they are compiled as part
# of them, not as functions of their own with reference counting. (Inlining `apply_call`
# and `price` into the search's step too gains ~4% and costs ~10x its compile time.)
@numba.njit(cache=True, _nrt=False)
def evaluate_plan(g, kt, scratch):
    """(iteration seconds, worst relative memory overflow) of one plan (module docstring).

    `g`: the global candidate index of every call; `scratch`: work arrays from `new_scratch`
    (overwritten: afterwards they hold plan `g`, for `apply_call` and `price`)."""
    fill_plan(g, kt, scratch)
    return _price(kt, scratch)


@numba.njit(cache=True, _nrt=False)
def apply_call(k, c, kt, scratch):
    """Make `scratch` (holding a plan, from `fill_plan` or an earlier change) hold that plan
    with call k on the global candidate c: call k's fields, the durations and device ranges
    of the reallocations into and out of it, the transfer times of its data edges, and the
    device sharing of those node types. Also undoes a change: apply the old candidate."""
    _load_call(k, c, kt, scratch)
    num_calls = scratch.placement.shape[0]
    pairs_of_call, edges_of_call = kt.pairs_of_call, kt.edges_of_call
    first_pair, last_pair = kt.pairs_of_call_offset[k], kt.pairs_of_call_offset[k + 1]
    for j in range(first_pair, last_pair):
        _update_pair(pairs_of_call[j], kt, scratch)
    for j in range(kt.edges_of_call_offset[k], kt.edges_of_call_offset[k + 1]):
        _update_edge(edges_of_call[j], kt, scratch)
    _update_shares_row(k, scratch)
    for j in range(first_pair, last_pair):
        _update_shares_row(num_calls + pairs_of_call[j], scratch)


@numba.njit(cache=True, inline="always")
def fill_plan(g, kt, scratch):
    """Make `scratch` hold plan `g` (global candidate indices): every call's fields, every
    node type's range and duration, every transfer time, which node types share a device."""
    for k in range(g.shape[0]):
        _load_call(k, g[k], kt, scratch)
    for p in range(kt.pair_src.shape[0]):
        _update_pair(p, kt, scratch)
    for e in range(kt.edge_src.shape[0]):
        _update_edge(e, kt, scratch)
    _fill_shares_devices(scratch.lo1, scratch.hi1, scratch.lo2, scratch.hi2,
                         scratch.shares_devices, scratch.share_count)


@numba.njit(cache=True, _nrt=False)
def price(kt, scratch):
    """(iteration seconds, worst relative overflow) of the plan `scratch` holds (from
    `fill_plan` or `apply_call`), reading only `scratch`."""
    return _price(kt, scratch)


@numba.njit(cache=True, inline="always")
def _price(kt, scratch):
    """`price`, inlined into `evaluate_plan` (a call hands both namedtuples over field by
    field: ~20% of an evaluation of a whole plan)."""
    iteration_s = _list_schedule(kt, scratch)
    count, num_copies = _memory_terms(kt, scratch)
    return iteration_s, _memory_overflow(kt, scratch, count, num_copies)


@numba.njit(cache=True, inline="always")
def _load_call(k, c, kt, scratch):
    """Copy the fields of global candidate c into call k's slots of `scratch` (its mesh as
    node type k's both ranges, its time as type k's duration)."""
    scratch.lo1[k] = scratch.lo2[k] = kt.lo[c]
    scratch.hi1[k] = scratch.hi2[k] = kt.hi[c]
    scratch.duration[k] = kt.time_s[c]
    scratch.placement[k] = kt.placement[c]
    scratch.dp[k] = kt.dp[c]
    scratch.tp[k] = kt.tp[c]
    scratch.pp[k] = kt.pp[c]
    scratch.weights[k] = kt.weights[c]
    scratch.state[k] = kt.state[c]
    scratch.activation[k] = kt.activation[c]
    scratch.capacity[k] = kt.capacity[c]


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
    """Without a branch (`&`, not `and`): the outcomes are as good as random to the branch
    predictor."""
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
def _update_pair(p, kt, scratch):
    """Device ranges and duration of pair p's reallocation from its two calls' fields in
    `scratch`. A reallocation between equal placements takes no time."""
    lo1, hi1, lo2, hi2, placement = (scratch.lo1, scratch.hi1, scratch.lo2, scratch.hi2,
                                     scratch.placement)
    a, b = kt.pair_src[p], kt.pair_dst[p]
    x = placement.shape[0] + p
    lo1[x], hi1[x], lo2[x], hi2[x] = lo1[a], hi1[a], lo1[b], hi1[b]
    if placement[a] == placement[b]:
        scratch.duration[x] = 0.0
    else:
        bandwidth, latency = _link(lo1[a], hi1[a], lo1[b], hi1[b], kt.device_node, kt.links)
        scratch.duration[x] = kt.move_overhead_s + kt.move_scale * _reallocation_s(
            kt.pair_weights[p], hi1[a] - lo1[a], scratch.dp[b], scratch.tp[b], scratch.pp[b],
            bandwidth, latency)


@numba.njit(cache=True, inline="always")
def _update_edge(e, kt, scratch):
    """`transfer[e]`: seconds data edge e delays its consumer. Zero on the same placement,
    else latency + payload / dp of the consumer / bandwidth (each replica receives its
    rows; an upper bound where the meshes overlap), calibrated."""
    lo1, hi1, placement = scratch.lo1, scratch.hi1, scratch.placement
    a, b = kt.edge_src[e], kt.edge_dst[e]
    if placement[a] == placement[b]:
        scratch.transfer[e] = 0.0
    else:
        bandwidth, latency = _link(lo1[a], hi1[a], lo1[b], hi1[b], kt.device_node, kt.links)
        scratch.transfer[e] = kt.move_overhead_s + kt.move_scale * (
            latency + kt.edge_bytes[e] / scratch.dp[b] / bandwidth)


@numba.njit(cache=True, inline="always")
def _types_share(x, y, lo1, hi1, lo2, hi2):
    """Node types x and y share a device (their ranges overlap; a reallocation has two)."""
    return (_ranges_overlap(lo1[x], hi1[x], lo1[y], hi1[y])
            or _ranges_overlap(lo1[x], hi1[x], lo2[y], hi2[y])
            or _ranges_overlap(lo2[x], hi2[x], lo1[y], hi1[y])
            or _ranges_overlap(lo2[x], hi2[x], lo2[y], hi2[y]))


@numba.njit(cache=True, inline="always")
def _fill_shares_devices(lo1, hi1, lo2, hi2, shares, share_count):
    """`shares[x, y]`: node types x and y share a device, and `share_count[x]`: the number
    of node types x shares a device with (itself included). Computed once per plan (and per
    changed node type, `_update_shares_row`), where the list schedule would otherwise test
    the ranges of every pair of nodes in every iteration."""
    num_types = lo1.shape[0]
    for x in range(num_types):
        shares[x, x] = True
        for y in range(x + 1, num_types):
            shares[x, y] = shares[y, x] = _types_share(x, y, lo1, hi1, lo2, hi2)
    for x in range(num_types):
        count = 0
        for y in range(num_types):
            count += shares[x, y]
        share_count[x] = count


@numba.njit(cache=True, inline="always")
def _update_shares_row(x, scratch):
    """Row and column x of `shares_devices`, and the `share_count`s they change, after
    node type x's ranges changed."""
    lo1, hi1, lo2, hi2, shares, share_count = (scratch.lo1, scratch.hi1, scratch.lo2,
                                               scratch.hi2, scratch.shares_devices,
                                               scratch.share_count)
    count = 0
    for y in range(lo1.shape[0]):
        now = y == x or _types_share(x, y, lo1, hi1, lo2, hi2)
        share_count[y] += now - shares[y, x]
        shares[x, y] = shares[y, x] = now
        count += now
    share_count[x] = count


@numba.njit(cache=True, inline="always")
def _list_schedule(kt, scratch):
    """Seconds per iteration of the list schedule (module docstring), from the ranges,
    durations and transfer times in `scratch`; overwrites its end times.

    A node type that shares a device with every node type (`share_count`; the usual case
    where calls are colocated) waits for the latest end of all nodes scheduled so far,
    `latest`, which is `_devices_free_s` with every share true: each type's latest end is
    its largest (an instance starts after the previous one, its own devices being shared),
    and max is exact, so both give the same number bit for bit."""
    num_calls = scratch.persistent.shape[0]
    num_types = scratch.duration.shape[0]
    order, num_iterations = kt.order, kt.num_iterations
    pair_src, pair_wraps, pair_into = kt.pair_src, kt.pair_wraps, kt.pair_into
    edge_src, edges_into, edges_into_offset = kt.edge_src, kt.edges_into, kt.edges_into_offset
    duration, transfer = scratch.duration, scratch.transfer
    end, previous_end, latest_end = scratch.end, scratch.previous_end, scratch.latest_end
    share_count = scratch.share_count
    latest_end[:] = 0.0
    end[:] = 0.0
    latest = 0.0
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
            if share_count[x] == num_types:
                free = latest
            else:
                free = _devices_free_s(x, scratch.shares_devices, latest_end)
            end[x] = max(ready, free) + duration[x]
            latest_end[x] = end[x]
            latest = max(latest, end[x])
        iteration_end = 0.0
        for k in range(num_calls):
            iteration_end = max(iteration_end, end[k])
        if i == 0:
            first_iteration_end = iteration_end
    return (iteration_end - first_iteration_end) / (num_iterations - 1)


@numba.njit(cache=True, inline="always")
def _devices_free_s(x, shares_devices, latest_end):
    """When all devices of node type x are free: the latest end of any node type sharing a
    device with it (meshes are contiguous ranges, so overlapping ranges share devices).
    Without a branch on the shares (they are as good as random to the branch predictor):
    a type that shares no device counts as ending at 0, which no end is below. Two running
    maxima (even and odd types) halve the chain of dependent steps; max is exact and
    associative, so the result is the same bit for bit."""
    even = odd = 0.0
    num_types = latest_end.shape[0]
    for y in range(0, num_types - 1, 2):
        even = max(even, latest_end[y] if shares_devices[x, y] else 0.0)
        odd = max(odd, latest_end[y + 1] if shares_devices[x, y + 1] else 0.0)
    if num_types % 2:
        even = max(even, latest_end[num_types - 1] if shares_devices[x, num_types - 1]
                   else 0.0)
    return max(even, odd)


@numba.njit(cache=True, inline="always")
def _is_transient_copy(k, scratch, memory_role, train_call_of):
    """Call k is a non-train call of a trained model placed differently from its train
    call: it holds a transient copy of the weights on its mesh (module docstring)."""
    return memory_role[k] == TRAINED_MODEL_CALL and \
        scratch.placement[k] != scratch.placement[train_call_of[k]]


@numba.njit(cache=True, inline="always")
def _copy_lifetime(k, kt):
    """(first place, number of places after it) in the priority order `kt.order` of the
    nodes during which the transient copy of call k lives (module docstring): from the
    reallocation into k through the reallocation out of k, wrapping round the order (the
    wrapping reallocation of the previous iteration makes the copy of a model's first call).
    Equal placements on both sides of a reallocation keep the copy, and the next call's
    own lifetime takes over at that (empty) reallocation, so the union is the exact one."""
    num_types = kt.order.shape[0]
    into, out = kt.pair_into[k], kt.pair_out_of[k]
    num_calls = kt.memory_role.shape[0]
    first = kt.position[num_calls + into] if into >= 0 else kt.position[k]
    last = kt.position[num_calls + out] if out >= 0 else kt.position[k]
    return first, (last - first) % num_types


@numba.njit(cache=True, inline="always")
def _alive_during(place, first, span, num_types):
    """The node at `place` in the priority order runs during the lifetime (`first`, `span`
    of `_copy_lifetime`). `place - first` lies in (-num_types, num_types), so one addition
    takes it modulo num_types."""
    after = place - first
    if after < 0:
        after += num_types
    return after <= span


@numba.njit(cache=True, inline="always")
def _copies_at(x, device, num_copies, kt, scratch):
    """Bytes on `device` of the transient copies alive while node type x runs, each the
    copy's largest stage (an upper bound with pipeline stages, and where two copies held
    alike, which the runtime keeps as one, are both alive: only at a reallocation); reads
    the plan's `num_copies` copies listed by `_memory_terms`, added in call order."""
    copies, lo1, hi1, weights = scratch.copies, scratch.lo1, scratch.hi1, scratch.weights
    place, num_types = kt.position[x], kt.order.shape[0]
    total = 0.0
    for i in range(num_copies):
        j = copies[i]
        if lo1[j] <= device < hi1[j] and \
                _alive_during(place, scratch.copy_first[i], scratch.copy_span[i], num_types):
            total += weights[j]
    return total


@numba.njit(cache=True, inline="always")
def _held_peak_bytes(x, k, count, num_copies, kt, scratch):
    """The largest over the devices of call k's mesh of the persistent level plus the
    transient copies alive while node type x runs (`_copies_at`). Both are sums of terms
    constant over a contiguous mesh, so the maximum is reached at the mesh's first device
    or at the first device of a persistent term or of a copy inside the mesh; needs
    `_memory_terms` (`count` terms, `num_copies` copies)."""
    lo1, start_level, terms, copies = scratch.lo1, scratch.start_level, scratch.terms, \
        scratch.copies
    check_lo, check_hi = lo1[k], scratch.hi1[k]
    best = start_level[k] + _copies_at(x, check_lo, num_copies, kt, scratch)
    for i in range(count):
        q = terms[i]
        if check_lo < lo1[q] < check_hi:
            best = max(best, start_level[q] + _copies_at(x, lo1[q], num_copies, kt, scratch))
    for i in range(num_copies):
        j = copies[i]
        if check_lo < lo1[j] < check_hi:
            best = max(best, start_level[j] + _copies_at(x, lo1[j], num_copies, kt, scratch))
    return best


@numba.njit(cache=True, inline="always")
def _held_peak_during(x, k, count, num_copies, kt, scratch):
    """`_held_peak_bytes(x, k, ...)`, read from `held_peak[k]` (call k's own, computed
    first) where the same copies on call k's mesh are alive during x as during call k:
    the value depends on x only through which of those copies are alive, so it is the same
    number bit for bit."""
    copies, lo1, hi1 = scratch.copies, scratch.lo1, scratch.hi1
    place_x, place_k, num_types = kt.position[x], kt.position[k], kt.order.shape[0]
    for i in range(num_copies):
        j = copies[i]
        first, span = scratch.copy_first[i], scratch.copy_span[i]
        if _ranges_overlap(lo1[j], hi1[j], lo1[k], hi1[k]) and \
                _alive_during(place_x, first, span, num_types) != \
                _alive_during(place_k, first, span, num_types):
            return _held_peak_bytes(x, k, count, num_copies, kt, scratch)
    return scratch.held_peak[k]


@numba.njit(cache=True, inline="always")
def _memory_terms(kt, scratch):
    """Per call k of the plan `scratch` holds (memory rule of the module docstring):
    `persistent[k]`, the bytes per device its placement keeps resident on its mesh (a train
    call's train state; an untrained model's weights on the first call of each distinct
    placement; else 0), and `extra[k]`, the working set it adds while it runs (the
    transient copies alive then are `_held_peak_bytes`'). Every value is the largest over
    the mesh's pipeline stages. The calls with a non-zero term go to `terms` (in call order),
    the calls holding a transient copy to `copies` (in call order, each with its lifetime
    in `copy_first` and `copy_span`), and `start_level[k]` is the persistent level at the
    first device of call k's mesh; returns (terms, copies), the two counts, which
    `_held_peak_bytes` reads."""
    persistent, extra, placement = scratch.persistent, scratch.extra, scratch.placement
    memory_role, model_id, train_call_of = kt.memory_role, kt.model_id, kt.train_call_of
    terms, copies = scratch.terms, scratch.copies
    count = num_copies = 0
    for k in range(placement.shape[0]):
        persistent[k] = 0.0
        extra[k] = scratch.activation[k]
        role = memory_role[k]
        if role == TRAIN_CALL:
            persistent[k] = scratch.state[k]
        elif role == UNTRAINED_MODEL_CALL:
            repeat = False
            for j in range(k):
                if model_id[j] == model_id[k] and placement[j] == placement[k]:
                    repeat = True
            if not repeat:
                persistent[k] = scratch.weights[k]
        elif _is_transient_copy(k, scratch, memory_role, train_call_of):
            copies[num_copies] = k
            scratch.copy_first[num_copies], scratch.copy_span[num_copies] = \
                _copy_lifetime(k, kt)
            num_copies += 1
        if persistent[k] != 0.0:
            terms[count] = k
            count += 1
    for k in range(placement.shape[0]):
        scratch.start_level[k] = _persistent_level(scratch.lo1[k], count, scratch)
    return count, num_copies


@numba.njit(cache=True, inline="always")
def _persistent_level(device, count, scratch):
    """The persistent level on `device`: the sum of the first `count` `terms` whose call
    mesh covers it (in call order)."""
    persistent, lo1, hi1, terms = scratch.persistent, scratch.lo1, scratch.hi1, scratch.terms
    level = 0.0
    for i in range(count):
        t = terms[i]
        if lo1[t] <= device < hi1[t]:
            level += persistent[t]
    return level


@numba.njit(cache=True, inline="always")
def _memory_overflow(kt, scratch, count, num_copies):
    """Worst (peak - capacity) / capacity over the calls and reallocations of the plan
    `scratch` holds (<= 0 when the plan fits); needs `_memory_terms` (`count` terms,
    `num_copies` copies). A reallocation runs on its source and destination meshes, so it
    reads those calls' persistent peaks and capacities."""
    placement, capacity, weights = scratch.placement, scratch.capacity, scratch.weights
    extra, held_peak = scratch.extra, scratch.held_peak
    pair_src, pair_dst = kt.pair_src, kt.pair_dst
    num_calls = placement.shape[0]
    worst = -np.inf
    for k in range(num_calls):
        held_peak[k] = _held_peak_bytes(k, k, count, num_copies, kt, scratch)
        peak = held_peak[k] + extra[k]
        worst = max(worst, (peak - capacity[k]) / capacity[k])
    for p in range(pair_src.shape[0]):
        a, k = pair_src[p], pair_dst[p]
        if placement[a] == placement[k]:
            continue          # the model stays where it is: no reallocation node
        # The receivers hold a receive buffer (at most their whole new shard); both meshes
        # hold the transient copies alive during it (the destination's, which it makes;
        # the source's, which it reads).
        x = num_calls + p
        peak = _held_peak_during(x, k, count, num_copies, kt, scratch) + weights[k]
        worst = max(worst, (peak - capacity[k]) / capacity[k])
        peak = _held_peak_during(x, a, count, num_copies, kt, scratch)
        worst = max(worst, (peak - capacity[a]) / capacity[a])
    return worst
