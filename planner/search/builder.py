"""Building the search tables: candidates of every call, priced by the cost model, pruned.

Pricing uses costmodel.call_cost (time and memory of a call on an execution). On clusters
whose nodes are alike, a call's cost depends on its layout, its run policy (ZeRO-1,
recomputation) and on how many devices of which nodes its mesh spans, not on which node:
prices are cached by that shape.

Pruning (neither step can remove the optimum):
1. candidates that do not fit in memory even alone on their devices are dropped;
2. among candidates with the same placement (devices, dp, tp, pp, ep), which only differ in
   micro-batches and so have the same reallocation and transfer costs, a candidate that is
   no faster and needs no less working memory than another is dropped (no faster both
   with and without the proximal forward a rollout model's train call adds under staleness
   >= 1, CallTable.proximal_s).
Candidates listed in `keep` (e.g. the baselines' executions) are never dropped by step 2.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numba
import numpy as np

from costmodel import comm
from costmodel.call_cost import call_time
from costmodel.core_sharing import core_limited_nodes
from costmodel.memory import RESIDENT_KINDS, WORKING_KINDS, layout_memory_parts
from costmodel.plan_cost import proximal_forward
from planner.domain.augment import model_call_pairs, priority_order
from planner.domain.cluster import ClusterSpec
from planner.domain.data_keys import payload_bytes
from planner.domain.layout import Execution
from planner.domain.mesh import allowed_meshes
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import ModelFunctionCall, ModelRole, Workflow
from planner.search.baselines import baseline_meshes
from planner.search.deadline import Deadline
from planner.search.shape_pricing import price_shapes
from planner.search.space import candidate_executions
from planner.search.tables import Candidates, CallTable, DataEdge, ModelPair, SearchTables

US = 1e-6


def mesh_shape(devices: tuple[int, ...], cluster: ClusterSpec) -> tuple:
    """What a mesh's cost depends on: per spanned node, its hardware, its device count, the
    rails (NICs) those devices send through and the node's network (NICs, devices, NIC
    bandwidth), since collectives across nodes run at the NICs the group drives.

    Every mesh the search builds is a run of consecutive device ids (planner.domain.mesh
    allowed_meshes), and a node's devices have consecutive ids: such a mesh's shape is the
    whole-node entries of the nodes it covers (computed once per cluster) and, at its ends,
    the entries of the part of a node it holds."""
    lo, hi = devices[0], devices[-1]
    if hi - lo + 1 != len(devices) or devices != tuple(range(lo, hi + 1)):
        return _shape_of_nodes(_devices_by_node(devices, cluster), cluster)
    whole = _whole_node_entries(cluster)
    shape = []
    for n in range(cluster.device_node[lo], cluster.device_node[hi] + 1):
        first = cluster.node_first_device[n]
        stop = first + cluster.node_devices_per_node[n]
        if lo <= first and stop <= hi + 1:
            shape.append(whole[n])
        else:
            shape.extend(_shape_of_nodes({n: range(max(lo, first), min(stop, hi + 1))},
                                         cluster))
    return tuple(shape)


def _devices_by_node(devices, cluster: ClusterSpec) -> dict[int, list[int]]:
    by_node: dict[int, list[int]] = defaultdict(list)
    for d in devices:
        by_node[cluster.device_node[d]].append(d)
    return by_node


def _shape_of_nodes(by_node: dict[int, Sequence[int]], cluster: ClusterSpec) -> tuple:
    """mesh_shape's entries of the devices `by_node` holds on each node, in node order."""
    nics = cluster.device_nics
    shape = []
    for n, on_node in sorted(by_node.items()):
        group = cluster.node_group_of_node[n]
        rails = {nics[d][1] for d in on_node}
        shape.append((cluster.node_hardware[n].name, len(on_node), len(rails),
                      group.nics_per_node, group.devices_per_node,
                      group.nic_bandwidth_gb_per_s))
    return tuple(shape)


@lru_cache(maxsize=8)
def _whole_node_entries(cluster: ClusterSpec) -> tuple[tuple, ...]:
    """Per node, mesh_shape's entry of all its devices."""
    return tuple(_shape_of_nodes({n: range(first, first + count)}, cluster)[0]
                 for n, (first, count) in enumerate(zip(cluster.node_first_device,
                                                        cluster.node_devices_per_node)))


# What CallPricer.price returns, in order: the CallTable columns it fills.
PRICE_COLUMNS = ("time_s", "weights_bytes", "state_bytes", "activation_bytes",
                 "alone_peak_bytes")


class CallPricer:
    """Time and memory of (call, execution), cached by mesh shape on alike nodes."""

    def __init__(self, workflow: Workflow, cluster: ClusterSpec, calibration=None,
                 profiles_dir: Path = PROFILES_DIR):
        self.workflow = workflow
        self.cluster = cluster
        self.calibration = calibration
        self.profiles_dir = Path(profiles_dir)
        self.times: dict[tuple, float] = {}
        self.memories: dict[tuple, tuple[float, ...]] = {}
        self.shapes: dict[tuple[int, ...], tuple] = {}
        self.shape_ids: dict[tuple, int] = {}
        self.capacities: dict[tuple[int, ...], float] = {}

    def shape_of(self, devices: tuple[int, ...]) -> tuple:
        if devices not in self.shapes:
            self.shapes[devices] = mesh_shape(devices, self.cluster)
        return self.shapes[devices]

    def shape_id(self, devices: tuple[int, ...]) -> int:
        """The id of the mesh's shape (one id per distinct shape): price keys hold it, not
        the shape, whose nested tuples would be hashed on every look-up."""
        return self.shape_ids.setdefault(self.shape_of(devices), len(self.shape_ids))

    def capacity_bytes(self, devices: tuple[int, ...]) -> float:
        """The smallest usable device memory over the mesh (memory less the headroom)."""
        if devices not in self.capacities:
            firsts = {self.cluster.node_first_device[self.cluster.device_node[d]]
                      for d in devices}
            self.capacities[devices] = min(self.cluster.usable_memory_bytes(d) for d in firsts)
        return self.capacities[devices]

    def _key(self, call: ModelFunctionCall, ex: Execution, shape_id: int) -> tuple:
        # Everything the price depends on but the devices themselves (module docstring).
        return (call.name, ex.dp, ex.tp, ex.pp, ex.ep, ex.micro_batches,
                ex.shard_optimizer_over_dp, ex.recompute, ex.decode_batching,
                ex.shard_parameters_over_dp, shape_id)

    def time_s(self, call: ModelFunctionCall, execution: Execution,
               shape_id: int | None = None) -> float:
        """Seconds of (call, execution) (costmodel.call_cost.call_time); `shape_id` is
        shape_id(execution.devices) when the caller has it (pricing many layouts of one
        mesh: its devices are then not hashed once per layout)."""
        key = self._key(call, execution, self.shape_id(execution.devices)
                        if shape_id is None else shape_id)
        if key not in self.times:
            role: ModelRole = self.workflow.models[call.model]
            self.times[key] = call_time(call, role, execution, self.workflow.batch,
                                        self.cluster, self.profiles_dir,
                                        calibration=self.calibration).time_s
        return self.times[key]

    def prices_proximal(self, call: ModelFunctionCall) -> bool:
        """Whether `call` runs a proximal forward under some staleness >= 1: a train call of
        a rollout model, in a workflow whose max_staleness is >= 1."""
        return (self.workflow.max_staleness >= 1 and call.kind == "train"
                and call.model in self.workflow.rollout_models())

    def proximal_s(self, call: ModelFunctionCall, execution: Execution,
                   shape_id: int | None = None) -> float:
        """Seconds of the proximal forward of `call` on `execution` (0 when
        prices_proximal is False): as costmodel.plan_cost.PlanCosts.proximal_time, an
        inference call of the same model over the train call's inputs that outputs
        `logprobs`, on the train call's execution, with the same calibration; cached like
        time_s, by mesh shape."""
        if not self.prices_proximal(call):
            return 0.0
        return self.time_s(proximal_forward(call), execution, shape_id)

    def _memory_key(self, call: ModelFunctionCall, ex: Execution) -> tuple:
        # call_memory reads of the devices only the first one's compute dtype and device
        # kind (its workspace): meshes of any shape share the memory of a layout.
        hw = self.cluster.hardware_of(ex.devices[0])
        return (call.name, ex.dp, ex.tp, ex.pp, ex.ep, ex.micro_batches,
                ex.shard_optimizer_over_dp, ex.recompute, ex.decode_batching,
                ex.shard_parameters_over_dp, hw.compute_dtype_bytes, hw.kind)

    def memory_of(self, call: ModelFunctionCall, layouts: list[Execution]) -> np.ndarray:
        """PRICE_COLUMNS but the time of each of `layouts`, array [n, 4]: bytes per device
        (the largest over the mesh) of the CallMemory of (call, layout), the layouts of one
        tp x pp priced together (costmodel.memory.layout_memory_parts)."""
        keys = [self._memory_key(call, e) for e in layouts]
        missing: dict[tuple, dict[tuple, Execution]] = defaultdict(dict)
        for key, e in zip(keys, layouts):
            if key not in self.memories:
                missing[(e.tp, e.pp) + key[-2:]].setdefault(key, e)
        role: ModelRole = self.workflow.models[call.model]
        for (_, _, dtype_bytes, kind), group in missing.items():
            parts = layout_memory_parts(call, role.spec, role.head, list(group.values()),
                                        self.workflow.batch, dtype_bytes, kind)
            columns = np.stack([parts.weights, parts.sum_of(RESIDENT_KINDS),
                                parts.sum_of(WORKING_KINDS), parts.total]).max(axis=(2, 3))
            for key, row in zip(group, columns.T):
                self.memories[key] = tuple(float(v) for v in row)
        return np.array([self.memories[key] for key in keys],
                        dtype=np.float64).reshape(len(layouts), len(PRICE_COLUMNS) - 1)

    def memory(self, call: ModelFunctionCall, execution: Execution) -> tuple[float, ...]:
        """memory_of one execution, as a tuple."""
        return tuple(float(v) for v in self.memory_of(call, [execution])[0])

    def price(self, call: ModelFunctionCall, execution: Execution) -> tuple[float, ...]:
        """PRICE_COLUMNS of (call, execution): seconds, and bytes per device (the largest
        over the mesh) read from its CallMemory."""
        return (self.time_s(call, execution),) + self.memory(call, execution)


def mesh_classes(meshes: list[tuple[int, ...]], pricer: CallPricer
                 ) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Meshes of one shape (mesh_shape) price alike: the first mesh of each shape, in the
    order of `meshes`, and the index of each mesh's shape in that list."""
    first: dict[tuple, int] = {}
    representatives: list[tuple[int, ...]] = []
    of_mesh = np.empty(len(meshes), dtype=np.int64)
    for m, mesh in enumerate(meshes):
        shape = pricer.shape_of(mesh)
        if shape not in first:
            first[shape] = len(representatives)
            representatives.append(mesh)
        of_mesh[m] = first[shape]
    return representatives, of_mesh


# Placement ids (CallTable.placement) are mesh index x PLACEMENT_SPAN + the id of (dp, tp,
# pp, ep), so they are shared by all calls without a table of every placement.
PLACEMENT_SPAN = 1 << 24


@dataclass
class ShapePrices:
    """One call's candidates on one representative mesh: its layouts (candidate_executions
    order), PRICE_COLUMNS but the time (memory, one row per layout), the time (+inf where
    unpriced), the mesh's capacity and the proximal forward's seconds (CallTable.proximal_s,
    +inf where the time is unpriced)."""

    layouts: list[Execution]
    memory: np.ndarray
    time_s: np.ndarray
    capacity_bytes: np.ndarray
    proximal_s: np.ndarray

    def column(self, name: str) -> np.ndarray:
        """A memory column (PRICE_COLUMNS but the time) of every layout."""
        return self.memory[:, PRICE_COLUMNS.index(name) - 1]

    def fits(self) -> np.ndarray:
        return self.column("alone_peak_bytes") <= self.capacity_bytes

    def fits_any(self) -> bool:
        return bool(np.any(self.fits()))

    def searched_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Layouts (indices, ascending) that pruning keeps on every mesh of this shape
        (module docstring, steps 1 and 2, nothing protected), and those that fit alone (the
        baselines' meshes keep them all). When none fits, both are the layout that misses by
        the least, unpriced: the tables then still tell how far the call is from fitting
        (pipeline.smallest_alone_shortfall_bytes)."""
        fits = self.fits()
        if not fits.any():
            excess = self.column("alone_peak_bytes") - self.capacity_bytes
            least = np.argsort(excess, kind="stable")[:1]
            return least, least
        degrees: dict = {}
        group = np.array([degrees.setdefault((e.dp, e.tp, e.pp, e.ep), len(degrees))
                          for e in self.layouts], dtype=np.int64)
        order, starts = _groups(group)
        dominated = _dominated(order, starts, self.time_s, self.time_s + self.proximal_s,
                               self.column("activation_bytes"),
                               np.zeros(len(group), dtype=np.bool_), fits)
        return np.flatnonzero(fits & ~dominated), np.flatnonzero(fits)


# The fields of an Execution but its devices, in order: what packed_prices keeps of a
# layout (every layout of one ShapePrices is on the same mesh).
LAYOUT_FIELDS = tuple(name for name in Execution.model_fields if name != "devices")


def packed_prices(prices: list[ShapePrices]) -> list[tuple]:
    """Shape prices in a form that pickles in a few bytes per layout (shape_pricing sends it
    between processes): each layout as its LAYOUT_FIELDS values, the mesh once. Pickled
    Executions carry their mesh each, which made the 1,024-GPU tables' 170,000 layouts
    228 MB and 8 s to read back."""
    return [(p.layouts[0].devices if p.layouts else (),
             [tuple(getattr(e, f) for f in LAYOUT_FIELDS) for e in p.layouts],
             p.memory, p.time_s, p.capacity_bytes, p.proximal_s) for p in prices]


def unpacked_prices(packed: list[tuple]) -> list[ShapePrices]:
    """The shape prices of packed_prices. The layouts were validated where they were built
    (space.candidate_executions), so they are rebuilt without validating them again."""
    return [ShapePrices([Execution.model_construct(devices=mesh, **dict(zip(LAYOUT_FIELDS, row)))
                         for row in rows], memory, time_s, capacity, proximal)
            for mesh, rows, memory, time_s, capacity, proximal in packed]


def _shape_prices(call: ModelFunctionCall, role: ModelRole, cluster: ClusterSpec, batch,
                  mesh: tuple[int, ...], pricer: CallPricer, price_unfit: bool) -> ShapePrices:
    """The call's layouts on `mesh`, memory priced first and times only for those that fit
    alone unless `price_unfit` (a candidate that cannot fit alone is in no feasible plan,
    pruned_tables step 1: its time is +inf)."""
    layouts = candidate_executions(call, role.spec, cluster, batch, [mesh],
                                   pricer.workflow.max_staleness)
    memory = pricer.memory_of(call, layouts)
    capacity = np.full(len(layouts), pricer.capacity_bytes(mesh)) if layouts else np.zeros(0)
    fits = memory[:, PRICE_COLUMNS.index("alone_peak_bytes") - 1] <= capacity
    shape_id = pricer.shape_id(mesh)
    time_s = np.array([pricer.time_s(call, e, shape_id) if price_unfit or fit else np.inf
                       for e, fit in zip(layouts, fits)], dtype=np.float64)
    proximal_s = np.zeros(len(layouts))
    if pricer.prices_proximal(call):
        proximal_s = np.array([pricer.proximal_s(call, e, shape_id) if price_unfit or fit
                               else np.inf for e, fit in zip(layouts, fits)], dtype=np.float64)
    return ShapePrices(layouts, memory, time_s, capacity, proximal_s)


def _call_table(call: ModelFunctionCall, meshes: list[tuple[int, ...]], of_mesh: np.ndarray,
                priced: list[ShapePrices | None], degree_ids: dict,
                baseline_mesh: np.ndarray | None) -> CallTable:
    """The call's candidates on every mesh whose shape is priced (`priced[c]` of shape c,
    None when not priced), each shape's layouts shared by its alike meshes (rows in the
    order of `meshes`, then of candidate_executions). With `baseline_mesh` (a mask over
    `meshes`), pruned per shape (ShapePrices.searched_rows): the meshes it marks keep the
    layouts that fit, the others those that pruning keeps."""
    layouts: list[Execution] = []
    per_class: list[np.ndarray] = []
    per_class_baseline: list[np.ndarray] = []
    for prices in priced:
        found = prices.layouts if prices is not None else []
        if prices is None or baseline_mesh is None:
            searched = fitting = np.arange(len(found), dtype=np.int64)
        else:
            searched, fitting = prices.searched_rows()
        per_class.append(len(layouts) + searched)
        per_class_baseline.append(len(layouts) + fitting)
        layouts += found
    empty = np.zeros(0)
    memory = np.concatenate([p.memory for p in priced if p is not None] or
                            [empty.reshape(0, len(PRICE_COLUMNS) - 1)])
    capacity = np.concatenate([p.capacity_bytes for p in priced if p is not None] or [empty])
    time_s = np.concatenate([p.time_s for p in priced if p is not None] or [empty])
    proximal_s = np.concatenate([p.proximal_s for p in priced if p is not None] or [empty])
    rows_of_mesh = [per_class_baseline[c] if baseline_mesh is not None and baseline_mesh[m]
                    else per_class[c] for m, c in enumerate(of_mesh)]
    counts = np.array([len(rows) for rows in rows_of_mesh], dtype=np.int64)
    mesh_index = np.repeat(np.arange(len(meshes), dtype=np.int64), counts)
    layout_index = np.concatenate(rows_of_mesh or [np.zeros(0, dtype=np.int64)])
    degrees = np.array([degree_ids.setdefault((e.dp, e.tp, e.pp, e.ep), len(degree_ids))
                        for e in layouts], dtype=np.int64)
    assert len(degree_ids) < PLACEMENT_SPAN
    columns = {"time_s": time_s[layout_index]}
    columns.update({name: memory[layout_index, i]
                    for i, name in enumerate(PRICE_COLUMNS[1:])})
    return CallTable(name=call.name, model=call.model, kind=call.kind,
                     executions=Candidates(meshes, layouts, mesh_index, layout_index),
                     capacity_bytes=capacity[layout_index],
                     placement=mesh_index * PLACEMENT_SPAN + degrees[layout_index],
                     proximal_s=proximal_s[layout_index], **columns)


def shape_order(representatives: list[tuple[int, ...]], of_mesh: np.ndarray,
                meshes: list[tuple[int, ...]], first: list[tuple[int, ...]]) -> list[int]:
    """Shapes (indices into `representatives`) in pricing order: those of the meshes in
    `first`, in that order, then the others from the most devices to the fewest (ties in
    the order of `representatives`)."""
    mesh_id = {m: i for i, m in enumerate(meshes)}
    order: list[int] = []
    for mesh in first:
        if mesh in mesh_id and int(of_mesh[mesh_id[mesh]]) not in order:
            order.append(int(of_mesh[mesh_id[mesh]]))
    rest = sorted(set(range(len(representatives))) - set(order),
                  key=lambda c: (-len(representatives[c]), c))
    return order + rest


def _groups(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by group id (stable) and the start of each group in that order."""
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    return order, np.concatenate([[0], bounds, [len(order)]]).astype(np.int64)


def undominated(table: CallTable, keep: set[int],
                among: np.ndarray | None = None) -> np.ndarray:
    """Mask of candidates not dominated within their placement (module docstring, step 2):
    i is dominated when another candidate j of its placement is no slower and needs no more
    working memory, and is faster, leaner or (a tie) listed first. Only the candidates of
    the mask `among` (default: all) dominate others."""
    order, starts = _groups(table.placement)
    protected = np.zeros(len(table), dtype=np.bool_)
    protected[list(keep)] = True
    among = np.ones(len(table), dtype=np.bool_) if among is None else among
    return ~_dominated(order, starts, table.time_s, table.time_s + table.proximal_s,
                       table.activation_bytes, protected, among)


@numba.njit(cache=True)
def _dominated(order, starts, time_s, async_time_s, memory, protected, among):
    """Rows dominated by a row of `among` inside their group (rows order[starts[g]:
    starts[g + 1]], ascending). A row dominates only when it is no slower both without and
    with its proximal forward (`async_time_s`, the time under staleness >= 1), so pruning
    keeps the optimum of every staleness; without proximal seconds the two are equal."""
    out = np.zeros(order.shape[0], dtype=np.bool_)
    for g in range(starts.shape[0] - 1):
        for a in range(starts[g], starts[g + 1]):
            i = order[a]
            if protected[i]:
                continue
            for b in range(starts[g], starts[g + 1]):
                j = order[b]
                if j != i and among[j] and time_s[j] <= time_s[i] and memory[j] <= memory[i] \
                        and async_time_s[j] <= async_time_s[i] \
                        and (time_s[j] < time_s[i] or memory[j] < memory[i] or j < i):
                    out[i] = True
                    break
    return out


def move_factors(calibration, cluster: ClusterSpec) -> tuple[float, float]:
    """(scale, overhead_s) of calibrated reallocation and transfer times (an affine map of
    the priced time); (1, 0) without a calibration or when it does not cover the cluster."""
    everything = Execution(devices=tuple(range(cluster.num_devices)), dp=cluster.num_devices,
                           tp=1, pp=1)
    if calibration is None or not calibration.applies_to(everything, cluster):
        return 1.0, 0.0
    overhead = calibration.move_time_s(0.0)
    return calibration.move_time_s(1.0) - overhead, overhead


def full_tables(workflow: Workflow, cluster: ClusterSpec, num_iterations: int = 3,
                calibration=None, profiles_dir: Path = PROFILES_DIR,
                price_unfit: bool = True, deadline: Deadline | None = None,
                workers: int | None = None) -> SearchTables:
    """Every valid candidate of every call, priced, not yet pruned. `calibration` is a
    costmodel.calibration.Calibration (from `plan calibrate`) or None; `profiles_dir` holds
    the profile tables (<dir>/<device>/<shape>.yaml). `price_unfit=False` leaves the time
    of candidates that cannot fit alone unpriced (+inf): what the search does, since
    pruning drops them.

    Mesh shapes (mesh_shape) are priced every call on each, by up to `workers` processes
    (None: one per available core; planner/search/shape_pricing.py), in this order:
    the all-devices mesh's shape, then the shapes of the meshes the baselines use
    (baselines.baseline_meshes), then the others from the most devices to the fewest.
    With a `deadline` (planner.search.deadline.Deadline) that has expired when a shape is
    due, the shapes left are not priced and the tables hold the candidates of the priced
    shapes' meshes only, marked `complete=False` (`shapes_priced` of `shapes_total`
    shapes priced, as the tables say in either case); the first shape is always priced, and
    pricing goes on past the deadline while some call has no candidate that fits alone
    (tables without one cannot hold a feasible plan; a layout that does not fit costs only
    its memory). Without a deadline, or when it does not expire, every shape is priced and
    the tables are the same whatever the order (rows follow the meshes' order).

    `price_unfit=True` keeps every candidate (for callers that look up any execution in
    the tables); `price_unfit=False` keeps only what the search can use: the candidates
    that pruned_tables would keep, pruned per shape (module docstring), except on the
    baselines' meshes, where every candidate that fits alone stays;
    pruned_tables(full_tables(..., price_unfit=False), keep) is the same for both as long
    as `keep` lies on the baselines' meshes."""
    pricer = CallPricer(workflow, cluster, calibration, profiles_dir)
    meshes = allowed_meshes(cluster)
    representatives, of_mesh = mesh_classes(meshes, pricer)
    calls_of = [workflow.call_by_name[name] for name in workflow.call_order]
    priced: list[list[ShapePrices | None]] = [[None] * len(representatives)
                                              for _ in calls_of]
    first = [tuple(range(cluster.num_devices))] + baseline_meshes(workflow, cluster)
    order = shape_order(representatives, of_mesh, meshes, first)

    def price_shape(c: int) -> list[ShapePrices]:
        return [_shape_prices(call, workflow.models[call.model], cluster, workflow.batch,
                              representatives[c], pricer, price_unfit) for call in calls_of]

    by_shape = price_shapes(order, price_shape,
                            lambda prices: [p.fits_any() for p in prices], len(calls_of),
                            deadline, workers, pack=packed_prices, unpack=unpacked_prices)
    for c, prices in by_shape.items():
        for k in range(len(calls_of)):
            priced[k][c] = prices[k]
    shapes_priced = len(by_shape)
    complete = shapes_priced == len(order)
    degree_ids: dict = {}
    firsts = set(first)
    baseline_mesh = None if price_unfit else np.array([m in firsts for m in meshes],
                                                      dtype=np.bool_)
    calls = [_call_table(call, meshes, of_mesh, priced[k], degree_ids, baseline_mesh)
             for k, call in enumerate(calls_of)]
    index = {name: k for k, name in enumerate(workflow.call_order)}
    edges = [DataEdge(index[s], index[d], payload_bytes(keys, workflow.batch))
             for s, d, keys in workflow.graph.edges(data="keys")]
    pairs, pair_index = [], {}
    for pair in model_call_pairs(workflow):
        model, a, b, wraps = pair
        role = workflow.models[model]
        dtype_bytes = cluster.hardware_of(0).compute_dtype_bytes
        pair_index[pair] = len(calls) + len(pairs)
        pairs.append(ModelPair(model, index[a], index[b], wraps,
                               float(role.spec.num_params(role.head) * dtype_bytes)))
    priority = []
    for pair, call in priority_order(workflow):
        priority += [pair_index[pair]] if pair is not None else []
        priority.append(index[call])
    intra = [comm.intra_node_link(cluster, node) for node in range(cluster.num_nodes)]
    move_scale, move_overhead_s = move_factors(calibration, cluster)
    return SearchTables(
        calls=calls, edges=edges, pairs=pairs,
        trained_models=frozenset(workflow.trained_models()),
        device_node=np.array(cluster.device_node, dtype=np.int64),
        intra_node_bandwidth_bytes_per_s=min(link.bandwidth_bytes_per_s for link in intra),
        intra_node_latency_s=max(link.latency_s for link in intra),
        inter_node_bandwidth_bytes_per_s=min(comm.nic_share_bytes_per_s(cluster, d)
                                             for d in range(cluster.num_devices)),
        inter_node_latency_s=cluster.inter_node_latency_us * US,
        num_iterations=num_iterations, max_staleness=workflow.max_staleness,
        move_scale=move_scale, move_overhead_s=move_overhead_s,
        core_limited=core_limited_nodes(cluster, calibration),
        priority=tuple(priority), complete=complete, shapes_priced=shapes_priced,
        shapes_total=len(order))


def pruned_tables(tables: SearchTables, keep: dict[str, set[int]]) -> tuple[SearchTables,
                                                                          list[np.ndarray]]:
    """Tables after pruning, and for each call the old index of every kept candidate."""
    new_calls, kept = [], []
    for table in tables.calls:
        protected = keep.get(table.name, set())
        alive = table.fits_alone()
        alive &= undominated(table, protected, among=alive) | np.isin(np.arange(len(table)),
                                                                      list(protected))
        index = np.flatnonzero(alive)
        new_calls.append(table.subset(index))
        kept.append(index)
    pruned = SearchTables(**{**tables.__dict__, "calls": new_calls})
    return pruned, kept
