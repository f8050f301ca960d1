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
  message buffers are bounded by whole shards: a receiver's by its whole new shard, a
  sender's by its whole old one, a device of both meshes (where they overlap) by both (the
  exact simulator uses the schedule's largest step: sent plus received bytes), so it never
  calls a plan feasible that the exact memory rule rejects for that reason.
- on a CPU node with fewer cores than devices (costmodel/core_sharing.py) the exact simulator
  shares the cores among the calls running at once, event by event; the evaluator takes the
  largest of its list schedule (which lets them run at full speed), the list schedule again
  with each call stretched by the cores it shares on average over its run in the first
  (`_shared_cores_s`), and, per such node, the seconds its cores need for one iteration's
  calls (each call's time x min(its processes there, cores), over the cores:
  core_sharing.core_work_s, which the exact simulator takes too). Exact / fast over 60
  random calibrated cpu4 PPO plans: 0.981-1.010 (with the core-seconds bound alone
  0.981-1.138, and plans whose shared schedule exceeds it tied at the bound); over the 40
  of tests/search/test_search.py 0.965-1.085 (before 0.981-1.089).
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
persistent(d) + copies(r, d) + message buffers <= capacity on its source and destination
meshes. Each term is the largest over the mesh's pipeline stages; the
level persistent + copies is maximised over the mesh's devices exactly (both are sums of
per-mesh constants), so with no call pipelined the call peaks equal the exact ones.

Staleness s >= 1 (FastEvaluator(tables, staleness=s); planner.domain.augment, the exact
simulator's rules): a rollout model's generate calls and its other calls form two chains
(`rollout_structure`); a push node type per rollout model, from its train call's candidate
to its first generate call's, listed right after its last generate call, priced by the
reallocation closed form above (zero between equal placements), occupying both meshes; it
runs in iteration i >= s (pushing the weights of train(i - s), so it waits for that end,
kept per iteration, and for the generation of i), when iteration i + 1 is simulated, and
the first generate call of i + 1 waits for it. The train call adds its proximal forward
(tables' proximal_s). K + 2 s iterations; iteration time = (end of the last iteration -
end of iteration s) / (K + 2 s - 1 - s). Memory: the rollout copy is a persistent term of
the first generate call (its weights on its mesh); the rollout model's generate calls hold
no transient copy; a push holds message buffers as a reallocation does; with
s >= 2, each device of the train mesh holds the packed sends of every push posted right
after its train(j) and not yet run (`_posted_during`), bounded by `_send_bytes` (the exact
rule uses the schedule's pieces). A plan whose rollout model's generate calls differ in
placement, which plans refuse, gets SPLIT_ROLLOUT_OVERFLOW. With s = 0 none of this, and
every number is the synchronous evaluator's bit for bit.

In code: `evaluate_plan` runs `fill_plan` (every call's candidate fields, every node's
device ranges and duration, the transfer times, which nodes share devices, into a Scratch),
then `_list_schedule` (the schedule above), `_memory_terms` and `_memory_overflow` (the
memory rule), which read only the Scratch (`price`). The search's moves change one call:
`apply_call` updates only what that call touches, and `price` then gives the same numbers
bit for bit as `evaluate_plan` of the changed plan. `FastEvaluator.call_peak_bytes` returns
the per-call peaks the memory rule compares with the capacity, from the same pieces. The
search's step reads `memory_bounds` (an upper bound that can show a plan fits, a lower
bound of its overflow) first, and runs `memory_overflow` only where they do not decide.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numba
import numpy as np

from planner.search.tables import ModelPair, SearchTables

# Memory role of a call in the rule above; with staleness >= 1 a rollout model's first
# generate call holds its rollout copy (ROLLOUT_HOME) and its other generate calls read it.
TRAIN_CALL, TRAINED_MODEL_CALL, UNTRAINED_MODEL_CALL, ROLLOUT_HOME, ROLLOUT_READER = \
    0, 1, 2, 3, 4
# The overflow given to a plan whose rollout model's generate calls differ in placement
# under staleness >= 1, which planner.domain.plan refuses (one rollout copy): as if it
# needed twice the memory it has, infeasible and far from every plan that fits.
SPLIT_ROLLOUT_OVERFLOW = 1.0

# The tables as flat arrays for the compiled kernels (numba reads namedtuple fields).
# Candidate arrays are indexed by global candidate index = offset[call] + local index.
KernelTables = namedtuple("KernelTables", [
    "time_s", "weights", "state", "activation", "capacity", "dp", "tp", "pp", "lo", "hi",
    "placement", "order", "edge_src", "edge_dst", "edge_bytes", "pair_src", "pair_dst",
    "pair_wraps", "pair_weights", "memory_role", "train_call_of", "model_id", "links",
    "device_node", "num_iterations", "move_scale", "move_overhead_s", "edges_into_offset",
    "pair_into", "pair_out_of", "position", "pairs_of_call_offset", "pairs_of_call",
    "edges_of_call_offset", "edges_of_call", "staleness", "proximal_s",
    "adds_proximal", "push_src", "push_dst", "push_after", "push_weights", "push_into",
    "pushes_of_call_offset", "pushes_of_call", "core_node_lo", "core_node_hi",
    "core_node_cores"])


# The KernelTables fields the memory rule and `scratch_view` read, for `memory_overflow`.
MemoryTables = namedtuple("MemoryTables", [
    "edge_src", "memory_role", "model_id", "num_iterations", "order", "pair_dst", "pair_into",
    "pair_out_of", "pair_src", "position", "push_dst", "push_src", "staleness",
    "train_call_of"])


def memory_tables(kt: KernelTables) -> MemoryTables:
    return MemoryTables(**{name: getattr(kt, name) for name in MemoryTables._fields})


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


@dataclass(frozen=True)
class PushType:
    """A rollout model's weight push under staleness >= 1 (planner.domain.augment.
    WeightPush): from its train call `src` to its first generate call `dst`, listed right
    after its last generate call `after` (indices into the call list)."""

    model: str
    src: int
    dst: int
    after: int


def rollout_structure(tables: SearchTables, staleness: int
                      ) -> tuple[list[ModelPair], list[PushType], list[int]]:
    """(pairs, pushes, priority) of the node types at `staleness`, from the tables' calls
    alone, as planner.domain.augment builds them from the workflow: with 0 the tables' own;
    with s >= 1 each rollout model (a trained model with a generate call) has the rollout
    chain of its generate calls (consecutive pairs, no wrap) and the training chain of its
    other calls (consecutive pairs and the wrap) instead of one chain (model_call_pairs), a
    push (weight_pushes), and the push is listed right after its last generate call
    (scheduled_nodes). Node types: call k, then pair p as len(calls) + p, then push q as
    len(calls) + len(pairs) + q (tests/search/test_fast_async.py checks them against
    planner.domain.augment)."""
    calls = tables.calls
    if staleness == 0:
        return list(tables.pairs), [], list(tables.priority)
    trained = {c.model for c in calls if c.kind == "train"}
    rollout = [m for m in dict.fromkeys(c.model for c in calls)
               if m in trained and any(c.model == m and c.kind == "generate" for c in calls)]
    weights = {p.model: p.weights_bytes_total for p in tables.pairs}
    pairs = [p for p in tables.pairs if p.model not in rollout]
    pushes = []
    for model in rollout:
        mine = [k for k, c in enumerate(calls) if c.model == model]
        generate = [k for k in mine if calls[k].kind == "generate"]
        training = [k for k in mine if calls[k].kind != "generate"]
        for chain, wraps in ((generate, False), (training, True)):
            pairs += [ModelPair(model, a, b, False, weights[model])
                      for a, b in zip(chain, chain[1:])]
            if wraps:
                pairs.append(ModelPair(model, chain[-1], chain[0], True, weights[model]))
        train = [k for k in mine if calls[k].kind == "train"]
        pushes.append(PushType(model, train[-1], generate[0], generate[-1]))
    into = {p.dst: len(calls) + i for i, p in enumerate(pairs)}
    priority = []
    for k in range(len(calls)):
        priority += [into[k]] if k in into else []
        priority.append(k)
        priority += [len(calls) + len(pairs) + q for q, push in enumerate(pushes)
                     if push.after == k]
    return pairs, pushes, priority


def _memory_roles(tables: SearchTables, pushes: list[PushType]) -> np.ndarray:
    """Each call's memory role (module docstring) at the staleness `pushes` belong to."""
    calls = tables.calls
    trained = {c.model for c in calls if c.kind == "train"}
    homes = {push.dst for push in pushes}
    readers = {push.model for push in pushes}
    return np.array([TRAIN_CALL if c.kind == "train" else
                     ROLLOUT_HOME if k in homes else
                     ROLLOUT_READER if c.kind == "generate" and c.model in readers else
                     TRAINED_MODEL_CALL if c.model in trained else
                     UNTRAINED_MODEL_CALL for k, c in enumerate(calls)], dtype=np.int64)


def kernel_tables(tables: SearchTables, staleness: int = 0) -> KernelTables:
    """Flatten `tables` into the arrays the kernels read, for plans at `staleness`."""
    # the data edges by consumer (a stable sort): the edges into call k are the kernel's
    # edges edges_into_offset[k] to edges_into_offset[k + 1] - 1, which the list schedule
    # reads without an index list
    calls, edges = tables.calls, sorted(tables.edges, key=lambda e: e.dst)
    pairs, pushes, order = rollout_structure(tables, staleness)
    train_call = {c.model: k for k, c in enumerate(calls) if c.kind == "train"}
    models = sorted({c.model for c in calls})
    assert all(sum(p.dst == k for p in pairs) <= 1 and sum(p.src == k for p in pairs) <= 1
               for k in range(len(calls))), pairs
    assert sorted(order) == list(range(len(calls) + len(pairs) + len(pushes))), order
    floats, ints = _candidate_rows(tables)
    proximal = {push.src for push in pushes}
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
        memory_role=_memory_roles(tables, pushes),
        train_call_of=np.array([train_call.get(c.model, -1) for c in calls], dtype=np.int64),
        model_id=np.array([models.index(c.model) for c in calls], dtype=np.int64),
        links=np.array([tables.intra_node_bandwidth_bytes_per_s, tables.intra_node_latency_s,
                        tables.inter_node_bandwidth_bytes_per_s, tables.inter_node_latency_s],
                       dtype=np.float64),
        device_node=np.asarray(tables.device_node, dtype=np.int64),
        # K + 2 s iterations (costmodel.simulator.simulated_iterations: 3 + 2 s)
        num_iterations=int(tables.num_iterations) + 2 * staleness,
        move_scale=float(tables.move_scale), move_overhead_s=float(tables.move_overhead_s),
        # data edges into each call: edges edges_into_offset[k] to edges_into_offset[k+1] - 1
        edges_into_offset=np.cumsum([0] + [sum(e.dst == k for e in edges)
                                           for k in range(len(calls))]).astype(np.int64),
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
                                      for k in range(len(calls))]),
        staleness=int(staleness),
        # the proximal forward's seconds by global candidate, read for the calls marked in
        # adds_proximal only (none at staleness 0, where the array is empty)
        proximal_s=(_concat(tables, "proximal_s", np.float64) if pushes
                    else np.zeros(0, dtype=np.float64)),
        adds_proximal=np.array([k in proximal for k in range(len(calls))], dtype=np.bool_),
        push_src=np.array([q.src for q in pushes], dtype=np.int64),
        push_dst=np.array([q.dst for q in pushes], dtype=np.int64),
        push_after=np.array([q.after for q in pushes], dtype=np.int64),
        push_weights=np.array([weights_of(pairs, q.model) for q in pushes], dtype=np.float64),
        # the push into each call (its first generate call), -1 if none
        push_into=np.array([next((q for q, push in enumerate(pushes) if push.dst == k), -1)
                            for k in range(len(calls))], dtype=np.int64),
        **_touching("pushes_of_call", [[q for q, push in enumerate(pushes)
                                        if k in (push.src, push.dst)]
                                       for k in range(len(calls))]),
        # the core-limited nodes' device ranges [lo, hi) and cores (`_core_work_s`)
        **_core_nodes(tables))


def _core_nodes(tables: SearchTables) -> dict[str, np.ndarray]:
    nodes = sorted(tables.core_limited)
    devices = np.asarray(tables.device_node)
    return {"core_node_lo": np.array([np.flatnonzero(devices == n)[0] for n in nodes],
                                     dtype=np.int64),
            "core_node_hi": np.array([np.flatnonzero(devices == n)[-1] + 1 for n in nodes],
                                     dtype=np.int64),
            "core_node_cores": np.array([tables.core_limited[n] for n in nodes],
                                        dtype=np.int64)}


def weights_of(pairs: list[ModelPair], model: str) -> float:
    """The whole weights of `model` in the compute dtype, as its pairs carry them."""
    return next(p.weights_bytes_total for p in pairs if p.model == model)


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
    """Evaluates arrays of plans against fixed `SearchTables`, all at one `staleness` s
    (0: synchronous; s >= 1 needs tables of a workflow with max_staleness >= s, whose
    proximal_s columns are priced)."""

    def __init__(self, tables: SearchTables, staleness: int = 0):
        if not isinstance(staleness, (int, np.integer)) or \
                not 0 <= staleness <= tables.max_staleness:
            raise ValueError(f"staleness {staleness!r}: the tables price 0 to "
                             f"{tables.max_staleness} (the workflow's max_staleness)")
        self.tables = tables
        self.staleness = int(staleness)
        sizes = [len(c) for c in tables.calls]
        self.offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.kernel = kernel_tables(tables, self.staleness)
        self.memory = memory_tables(self.kernel)

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
    "shares_devices",             # [type, type]: the two node types share a device
    "train_end_history",          # [iteration x push]: the end of each push's train call
    #                               in each iteration (staleness >= 1)
    "send_bytes",                 # per push: bytes per device its senders keep posted from
    #                               train(j) to push(j) (staleness >= 2, `_update_push`)
    "call_duration"])             # per call: its duration while `_shared_cores_s` stretches
#                                   the durations (core-limited nodes only)

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
    num_calls, num_pushes = kt.memory_role.shape[0], kt.push_src.shape[0]
    num_types = num_calls + kt.pair_src.shape[0] + num_pushes
    num_edges = kt.edge_src.shape[0]
    return (5 * num_types + 5 * num_calls,
            4 * num_types + num_edges + (_CALL_FLOATS + _CALL_FLOAT_SLOTS) * num_calls
            + (kt.num_iterations + 1) * num_pushes + num_calls,
            num_types)


@numba.njit(cache=True, inline="always")
def scratch_view(ints, floats, shares, kt):
    """A Scratch cut from buffers of the sizes `scratch_sizes` gives (views, no copies): the
    search keeps one per chain in rows of larger buffers. Inlined, so that a caller compiled
    without reference counting makes it without counting the 29 views."""
    c, q = kt.memory_role.shape[0], kt.push_src.shape[0]
    t = c + kt.pair_src.shape[0] + q
    e = 4 * t + kt.edge_src.shape[0]
    h = e + (_CALL_FLOATS + _CALL_FLOAT_SLOTS) * c + kt.num_iterations * q
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
                   ints[4 * t + 5 * c:5 * t + 5 * c], shares,
                   floats[e + 11 * c:h], floats[h:h + q], floats[h + q:h + q + c])


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
    device sharing of those node types, and likewise the weight pushes out of or into it.
    Also undoes a change: apply the old candidate."""
    apply_call_inline(k, c, kt, scratch)


@numba.njit(cache=True, inline="always")
def apply_call_inline(k, c, kt, scratch):
    """`apply_call`, compiled into its caller: the search's step (a call of a function that
    takes both namedtuples hands their ~80 arrays over field by field: applying and undoing
    a move took 660 ns as two calls and 285 ns compiled in, at 128 GPUs on the CI kind of
    machine)."""
    _load_call(k, c, kt, scratch)
    num_calls = scratch.placement.shape[0]
    pairs_of_call, edges_of_call = kt.pairs_of_call, kt.edges_of_call
    first_pair, last_pair = kt.pairs_of_call_offset[k], kt.pairs_of_call_offset[k + 1]
    for j in range(first_pair, last_pair):
        _update_pair(pairs_of_call[j], kt, scratch)
    for j in range(kt.edges_of_call_offset[k], kt.edges_of_call_offset[k + 1]):
        _update_edge(edges_of_call[j], kt, scratch)
    first_push, last_push = kt.pushes_of_call_offset[k], kt.pushes_of_call_offset[k + 1]
    for j in range(first_push, last_push):
        _update_push(kt.pushes_of_call[j], kt, scratch)
    _update_shares_row(k, scratch)
    for j in range(first_pair, last_pair):
        _update_shares_row(num_calls + pairs_of_call[j], scratch)
    for j in range(first_push, last_push):
        _update_shares_row(num_calls + kt.pair_src.shape[0] + kt.pushes_of_call[j], scratch)


@numba.njit(cache=True, inline="always")
def fill_plan(g, kt, scratch):
    """Make `scratch` hold plan `g` (global candidate indices): every call's fields, every
    node type's range and duration, every transfer time, every push's send bytes, which
    node types share a device."""
    for k in range(g.shape[0]):
        _load_call(k, g[k], kt, scratch)
    for p in range(kt.pair_src.shape[0]):
        _update_pair(p, kt, scratch)
    for e in range(kt.edge_src.shape[0]):
        _update_edge(e, kt, scratch)
    for q in range(kt.push_src.shape[0]):
        _update_push(q, kt, scratch)
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
    return schedule_s(kt, scratch), _memory_rule(kt, scratch)


@numba.njit(cache=True, inline="always")
def schedule_s(kt, scratch):
    """The first half of `price`: seconds per iteration of the plan `scratch` holds (the
    list schedule, and on core-limited nodes the shared-core terms). Inlined; it neither
    reads nor writes what `memory_overflow` does, so the two run in either order, or the
    search's step runs only this one when the time alone decides (mcmc_kernel)."""
    iteration_s = _list_schedule(kt, scratch)
    if kt.core_node_lo.shape[0] > 0:
        iteration_s = max(iteration_s, _shared_cores_s(kt, scratch),
                          _core_work_s(kt, scratch))
    return iteration_s


# A function of its own, not inlined into the search's step: compiled into it, the step's
# cold numba compile took 79 s -> 271 s (2 cores). It takes the MemoryTables and the
# Scratch's buffers, not the KernelTables and the Scratch, whose arrays a call hands over
# one by one (7 words each): so called, the MCMC ran as fast as with the rule compiled in
# (1,107,978 against 1,111,830 plans/s, PPO 70B/7B on 128 H100, benchmarks/search_speed.py).
@numba.njit(cache=True, _nrt=False)
def memory_overflow(mt, ints, floats, shares):
    """The second half of `price`: the worst relative memory overflow of the plan held in
    the Scratch buffers `ints`, `floats`, `shares` (`scratch_view`; <= 0 when it fits);
    `mt`: the evaluator's MemoryTables."""
    return _memory_rule(mt, scratch_view(ints, floats, shares, mt))


@numba.njit(cache=True, _nrt=False)
def memory_bounds(mt, ints, floats, shares):
    """(fits, lower): bounds of the memory rule that cost a fraction of it, for the
    search's step, which needs to know only whether a plan fits and, where it does not,
    whether it overflows enough to be rejected (mcmc_kernel._take_step). `fits`: an upper
    bound of every peak of the rule is within its capacity (so the plan fits; False says
    nothing). `lower`: a lower bound of the rule's overflow (`memory_overflow`). Arguments
    as memory_overflow's.

    The rule takes, over a mesh's devices, the largest persistent level plus the transient
    copies alive there, plus the working set. The upper bound adds up every term and every
    alive copy whose mesh overlaps the mesh instead (each device's sum is part of that
    one), which needs no search of the devices; plans with weight pushes (staleness >= 1)
    are left to the rule. The lower bound reads each call's peak on the first device of its
    mesh alone (the rule's first candidate for the largest). In the MCMC the upper bound
    shows about seven in ten of the plans the rule would see to fit (PPO 70B/7B on 128 and
    512 H100, counted on 2026-12-03: 2.67M of 3.90M and 2.64M of 3.44M in 5 s; 3.03M and
    2.90M fit)."""
    scratch = scratch_view(ints, floats, shares, mt)
    count, num_copies = _memory_term_lists(mt, scratch)
    return _memory_bounds(mt, scratch, count, num_copies)


@numba.njit(cache=True, inline="always")
def _memory_bounds(kt, scratch, count, num_copies):
    """`memory_bounds` from `_memory_term_lists` (`count` terms, `num_copies` copies)."""
    placement, weights, capacity = scratch.placement, scratch.weights, scratch.capacity
    lo1, hi1, terms, persistent = scratch.lo1, scratch.hi1, scratch.terms, scratch.persistent
    overlapping = scratch.start_level      # per call: its overlapping terms (work space)
    num_calls = placement.shape[0]
    fits = kt.push_src.shape[0] == 0
    lower = -np.inf
    for k in range(num_calls):
        on_mesh = on_first = 0.0            # terms overlapping the mesh / on its first device
        for i in range(count):
            t = terms[i]
            if _ranges_overlap(lo1[t], hi1[t], lo1[k], hi1[k]):
                on_mesh += persistent[t]
                if lo1[t] <= lo1[k]:
                    on_first += persistent[t]
        overlapping[k] = on_mesh
        copies_on_mesh, copies_on_first = _alive_copies_on(k, k, num_copies, kt, scratch)
        extra = scratch.extra[k]
        fits = fits and on_mesh + copies_on_mesh + extra <= capacity[k]
        lower = max(lower, (on_first + copies_on_first + extra - capacity[k]) / capacity[k])
    if not fits:
        return False, lower
    for p in range(kt.pair_src.shape[0]):
        a, k = kt.pair_src[p], kt.pair_dst[p]
        if placement[a] == placement[k]:
            continue                           # no reallocation node (`_memory_overflow`)
        # the message buffers of `_moving_overflow`
        both = _ranges_overlap(lo1[a], hi1[a], lo1[k], hi1[k])
        x = num_calls + p
        peak_k = overlapping[k] + _alive_copies_on(x, k, num_copies, kt, scratch)[0] \
            + weights[k] + (weights[a] if both else 0.0)
        peak_a = overlapping[a] + _alive_copies_on(x, a, num_copies, kt, scratch)[0] \
            + weights[a] + (weights[k] if both else 0.0)
        if peak_k > capacity[k] or peak_a > capacity[a]:
            return False, lower
    return True, lower


@numba.njit(cache=True, inline="always")
def _alive_copies_on(x, k, num_copies, kt, scratch):
    """Bytes of the transient copies alive while node type x runs (`_copies_at`): those
    whose mesh overlaps call k's, and those on the first device of call k's mesh."""
    copies, lo1, hi1, weights = scratch.copies, scratch.lo1, scratch.hi1, scratch.weights
    place, num_types = kt.position[x], kt.order.shape[0]
    on_mesh = on_first = 0.0
    for i in range(num_copies):
        j = copies[i]
        if _ranges_overlap(lo1[j], hi1[j], lo1[k], hi1[k]) and \
                _alive_during(place, scratch.copy_first[i], scratch.copy_span[i], num_types):
            on_mesh += weights[j]
            if lo1[j] <= lo1[k]:
                on_first += weights[j]
    return on_mesh, on_first


@numba.njit(cache=True, inline="always")
def _memory_rule(kt, scratch):
    """`memory_overflow`, inlined into `evaluate_plan`."""
    count, num_copies = _memory_terms(kt, scratch)
    return _memory_overflow(kt, scratch, count, num_copies)


@numba.njit(cache=True, inline="always")
def _load_call(k, c, kt, scratch):
    """Copy the fields of global candidate c into call k's slots of `scratch` (its mesh as
    node type k's both ranges, its time as type k's duration, with the proximal forward
    where the staleness adds one: the exact simulator's sum, in its order)."""
    scratch.lo1[k] = scratch.lo2[k] = kt.lo[c]
    scratch.hi1[k] = scratch.hi2[k] = kt.hi[c]
    if kt.adds_proximal[k]:
        scratch.duration[k] = kt.time_s[c] + kt.proximal_s[c]
    else:
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
    _update_move(scratch.placement.shape[0] + p, kt.pair_src[p], kt.pair_dst[p],
                 kt.pair_weights[p], kt, scratch)


@numba.njit(cache=True, inline="always")
def _update_move(x, a, b, weights, kt, scratch):
    """Node type x moves `weights` bytes of a model from call a's candidate to call b's (a
    reallocation or a push): its device ranges (both meshes) and its duration, the closed
    form of the module docstring, zero between equal placements."""
    lo1, hi1, lo2, hi2, placement = (scratch.lo1, scratch.hi1, scratch.lo2, scratch.hi2,
                                     scratch.placement)
    lo1[x], hi1[x], lo2[x], hi2[x] = lo1[a], hi1[a], lo1[b], hi1[b]
    if placement[a] == placement[b]:
        scratch.duration[x] = 0.0
    else:
        bandwidth, latency = _link(lo1[a], hi1[a], lo1[b], hi1[b], kt.device_node, kt.links)
        scratch.duration[x] = kt.move_overhead_s + kt.move_scale * _reallocation_s(
            weights, hi1[a] - lo1[a], scratch.dp[b], scratch.tp[b], scratch.pp[b],
            bandwidth, latency)


# Compiled as a function of its own, not inlined: inlined with its nested helpers at every
# call site it took a cold numba compile of the kernels from about 1 to 5.5 minutes (default
# `plan search`, 2 cores); the call costs about a fifth of the MCMC rate at 128 GPUs.
@numba.njit(cache=True)
def _update_push(q, kt, scratch):
    """Device ranges, duration and send bytes of push q (staleness >= 1) from its train and
    generate calls' fields in `scratch`: a reallocation from the train call's candidate to
    the generate call's (the closed form, zero between equal placements), and the bytes a
    sender keeps packed from train(j) to push(j) when the staleness is 2 or more
    (`_send_bytes`)."""
    a, b = kt.push_src[q], kt.push_dst[q]
    _update_move(scratch.placement.shape[0] + kt.pair_src.shape[0] + q, a, b,
                 kt.push_weights[q], kt, scratch)
    scratch.send_bytes[q] = _send_bytes(a, b, kt.push_weights[q], scratch) \
        if kt.staleness >= 2 else 0.0


@numba.njit(cache=True)
def _send_bytes(a, b, model_bytes, scratch):
    """An upper bound of the bytes one sender of a push of a model of `model_bytes` from
    call a's placement to call b's packs and keeps posted (runtime/executor/weight_push.py
    post_push: its outgoing messages and a copy of its local pieces; costmodel/plan_memory.py
    prices the exact schedule's). Equal placements: its whole training shard (weights[a],
    the largest stage). Else, per destination replica (tp_b x pp_b devices), each element
    the sender holds goes to one device, or to several where the destination replicates it
    over tp (norms, kv heads), and what the replica holds beyond one model is at most
    tp_b x pp_b x weights[b] - model_bytes: at most weights[a] + that excess per replica,
    dp_b replicas; and each destination device gets at most min(weights[a], weights[b]).
    The smaller of the two. No balance of the schedule's source choice is assumed (a
    replica on the receivers' node may serve them all), so where the training side has
    several replicas the bound can exceed the exact bytes by up to their number."""
    weights = scratch.weights
    if scratch.placement[a] == scratch.placement[b]:
        return weights[a]
    receivers = scratch.hi1[b] - scratch.lo1[b]
    excess = max(0.0, scratch.tp[b] * scratch.pp[b] * weights[b] - model_bytes)
    return min(receivers * min(weights[a], weights[b]),
               scratch.dp[b] * (weights[a] + excess))


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
    order, num_iterations, staleness = kt.order, kt.num_iterations, kt.staleness
    pair_src, pair_wraps, pair_into = kt.pair_src, kt.pair_wraps, kt.pair_into
    first_push = num_calls + pair_src.shape[0]
    num_pushes, push_into, history = kt.push_src.shape[0], kt.push_into, \
        scratch.train_end_history
    edge_src, edges_into_offset = kt.edge_src, kt.edges_into_offset
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
            if x >= first_push:
                # push(i - s), listed in iteration i (i >= s, its receiver i + 1 simulated):
                # after its train call of iteration i - s and the generation of iteration i.
                q = x - first_push
                if i < staleness or i + 1 >= num_iterations:
                    continue
                ready = max(history[(i - staleness) * num_pushes + q], end[kt.push_after[q]])
            elif x >= num_calls:
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
                for e in range(edges_into_offset[x], edges_into_offset[x + 1]):
                    ready = max(ready, end[edge_src[e]] + transfer[e])
                p = pair_into[x]
                if p >= 0 and not (pair_wraps[p] and i == 0):
                    ready = max(ready, end[num_calls + p])
                # a first generate call of a rollout model waits for the push listed in
                # the iteration before (none into iterations up to s)
                q = push_into[x]
                if q >= 0 and i > staleness:
                    ready = max(ready, previous_end[first_push + q])
            if share_count[x] == num_types:
                free = latest
            else:
                free = _devices_free_s(x, scratch.shares_devices, latest_end)
            end_x = max(ready, free) + duration[x]
            end[x] = latest_end[x] = end_x
            latest = max(latest, end_x)
        for q in range(num_pushes):
            history[i * num_pushes + q] = end[kt.push_src[q]]
        iteration_end = 0.0
        for k in range(num_calls):
            iteration_end = max(iteration_end, end[k])
        if i == staleness:
            first_iteration_end = iteration_end
    return (iteration_end - first_iteration_end) / (num_iterations - 1 - staleness)


# Compiled as a function of its own, not inlined (a second inlined list schedule in every
# caller): it runs only for plans on core-limited CPU nodes.
@numba.njit(cache=True)
def _shared_cores_s(kt, scratch):
    """Seconds per iteration of the list schedule with every call slowed by the cores it
    shares (module docstring): from the schedule just run (`_list_schedule`, calls at full
    speed), each call's duration x max(1, over each core-limited node it runs on, the cores
    needed on average while it runs / the node's cores), where the cores needed are those
    of every call whose interval of the last simulated iteration overlaps its own, each
    min(its processes there, cores), weighted by the overlap (the exact simulator's
    processor sharing, core_sharing.py, with each call's rate averaged over its run); then
    the list schedule again with those durations. The durations are restored after."""
    num_calls = scratch.placement.shape[0]
    duration, end, saved = scratch.duration, scratch.end, scratch.call_duration
    lo1, hi1 = scratch.lo1, scratch.hi1
    for k in range(num_calls):
        saved[k] = duration[k]
    for k in range(num_calls):
        if saved[k] <= 0.0:
            continue
        start_k, end_k = end[k] - saved[k], end[k]
        stretch = 1.0
        for n in range(kt.core_node_lo.shape[0]):
            lo, hi, cores = kt.core_node_lo[n], kt.core_node_hi[n], kt.core_node_cores[n]
            if min(hi1[k], hi) <= max(lo1[k], lo):
                continue
            core_seconds = 0.0
            for j in range(num_calls):
                processes = min(hi1[j], hi) - max(lo1[j], lo)
                if processes <= 0 or saved[j] <= 0.0:
                    continue
                overlap = min(end_k, end[j]) - max(start_k, end[j] - saved[j])
                if overlap > 0.0:
                    core_seconds += min(processes, cores) * overlap
            stretch = max(stretch, core_seconds / (saved[k] * cores))
        duration[k] = saved[k] * stretch
    shared_s = _list_schedule(kt, scratch)
    for k in range(num_calls):
        duration[k] = saved[k]
    return shared_s


@numba.njit(cache=True, inline="always")
def _core_work_s(kt, scratch):
    """The largest, over the core-limited nodes, of the seconds per iteration their cores
    need for the calls on them (module docstring); 0 with no such node."""
    worst = 0.0
    num_calls = scratch.placement.shape[0]
    for n in range(kt.core_node_lo.shape[0]):
        lo, hi, cores = kt.core_node_lo[n], kt.core_node_hi[n], kt.core_node_cores[n]
        work = 0.0
        for k in range(num_calls):
            processes = min(scratch.hi1[k], hi) - max(scratch.lo1[k], lo)
            if processes > 0:
                work += scratch.duration[k] * min(processes, cores)
        worst = max(worst, work / cores)
    return worst


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
    best = start_level[k] + _held_at(x, check_lo, num_copies, kt, scratch)
    for i in range(count):
        q = terms[i]
        if check_lo < lo1[q] < check_hi:
            best = max(best, start_level[q] + _held_at(x, lo1[q], num_copies, kt, scratch))
    for i in range(num_copies):
        j = copies[i]
        if check_lo < lo1[j] < check_hi:
            best = max(best, start_level[j] + _held_at(x, lo1[j], num_copies, kt, scratch))
    return best


@numba.njit(cache=True, inline="always")
def _held_at(x, device, num_copies, kt, scratch):
    """Bytes on `device` held while node type x runs beside the persistent level: the
    transient copies (`_copies_at`) and, with staleness >= 2, the pushes' posted sends
    (`_sends_at`)."""
    held = _copies_at(x, device, num_copies, kt, scratch)
    if kt.staleness >= 2:
        held += _sends_at(x, device, kt, scratch)
    return held


@numba.njit(cache=True)
def _posted_during(x, q, kt):
    """How many of push q's posted sends are alive while node type x runs (staleness s >=
    2): those of push(j) live from right after train(j) through push(j), which is listed in
    iteration j + s, so a node at place p of the priority order meets those of s + [p after
    the train call] - [p after the push] iterations j (every iteration's nodes, in the
    steady state the simulated iterations reach)."""
    place = kt.position[x]
    push = kt.memory_role.shape[0] + kt.pair_src.shape[0] + q
    return kt.staleness + (place > kt.position[kt.push_src[q]]) - (place > kt.position[push])


@numba.njit(cache=True)
def _sends_at(x, device, kt, scratch):
    """Bytes on `device` of the pushes' sends posted while node type x runs: on each
    push's train mesh, `_posted_during` times its `send_bytes`."""
    total = 0.0
    for q in range(kt.push_src.shape[0]):
        a = kt.push_src[q]
        if scratch.lo1[a] <= device < scratch.hi1[a]:
            total += _posted_during(x, q, kt) * scratch.send_bytes[q]
    return total


@numba.njit(cache=True, inline="always")
def _held_peak_during(x, k, count, num_copies, kt, scratch):
    """`_held_peak_bytes(x, k, ...)`, read from `held_peak[k]` (call k's own, computed
    first) where the same copies on call k's mesh are alive during x as during call k:
    the value depends on x only through which of those copies (and with staleness >= 2 how
    many posted sends of a push, `_posted_during`) are alive, so it is the same number bit
    for bit."""
    copies, lo1, hi1 = scratch.copies, scratch.lo1, scratch.hi1
    place_x, place_k, num_types = kt.position[x], kt.position[k], kt.order.shape[0]
    if kt.staleness >= 2:
        for q in range(kt.push_src.shape[0]):
            a = kt.push_src[q]
            if _ranges_overlap(lo1[a], hi1[a], lo1[k], hi1[k]) and \
                    _posted_during(x, q, kt) != _posted_during(k, q, kt):
                return _held_peak_recomputed(x, k, count, num_copies, kt, scratch)
    for i in range(num_copies):
        j = copies[i]
        first, span = scratch.copy_first[i], scratch.copy_span[i]
        if _ranges_overlap(lo1[j], hi1[j], lo1[k], hi1[k]) and \
                _alive_during(place_x, first, span, num_types) != \
                _alive_during(place_k, first, span, num_types):
            return _held_peak_recomputed(x, k, count, num_copies, kt, scratch)
    return scratch.held_peak[k]


# Compiled as a function of its own, not inlined: `_held_peak_bytes` with its nested
# helpers inlined at every site of `_held_peak_during` took a cold numba compile of the
# kernels from about 1 to 5.5 minutes (default `plan search`, 2 cores). Only the nodes
# during which other copies are alive than during the call come here.
@numba.njit(cache=True)
def _held_peak_recomputed(x, k, count, num_copies, kt, scratch):
    """`_held_peak_bytes` for `_held_peak_during`'s slow path."""
    return _held_peak_bytes(x, k, count, num_copies, kt, scratch)


@numba.njit(cache=True, inline="always")
def _memory_terms(kt, scratch):
    """`_memory_term_lists`, then `start_level[k]`: the persistent level at the first
    device of call k's mesh; returns the two counts of `_memory_term_lists`, which
    `_held_peak_bytes` reads."""
    count, num_copies = _memory_term_lists(kt, scratch)
    for k in range(scratch.placement.shape[0]):
        scratch.start_level[k] = _persistent_level(scratch.lo1[k], count, scratch)
    return count, num_copies


@numba.njit(cache=True, inline="always")
def _memory_term_lists(kt, scratch):
    """Per call k of the plan `scratch` holds (memory rule of the module docstring):
    `persistent[k]`, the bytes per device its placement keeps resident on its mesh (a train
    call's train state; an untrained model's weights on the first call of each distinct
    placement; else 0), and `extra[k]`, the working set it adds while it runs (the
    transient copies alive then are `_held_peak_bytes`'). Every value is the largest over
    the mesh's pipeline stages. The calls with a non-zero term go to `terms` (in call order),
    the calls holding a transient copy to `copies` (in call order, each with its lifetime
    in `copy_first` and `copy_span`); returns the two counts (terms, copies)."""
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
        elif role == ROLLOUT_HOME:
            persistent[k] = scratch.weights[k]
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
    `num_copies` copies). A reallocation or push runs on its source and destination
    meshes, so it reads those calls' persistent peaks and capacities."""
    placement, capacity = scratch.placement, scratch.capacity
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
        if kt.memory_role[a] == ROLLOUT_HOME or kt.memory_role[a] == ROLLOUT_READER:
            # generate calls of a rollout model on two placements: refused (one copy)
            worst = max(worst, SPLIT_ROLLOUT_OVERFLOW)
        # Message buffers (`_moving_overflow`); both meshes hold the transient copies alive
        # during it (the destination's, which it makes; the source's, which it reads).
        worst = max(worst, _moving_overflow(num_calls + p, a, k, count, num_copies, kt,
                                            scratch))
    for q in range(kt.push_src.shape[0]):
        a, k = kt.push_src[q], kt.push_dst[q]
        # A push between equal placements receives nothing; what is alive during it is
        # alive during the generate call listed right before it on the same devices.
        if placement[a] != placement[k]:
            worst = max(worst, _moving_overflow(num_calls + pair_src.shape[0] + q, a, k,
                                                count, num_copies, kt, scratch))
    return worst


@numba.njit(cache=True, inline="always")
def _moving_overflow(x, a, k, count, num_copies, kt, scratch):
    """Worst relative overflow of node type x moving a model from call a's placement to
    call k's (a reallocation or a push): beside what is held during x on each mesh, the
    receivers hold a receive buffer (at most their whole new shard, weights[k]) and the
    senders a send buffer (at most their whole old one, weights[a]); where the meshes
    overlap, a device may hold both."""
    capacity, weights, lo1, hi1 = scratch.capacity, scratch.weights, scratch.lo1, scratch.hi1
    both = _ranges_overlap(lo1[a], hi1[a], lo1[k], hi1[k])
    buffers_k = weights[k] + (weights[a] if both else 0.0)
    buffers_a = weights[a] + (weights[k] if both else 0.0)
    peak = _held_peak_during(x, k, count, num_copies, kt, scratch) + buffers_k
    worst = (peak - capacity[k]) / capacity[k]
    peak = _held_peak_during(x, a, count, num_copies, kt, scratch) + buffers_a
    return max(worst, (peak - capacity[a]) / capacity[a])
