"""Precomputed per-candidate costs that the fast evaluator and the search read as arrays.

One `CallTable` per call holds its candidate executions and, per candidate, the time and the
memory pieces the simulator's memory rule needs (bytes per device, the largest over the
mesh's pipeline stages). `SearchTables` adds the workflow structure: data edges with their
payload, consecutive-call pairs of each model (where reallocations happen), and the links.

Candidates are stored as (mesh, layout) index pairs (`Candidates`): a cluster of 1,024
devices has millions of candidates per call but only thousands of distinct layouts, so an
`Execution` object is made only for the candidates that are looked at (a plan's calls, the
baselines' options), never for every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from planner.domain.layout import RECOMPUTE_MODES, Execution


# Codes of Execution.recompute in the `recompute` column (the order of RECOMPUTE_MODES).
RECOMPUTE_CODE = {mode: i for i, mode in enumerate(RECOMPUTE_MODES)}


def _degrees(execution: Execution) -> tuple[int, int, int, int]:
    return execution.dp, execution.tp, execution.pp, execution.micro_batches


class Candidates(Sequence):
    """The candidate executions of one call as a sequence of `Execution`, stored as index
    pairs: row i is layout `layout_index[i]` (an Execution on a representative mesh of the
    same shape) moved to mesh `mesh_index[i]` (a contiguous, ascending device tuple)."""

    def __init__(self, meshes: list[tuple[int, ...]], layouts: list[Execution],
                 mesh_index: np.ndarray, layout_index: np.ndarray,
                 fields: dict[str, np.ndarray] | None = None):
        self.meshes = meshes
        self.layouts = layouts
        self.mesh_index = np.asarray(mesh_index, dtype=np.int64)
        self.layout_index = np.asarray(layout_index, dtype=np.int64)
        # per distinct mesh or layout, the values of mesh_field / layout_field by name:
        # shared with every subset (same meshes and layouts), so that pruning a table of a
        # million rows does not read its hundred thousand layouts' fields again in Python
        self._fields = {} if fields is None else fields

    @classmethod
    def of(cls, executions: list[Execution]) -> "Candidates":
        """Candidates of explicit executions (each its own layout)."""
        meshes: dict[tuple[int, ...], int] = {}
        mesh_index = [meshes.setdefault(tuple(e.devices), len(meshes)) for e in executions]
        return cls(list(meshes), list(executions), np.array(mesh_index, dtype=np.int64),
                   np.arange(len(executions), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.mesh_index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        layout = self.layouts[int(self.layout_index[i])]
        mesh = self.meshes[int(self.mesh_index[i])]
        # the layout was validated on a mesh of the same shape: only the devices change
        return layout if layout.devices == mesh else layout.model_copy(update={"devices": mesh})

    def index(self, execution: Execution, *_) -> int:
        """Row of `execution` (the first, should several be equal); ValueError when it is not
        a candidate. Only the rows on its mesh whose layout has its degrees and
        micro-batches are compared in full."""
        mesh_id = self._mesh_ids.get(tuple(execution.devices))
        layouts = self._layouts_by_degrees.get(_degrees(execution))
        if mesh_id is not None and layouts is not None:
            order, starts = self._rows_by_mesh
            rows = order[starts[mesh_id]:starts[mesh_id + 1]]
            for i in rows[np.isin(self.layout_index[rows], layouts)]:
                if self[int(i)] == execution:
                    return int(i)
        raise ValueError(f"{execution} is not a candidate")

    @cached_property
    def _layouts_by_degrees(self) -> dict[tuple[int, int, int, int], np.ndarray]:
        ids: dict[tuple[int, int, int, int], list[int]] = {}
        for k, layout in enumerate(self.layouts):
            ids.setdefault(_degrees(layout), []).append(k)
        return {key: np.array(v, dtype=np.int64) for key, v in ids.items()}

    def rows_on(self, mesh: tuple[int, ...]) -> np.ndarray:
        """Rows whose mesh is `mesh`, ascending."""
        mesh_id = self._mesh_ids.get(tuple(mesh))
        if mesh_id is None:
            return np.zeros(0, dtype=np.int64)
        order, starts = self._rows_by_mesh
        return order[starts[mesh_id]:starts[mesh_id + 1]]

    @cached_property
    def _mesh_ids(self) -> dict[tuple[int, ...], int]:
        return {m: i for i, m in enumerate(self.meshes)}

    @cached_property
    def _rows_by_mesh(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.mesh_index, kind="stable")
        counts = np.bincount(self.mesh_index, minlength=len(self.meshes))
        return order, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def mesh_field(self, name: str, get, dtype=np.int64) -> np.ndarray:
        """`get(mesh)` of every row's mesh (a device tuple), as an array; `name` names
        `get` among the fields of these meshes (each read once, subsets included)."""
        return self._field("mesh:" + name, self.meshes, get, dtype)[self.mesh_index]

    def layout_field(self, name: str, get, dtype=np.int64) -> np.ndarray:
        """`get(execution)` of every row's layout (Execution fields but `devices`), as an
        array; `name` as for mesh_field."""
        return self._field("layout:" + name, self.layouts, get, dtype)[self.layout_index]

    def _field(self, key: str, items: list, get, dtype) -> np.ndarray:
        values = self._fields.get(key)
        if values is None:
            values = self._fields[key] = np.array([get(item) for item in items], dtype=dtype)
        return values

    def subset(self, index: np.ndarray) -> "Candidates":
        return Candidates(self.meshes, self.layouts, self.mesh_index[index],
                          self.layout_index[index], self._fields)


@dataclass
class CallTable:
    """Candidates of one call and their precomputed costs (arrays indexed by candidate)."""

    name: str
    model: str
    kind: str
    executions: Candidates
    time_s: np.ndarray
    # Bytes per device, each the largest over the mesh, from costmodel.memory.CallMemory:
    weights_bytes: np.ndarray          # model weights in this layout
    state_bytes: np.ndarray            # resident: weights + gradients + optimizer states of
                                       #   a train call (the fast evaluator reads it for
                                       #   train calls only), the weights otherwise
    activation_bytes: np.ndarray       # working memory of the call (activations, KV cache, ...)
    alone_peak_bytes: np.ndarray       # resident + working at its highest device, what it
                                       #   needs alone on its mesh (CallMemory.alone_bytes)
    capacity_bytes: np.ndarray         # smallest device memory over the mesh
    placement: np.ndarray              # id of (devices, dp, tp, pp), shared by all calls
    # Seconds of the proximal-logprob forward a rollout model's train call runs first under
    # staleness >= 1 (costmodel.plan_cost.PlanCosts.proximal_time; builder.CallPricer):
    # 0 for every other call and when the workflow's max_staleness is 0 (None: all 0).
    proximal_s: np.ndarray | None = None
    lo: np.ndarray = field(init=False)  # first device of the mesh
    hi: np.ndarray = field(init=False)  # one past the last device
    dp: np.ndarray = field(init=False)
    tp: np.ndarray = field(init=False)
    pp: np.ndarray = field(init=False)
    micro_batches: np.ndarray = field(init=False)
    recompute: np.ndarray = field(init=False)   # RECOMPUTE_CODE of Execution.recompute

    def __post_init__(self) -> None:
        if not isinstance(self.executions, Candidates):
            self.executions = Candidates.of(list(self.executions))
        ex = self.executions
        if self.proximal_s is None:
            self.proximal_s = np.zeros(len(ex))
        self.lo = ex.mesh_field("lo", lambda m: m[0])
        self.hi = ex.mesh_field("hi", lambda m: m[-1] + 1)
        self.dp = ex.layout_field("dp", lambda e: e.dp, dtype=np.float64)
        self.tp = ex.layout_field("tp", lambda e: e.tp, dtype=np.float64)
        self.pp = ex.layout_field("pp", lambda e: e.pp, dtype=np.float64)
        self.micro_batches = ex.layout_field("micro_batches", lambda e: e.micro_batches)
        self.recompute = ex.layout_field("recompute", lambda e: RECOMPUTE_CODE[e.recompute])

    def __len__(self) -> int:
        return len(self.executions)

    def fits_alone(self) -> np.ndarray:
        return self.alone_peak_bytes <= self.capacity_bytes

    def subset(self, keep: np.ndarray) -> "CallTable":
        """The table restricted to candidates where `keep` is True (or at the given indices)."""
        index = np.flatnonzero(keep) if keep.dtype == bool else keep
        return CallTable(name=self.name, model=self.model, kind=self.kind,
                         executions=self.executions.subset(index),
                         time_s=self.time_s[index], weights_bytes=self.weights_bytes[index],
                         state_bytes=self.state_bytes[index],
                         activation_bytes=self.activation_bytes[index],
                         alone_peak_bytes=self.alone_peak_bytes[index],
                         capacity_bytes=self.capacity_bytes[index],
                         placement=self.placement[index], proximal_s=self.proximal_s[index])

    def index_of(self, execution: Execution) -> int:
        return self.executions.index(execution)


@dataclass(frozen=True)
class DataEdge:
    """Keys from call `src` to call `dst` (indices into the call list), `payload_bytes` total."""

    src: int
    dst: int
    payload_bytes: float


@dataclass(frozen=True)
class ModelPair:
    """Consecutive calls `src` -> `dst` of one model; `wraps` into the next iteration."""

    model: str
    src: int
    dst: int
    wraps: bool
    weights_bytes_total: float          # the whole model's weights in the compute dtype


@dataclass
class SearchTables:
    """Everything the fast evaluator needs, for one workflow on one cluster."""

    calls: list[CallTable]              # in workflow call order
    edges: list[DataEdge]
    pairs: list[ModelPair]
    trained_models: frozenset[str]
    device_node: np.ndarray             # node index of each device
    # Point-to-point links of moves, the slowest over the cluster (costmodel.comm.p2p_link):
    intra_node_bandwidth_bytes_per_s: float  # NVLink as NCCL counts it, or the host
    intra_node_latency_s: float
    inter_node_bandwidth_bytes_per_s: float  # a device's share of its rail's NIC
    inter_node_latency_s: float
    num_iterations: int = 3
    # The workflow's max_staleness: the fast evaluator prices staleness s <= it (the
    # proximal_s columns are priced only when it is >= 1).
    max_staleness: int = 0
    move_scale: float = 1.0             # calibrated reallocation / transfer time:
    move_overhead_s: float = 0.0        #   move_overhead_s + move_scale x priced time
    # CPU nodes with fewer cores than devices (costmodel/core_sharing.py): node -> cores.
    core_limited: dict[int, int] = field(default_factory=dict)
    # Node types in the shared priority order (planner.domain.augment.priority_order): call k
    # as k, pair p (the reallocation slot into its dst call) as len(calls) + p.
    priority: tuple[int, ...] = ()
    # False when a deadline stopped pricing before every mesh shape was priced
    # (builder.full_tables): the calls then have candidates on the priced shapes' meshes only.
    complete: bool = True
    # Mesh shapes (builder.mesh_shape) full_tables priced, of all the cluster's shapes; they
    # differ only when a deadline cut pricing (complete=False). 0: tables not from it.
    shapes_priced: int = 0
    shapes_total: int = 0

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(c) for c in self.calls], dtype=np.int64)

    def space_size(self) -> float:
        return float(np.prod(self.sizes.astype(float)))

    def executions_of(self, choice: np.ndarray) -> dict[str, Execution]:
        """The plan (call name -> execution) of one choice vector."""
        return {c.name: c.executions[int(i)] for c, i in zip(self.calls, choice)}
