"""Building the search tables: candidates of every call, priced by the cost model, pruned.

Pricing uses costmodel.call_cost (time and memory of a call on an execution). On clusters
whose nodes are alike, a call's cost depends on its layout, its run policy (ZeRO-1,
recomputation) and on how many devices of which nodes its mesh spans, not on which node:
prices are cached by that shape.

Pruning (neither step can remove the optimum):
1. candidates that do not fit in memory even alone on their devices are dropped;
2. among candidates with the same placement (devices, dp, tp, pp), which only differ in
   micro-batches and so have the same reallocation and transfer costs, a candidate that is
   no faster and needs no less working memory than another is dropped.
Candidates listed in `keep` (e.g. the baselines' executions) are never dropped by step 2.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from costmodel import comm
from costmodel.call_cost import call_memory, call_time
from planner.domain.augment import model_call_pairs, priority_order
from planner.domain.cluster import ClusterSpec
from planner.domain.data_keys import payload_bytes
from planner.domain.layout import Execution
from planner.domain.mesh import allowed_meshes
from planner.domain.paths import PROFILES_DIR
from planner.domain.workflow import ModelFunctionCall, ModelRole, Workflow
from planner.search.space import candidate_executions
from planner.search.tables import CallTable, DataEdge, ModelPair, SearchTables

US = 1e-6


def mesh_shape(devices: tuple[int, ...], cluster: ClusterSpec) -> tuple:
    """What a mesh's cost depends on: per spanned node, its hardware, its device count, the
    rails (NICs) those devices send through and the node's network (NICs, devices, NIC
    bandwidth), since collectives across nodes run at the NICs the group drives."""
    counts: dict[int, int] = defaultdict(int)
    rails: dict[int, set[int]] = defaultdict(set)
    for d in devices:
        node, nic = cluster.nic_of(d)
        counts[node] += 1
        rails[node].add(nic)
    shape = []
    for n, c in sorted(counts.items()):
        group = cluster.node_group_of_node[n]
        shape.append((cluster.node_hardware[n].name, c, len(rails[n]), group.nics_per_node,
                       group.devices_per_node, group.nic_bandwidth_gb_per_s))
    return tuple(shape)


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
        self.cache: dict[tuple, tuple[float, ...]] = {}
        self.shapes: dict[tuple[int, ...], tuple] = {}
        self.capacities: dict[tuple[int, ...], float] = {}

    def shape_of(self, devices: tuple[int, ...]) -> tuple:
        if devices not in self.shapes:
            self.shapes[devices] = mesh_shape(devices, self.cluster)
        return self.shapes[devices]

    def capacity_bytes(self, devices: tuple[int, ...]) -> float:
        """The smallest usable device memory over the mesh (memory less the headroom)."""
        if devices not in self.capacities:
            firsts = {self.cluster.node_first_device[self.cluster.device_node[d]]
                      for d in devices}
            self.capacities[devices] = min(self.cluster.usable_memory_bytes(d) for d in firsts)
        return self.capacities[devices]

    def price(self, call: ModelFunctionCall, execution: Execution) -> tuple[float, ...]:
        """PRICE_COLUMNS of (call, execution): seconds, and bytes per device (the largest
        over the mesh) read from its CallMemory."""
        ex = execution
        # Everything the price depends on but the devices themselves (module docstring).
        key = (call.name, ex.dp, ex.tp, ex.pp, ex.micro_batches, ex.shard_optimizer_over_dp,
               ex.recompute, self.shape_of(ex.devices))
        if key not in self.cache:
            role: ModelRole = self.workflow.models[call.model]
            batch = self.workflow.batch
            seconds = call_time(call, role, ex, batch, self.cluster, self.profiles_dir,
                                calibration=self.calibration).time_s
            memory = call_memory(call, role, ex, batch, self.cluster)
            self.cache[key] = (seconds, float(memory.weights_bytes.max()),
                               float(memory.resident_bytes.max()),
                               float(memory.working_bytes.max()),
                               float(memory.alone_bytes().max()))
        return self.cache[key]


def _call_table(call: ModelFunctionCall, executions: list[Execution], pricer: CallPricer,
                placement_ids: dict) -> CallTable:
    prices = np.array([pricer.price(call, e) for e in executions], dtype=np.float64)
    prices = prices.reshape(len(executions), len(PRICE_COLUMNS))
    capacity = np.array([pricer.capacity_bytes(e.devices) for e in executions])
    placement = np.array([placement_ids.setdefault(e.placement, len(placement_ids))
                          for e in executions], dtype=np.int64)
    columns = {name: prices[:, i] for i, name in enumerate(PRICE_COLUMNS)}
    return CallTable(name=call.name, model=call.model, kind=call.kind, executions=executions,
                     capacity_bytes=capacity, placement=placement, **columns)


def undominated(table: CallTable, keep: set[int]) -> np.ndarray:
    """Mask of candidates not dominated within their placement (module docstring, step 2)."""
    mask = np.ones(len(table), dtype=bool)
    by_placement: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(table.placement):
        by_placement[int(p)].append(i)
    for members in by_placement.values():
        for i in members:
            if i in keep:
                continue
            for j in members:
                if j != i and table.time_s[j] <= table.time_s[i] and \
                        table.activation_bytes[j] <= table.activation_bytes[i] and \
                        (table.time_s[j] < table.time_s[i] or
                         table.activation_bytes[j] < table.activation_bytes[i] or j < i):
                    mask[i] = False
                    break
    return mask


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
                calibration=None, profiles_dir: Path = PROFILES_DIR) -> SearchTables:
    """Every valid candidate of every call, priced, not yet pruned. `calibration` is a
    costmodel.calibration.Calibration (from `plan calibrate`) or None; `profiles_dir` holds
    the profile tables (<dir>/<device>/<shape>.yaml)."""
    pricer = CallPricer(workflow, cluster, calibration, profiles_dir)
    meshes = allowed_meshes(cluster)
    placement_ids: dict = {}
    calls = []
    for name in workflow.call_order:
        call = workflow.call_by_name[name]
        role = workflow.models[call.model]
        executions = candidate_executions(call, role.spec, cluster, workflow.batch, meshes)
        calls.append(_call_table(call, executions, pricer, placement_ids))
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
        num_iterations=num_iterations, move_scale=move_scale, move_overhead_s=move_overhead_s,
        priority=tuple(priority))


def pruned_tables(tables: SearchTables, keep: dict[str, set[int]]) -> tuple[SearchTables,
                                                                          list[np.ndarray]]:
    """Tables after pruning, and for each call the old index of every kept candidate."""
    new_calls, kept = [], []
    for table in tables.calls:
        protected = keep.get(table.name, set())
        alive = table.fits_alone()
        alive &= undominated(table, protected) | np.isin(np.arange(len(table)),
                                                         list(protected))
        index = np.flatnonzero(alive)
        new_calls.append(table.subset(index))
        kept.append(index)
    pruned = SearchTables(**{**tables.__dict__, "calls": new_calls})
    return pruned, kept
