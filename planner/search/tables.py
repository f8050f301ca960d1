"""Precomputed per-candidate costs that the fast evaluator and the search read as arrays.

One `CallTable` per call holds its candidate executions and, per candidate, the time and the
memory pieces the simulator's memory rule needs (bytes per device, the largest over the
mesh's pipeline stages). `SearchTables` adds the workflow structure: data edges with their
payload, consecutive-call pairs of each model (where reallocations happen), and the links.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from planner.domain.layout import Execution


@dataclass
class CallTable:
    """Candidates of one call and their precomputed costs (arrays indexed by candidate)."""

    name: str
    model: str
    kind: str
    executions: list[Execution]
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
    lo: np.ndarray = field(init=False)  # first device of the mesh
    hi: np.ndarray = field(init=False)  # one past the last device
    dp: np.ndarray = field(init=False)
    tp: np.ndarray = field(init=False)
    pp: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        ex = self.executions
        self.lo = np.array([e.devices[0] for e in ex], dtype=np.int64)
        self.hi = np.array([e.devices[-1] + 1 for e in ex], dtype=np.int64)
        self.dp = np.array([e.dp for e in ex], dtype=np.float64)
        self.tp = np.array([e.tp for e in ex], dtype=np.float64)
        self.pp = np.array([e.pp for e in ex], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.executions)

    def fits_alone(self) -> np.ndarray:
        return self.alone_peak_bytes <= self.capacity_bytes

    def subset(self, keep: np.ndarray) -> "CallTable":
        """The table restricted to candidates where `keep` is True (or at the given indices)."""
        index = np.flatnonzero(keep) if keep.dtype == bool else keep
        return CallTable(name=self.name, model=self.model, kind=self.kind,
                         executions=[self.executions[i] for i in index],
                         time_s=self.time_s[index], weights_bytes=self.weights_bytes[index],
                         state_bytes=self.state_bytes[index],
                         activation_bytes=self.activation_bytes[index],
                         alone_peak_bytes=self.alone_peak_bytes[index],
                         capacity_bytes=self.capacity_bytes[index],
                         placement=self.placement[index])

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
    move_scale: float = 1.0             # calibrated reallocation / transfer time:
    move_overhead_s: float = 0.0        #   move_overhead_s + move_scale x priced time
    # Node types in the shared priority order (planner.domain.augment.priority_order): call k
    # as k, pair p (the reallocation slot into its dst call) as len(calls) + p.
    priority: tuple[int, ...] = ()

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(c) for c in self.calls], dtype=np.int64)

    def space_size(self) -> float:
        return float(np.prod(self.sizes.astype(float)))

    def executions_of(self, choice: np.ndarray) -> dict[str, Execution]:
        """The plan (call name -> execution) of one choice vector."""
        return {c.name: c.executions[int(i)] for c, i in zip(self.calls, choice)}
