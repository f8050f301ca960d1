"""NCCL's own model of a collective's time, and the (algorithm, protocol) its tuner picks.

Source: NVIDIA/nccl 2.30.7 (master 5067397, 2026-06-11). src/graph/tuning.cc,
`ncclTopoTuneModel` and `ncclTopoGetAlgoTime`, for the constants and formulas; src/graph/
search.cc for the bandwidth the topology search gives each algorithm's channels; src/graph/
topo.h for NVLink bandwidth per link; src/transport/net_ib/init.cc for the InfiniBand
plugin's latency (0, so the network's latency is the NET rows of hwLat below).

For a collective of `nbytes` (the whole buffer of an all-reduce; the full output of an
all-gather, the full input of a reduce-scatter: ncclFuncMaxSendRecvCount) over n ranks on
N nodes with g ranks per node, NCCL times every enabled (algorithm, protocol) as
    time = latency + nbytes / algbw
and runs the fastest. Here, in microseconds and GB/s as NCCL counts them:
- latency: ring  baseLat + (nsteps - nInter) x max(intraLat, netOverhead) + nInter x interLat,
                 nsteps = 2(n-1) all-reduce, n-1 gather/scatter; nInter = 2(N-1) or N-1;
           tree  baseLat + 2 ((g-1) intraLat + floor(log2 N) interLat)     (all-reduce);
           NVLS  intraLat (one node);  NVLS-tree  intraLat + 2 floor(log2 N) interLat;
           PAT   baseLat + floor(log2 N) interLat / 3.5 + 2.8 n  (one rank per node);
  intraLat = hwLat[NVLINK], interLat = hwLat[NET] (the tree's row when g = 1).
- bus bandwidth busBw = the channels' bandwidth in total, then per protocol: ring LL
  min(llMaxBw, busBw / 2), LL128 x 0.92; tree (all-reduce) x 0.92, LL min(/3.8, llMaxBw),
  LL128 x 7/9 (one node) or 120/128; PAT x 0.75. algbw = busBw x n / nsteps for ring and
  NVLS(-tree), busBw / 2 for tree, busBw for PAT and for NVLS gather/scatter. Tree
  all-reduces also take treeCorrectionFactor by size, and a Simple ring all-reduce across
  nodes 1.4 x its latency ("plateau").

Channel bandwidth, from search.cc in closed form (the search quantises it to a speed list;
we keep it continuous):
- NVLink per GPU and direction as NCCL counts it: links x SMxx_NVLINK_BW (20.0 GB/s on
  Ampere, 20.6 on Hopper) against the datasheet's 25 GB/s per link of NVLink 3 and 4, so
  nvlink = datasheet bandwidth x NCCL_NVLINK_GB_PER_S / 25.
- ring: one node, all of NVLink; across nodes each ring channel crosses every node boundary
  through one NIC, so min(nvlink, net), net = the NICs the group's g ranks on a node drive
  together (each GPU its own rail's NIC). Tree: the same, but on two nodes the search raises
  the intra bandwidth up to twice the inter one (each node's NICs carry both directions),
  min(nvlink, 2 net).
- NVLS: g channels, one head per GPU; each GPU's link carries its own head's channel twice
  and the g-1 others once, so a channel runs at nvlink / (g + 1); busBw per channel =
  0.85 (nvlsEfficiency) x (g-1)/g x (2 for all-reduce, (g-1)/g otherwise). NVLS-tree across
  nodes: per channel min(that, net / g x (2 on two nodes), perChMaxNVLSTreeBw).
Enabled as NCCL enables them without CollNet/SHARP switches: ring and tree (tree for
all-reduce only); NVLS on one node of a Hopper NVSwitch system (nvlink_sharp); NVLS-tree
across such nodes (all-reduce); PAT for gather/scatter with one rank per node; LL128 on
Hopper/Ampere NVLink systems (rail NICs sit on the GPU's PCIe switch, within PXB).
Left out: the per-channel caps of LL128 and tree (perChMaxRingLL128Bw 36.7, perChMaxTreeBw
38.7 GB/s on Hopper) and the tree-pattern 0.85, which need NCCL's channel count; CollNet.

A calibrated latency per step (costmodel.call_geometry.CostKnobs) replaces every hwLat and
drops baseLat: latency = steps x step latency, steps being the hwLat terms above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

RING, TREE, NVLS, NVLS_TREE, PAT = "ring", "tree", "nvls", "nvls_tree", "pat"
LL, LL128, SIMPLE = "LL", "LL128", "Simple"
PROTOCOLS = (LL, LL128, SIMPLE)
ALLREDUCE, ALLGATHER, REDUCE_SCATTER = "allreduce", "allgather", "reduce_scatter"

# tuning.cc ncclTunerConstantsDefaults, microseconds, per protocol (LL, LL128, Simple).
BASE_LATENCY_US = {TREE: (6.8, 14.0, 8.4), RING: (6.6, 14.0, 8.4), NVLS: (0.0, 0.0, 0.0),
                   NVLS_TREE: (0.0, 0.0, 0.0), PAT: (8.0, 8.0, 8.0)}
NVLINK_HW_LATENCY_US = {TREE: (0.6, 1.25, 4.0), RING: (0.6, 1.9, 3.4), NVLS: (0.0, 0.0, 25.0),
                        NVLS_TREE: (0.0, 0.0, 25.0), PAT: (0.0, 0.0, 4.0)}
NET_HW_LATENCY_US = {TREE: (5.0, 8.5, 14.0), RING: (2.7, 4.0, 14.0), NVLS: (0.0, 0.0, 18.0),
                     NVLS_TREE: (0.0, 0.0, 20.9), PAT: (0.0, 0.0, 14.0)}
# llMaxBws rows: one node by GPU (Ampere, Hopper), across nodes by CPU (Intel row 0, AMD
# row 1); columns 1, 2, more nodes. GB/s.
LL_MAX_GB_PER_S = {"ampere": (87.7, 22.5, 19.0), "hopper": (141.0, 45.0, 35.0),
                   "intel": (39.0, 39.0, 20.4), "amd": (87.7, 22.5, 19.0)}
PER_CHANNEL_MAX_NVLS_TREE_GB_PER_S = {"hopper": (0.0, 57.7, 45.5)}
NVLS_EFFICIENCY = {"hopper": 0.85}
# getNetOverhead: a network post, x3 for Simple.
NET_OVERHEAD_US = {"intel": 1.0, "amd": 2.0}
# Powers of two of nbytes / 64, from 64 B; LL, LL128, Simple.
TREE_CORRECTION = (
    (1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0, 1.0,
     1.0, 1.0, 1.0),
    (1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9, .9, .9,
     1.0, 1.0, 1.0),
    (.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7, .8, .9,
     .9, .9))
TREE_CORRECTED_SIZES = 23  # ncclTopoGetAlgoTime applies the table for log2(nbytes/64) < 23
# Ring Simple all-reduce across nodes: latency x 1.4 (sm80+) once nbytes / (channels x n)
# >= 64; we take MAXCHANNELS / 2 = 32 channels.
PLATEAU_FACTOR, PLATEAU_CHANNELS = 1.4, 32
# topo.h SM80_NVLINK_BW / SM90_NVLINK_BW against the datasheet's 25 GB/s per direction of one
# NVLink 3 / NVLink 4 link.
NCCL_NVLINK_GB_PER_S = {"ampere": 20.0, "hopper": 20.6}
DATASHEET_NVLINK_GB_PER_S = 25.0
NVLS_MAX_ARITY = 32  # NCCL_MAX_NVLS_ARITY (device.h)


@dataclass(frozen=True)
class Fabric:
    """What NCCL's topology search finds for a group: its nodes and ranks per node, NVLink
    per GPU and direction (NCCL's figure), the NIC bandwidth the group drives per node (its
    ranks' rails together, the slowest node), and what selects the constants."""

    nodes: int
    ranks_per_node: int
    nvlink_gb_per_s: float
    net_gb_per_s: float
    architecture: str
    nvls: bool
    cpu_vendor: str


@dataclass(frozen=True)
class Choice:
    algorithm: str
    protocol: str
    time_s: float


def nccl_nvlink_gb_per_s(datasheet_gb_per_s: float, architecture: str) -> float:
    """NVLink bandwidth per GPU and direction as NCCL's topology counts it."""
    return datasheet_gb_per_s * NCCL_NVLINK_GB_PER_S[architecture] / DATASHEET_NVLINK_GB_PER_S


def _candidates(coll: str, n: int, f: Fabric) -> list[tuple[str, str]]:
    nvls = f.nvls and f.ranks_per_node >= 2 and (coll == ALLREDUCE
                                                   or f.ranks_per_node <= NVLS_MAX_ARITY)
    algorithms = [RING]
    if coll == ALLREDUCE:
        algorithms.append(TREE)
        if nvls:
            algorithms.append(NVLS if f.nodes == 1 else NVLS_TREE)
    else:
        if nvls and f.nodes == 1:
            algorithms.append(NVLS)
        if f.nodes == n and n > 1:
            algorithms.append(PAT)
    return [(a, p) for a in algorithms for p in PROTOCOLS
            if p == SIMPLE or a in (RING, TREE)]


def _steps(coll: str, n: int) -> int:
    return 2 * (n - 1) if coll == ALLREDUCE else n - 1


def _log2_nodes(f: Fabric) -> int:
    return math.floor(math.log2(f.nodes))


def _latency_us(coll: str, a: str, p: str, n: int, f: Fabric,
                step_latency_us: float | None) -> float:
    k = PROTOCOLS.index(p)
    g, log_n = f.ranks_per_node, _log2_nodes(f)
    steps = _steps(coll, n)
    inter_steps = 0 if f.nodes == 1 else (2 if coll == ALLREDUCE else 1) * (f.nodes - 1)
    if step_latency_us is not None:
        counts = {RING: steps, TREE: 2 * (g - 1 + log_n), NVLS: 1, NVLS_TREE: 1 + 2 * log_n,
                  PAT: log_n + n}
        return counts[a] * step_latency_us
    intra = NVLINK_HW_LATENCY_US[a][k]
    inter = NET_HW_LATENCY_US[TREE if g == 1 else a][k]
    base = BASE_LATENCY_US[a][k]
    if a == RING:
        overhead = 0.0 if f.nodes == 1 else NET_OVERHEAD_US[f.cpu_vendor] * (3 if p == SIMPLE
                                                                              else 1)
        return base + (steps - inter_steps) * max(intra, overhead) + inter_steps * inter
    if a == TREE:
        return base + 2 * ((g - 1) * intra + log_n * inter)
    if a == NVLS:
        return intra
    if a == NVLS_TREE:
        return base + intra + 2 * log_n * inter
    return base + log_n * inter / 3.5 + 2.8 * n  # PAT


def _ll_max_gb_per_s(f: Fabric) -> float:
    row = f.architecture if f.nodes == 1 else f.cpu_vendor
    return LL_MAX_GB_PER_S[row][min(f.nodes, 3) - 1]


def _nvls_bus_gb_per_s(coll: str, f: Fabric) -> float:
    g = f.ranks_per_node
    channel = f.nvlink_gb_per_s / (g + 1)
    per_channel = channel * NVLS_EFFICIENCY[f.architecture] * (g - 1) / g
    per_channel *= 2.0 if coll == ALLREDUCE else (g - 1) / g
    if f.nodes > 1:
        inter = f.net_gb_per_s / g * (2.0 if f.nodes <= 2 else 1.0)
        cap = PER_CHANNEL_MAX_NVLS_TREE_GB_PER_S[f.architecture][min(f.nodes, 3) - 1]
        per_channel = min(per_channel, inter, cap)
    return g * per_channel


# The table per protocol over log2(nbytes / 64) = 0 .. 22, and 1 for larger sizes.
_TREE_CORRECTION_TABLE = np.array([row[:TREE_CORRECTED_SIZES] + (1.0,)
                                   for row in TREE_CORRECTION])


def _tree_correction(p: str, nbytes):
    """treeCorrectionFactor at log2(nbytes / 64); 1 below 64 B and from 2^29 B on (a
    float for a float, elementwise for an array)."""
    if isinstance(nbytes, float):
        log_size = math.floor(math.log2(nbytes / 64.0)) if nbytes >= 64.0 else -1
        return TREE_CORRECTION[PROTOCOLS.index(p)][log_size] \
            if 0 <= log_size < TREE_CORRECTED_SIZES else 1.0
    log_size = np.floor(np.log2(np.maximum(nbytes, 1.0) / 64.0))
    index = np.minimum(log_size, TREE_CORRECTED_SIZES).astype(int)
    row = _TREE_CORRECTION_TABLE[PROTOCOLS.index(p)]
    return np.where(log_size >= 0, row[np.maximum(index, 0)], 1.0)


def _algorithm_gb_per_s(coll: str, a: str, p: str, n: int, f: Fabric) -> float:
    """Algorithm bandwidth before the tree's size correction."""
    if a in (NVLS, NVLS_TREE):
        bus = _nvls_bus_gb_per_s(coll, f)
        return bus * n / _steps(coll, n) if coll == ALLREDUCE else bus
    across = f.nodes > 1
    ring = min(f.nvlink_gb_per_s, f.net_gb_per_s) if across else f.nvlink_gb_per_s
    if a == PAT:
        return ring * 0.75
    if a == RING:
        bus = {LL: min(_ll_max_gb_per_s(f), ring * 0.5), LL128: ring * 0.92, SIMPLE: ring}[p]
        return bus * n / _steps(coll, n)
    tree = f.nvlink_gb_per_s if not across else min(
        f.nvlink_gb_per_s, f.net_gb_per_s * (2.0 if f.nodes <= 2 else 1.0))
    bus = tree * 0.92
    bus = {LL: min(bus / 3.8, _ll_max_gb_per_s(f)),
           LL128: bus * (7.0 / 9.0 if not across else 120.0 / 128.0), SIMPLE: bus}[p]
    return bus * 0.5


@lru_cache(maxsize=4096)
def _size_free_terms(coll: str, n: int, fabric: Fabric, step_latency_us: float | None
                     ) -> tuple[tuple[str, str, float, float, bool], ...]:
    """Per enabled (algorithm, protocol): latency (us), algorithm bandwidth (GB/s) before
    the tree correction, and whether the ring plateau applies: what does not depend on
    the size, computed once per group."""
    plateau = fabric.nodes > 1 and coll == ALLREDUCE and step_latency_us is None
    return tuple((a, p, _latency_us(coll, a, p, n, fabric, step_latency_us),
                  _algorithm_gb_per_s(coll, a, p, n, fabric),
                  plateau and a == RING and p == SIMPLE)
                 for a, p in _candidates(coll, n, fabric))


def candidate_times_s(coll: str, nbytes, n: int, fabric: Fabric,
                      step_latency_s: float | None = None) -> dict[tuple[str, str], np.ndarray]:
    """Seconds of every enabled (algorithm, protocol), elementwise over `nbytes` (floats for
    a scalar: the search prices many)."""
    nbytes = float(nbytes) if np.ndim(nbytes) == 0 else np.asarray(nbytes, dtype=float)
    step_us = None if step_latency_s is None else step_latency_s * 1e6
    times = {}
    for a, p, latency, algbw, plateau in _size_free_terms(coll, n, fabric, step_us):
        if a == TREE:
            algbw = algbw * _tree_correction(p, nbytes)
        if plateau:
            latency = np.where(nbytes / (PLATEAU_CHANNELS * n) >= 64,
                               latency * PLATEAU_FACTOR, latency)
            latency = float(latency) if isinstance(nbytes, float) else latency
        times[(a, p)] = (latency + nbytes / (1000.0 * algbw)) * 1e-6
    return times


def collective_time_s(coll: str, nbytes, n: int, fabric: Fabric,
                      step_latency_s: float | None = None):
    """The time of the fastest (algorithm, protocol), as NCCL's tuner picks (elementwise)."""
    times = list(candidate_times_s(coll, nbytes, n, fabric, step_latency_s).values())
    return min(times) if np.ndim(nbytes) == 0 else np.minimum.reduce(times)


def best_choice(coll: str, nbytes: float, n: int, fabric: Fabric,
                step_latency_s: float | None = None) -> Choice:
    """The (algorithm, protocol) NCCL's tuner picks for one message size, and its time."""
    times = candidate_times_s(coll, nbytes, n, fabric, step_latency_s)
    (a, p), t = min(times.items(), key=lambda item: float(item[1]))
    return Choice(a, p, float(t))


def alltoall_time_s(nbytes, n: int, fabric: Fabric, step_latency_s: float | None = None):
    """An all-to-all of `nbytes` per rank (its whole send buffer, its own rows included)
    over n ranks, as NCCL runs torch's all_to_all_single: one group of ncclSend/ncclRecv to
    every peer (NCCL's p2p path, Simple protocol; the tuner of the collectives above does
    not see it). Each rank sends nbytes / n to each of its n - 1 peers and keeps its own
    share: the g - 1 peers on its node over NVLink (nvlink_gb_per_s per direction), the
    n - g on other nodes through its rail's NIC, net_gb_per_s / g (the NICs its node's g
    ranks drive together, each its own rail; across rails NCCL forwards over NVLink first,
    PXN, so the node's NICs carry the node's inter-node bytes together). The peers proceed
    at once, so time = latency + max(intra bytes / NVLink, inter bytes / NIC share).
    Latency: one Simple step, BASE_LATENCY_US + the NVLink hwLat on one node or the NET
    hwLat across nodes (ring rows); a calibrated step latency replaces it (one step).
    Elementwise over `nbytes`."""
    nbytes = float(nbytes) if np.ndim(nbytes) == 0 else np.asarray(nbytes, dtype=float)
    if n <= 1:
        return nbytes * 0.0
    g = fabric.ranks_per_node
    k = PROTOCOLS.index(SIMPLE)
    if step_latency_s is not None:
        latency_s = step_latency_s
    else:
        hop = NVLINK_HW_LATENCY_US if fabric.nodes == 1 else NET_HW_LATENCY_US
        latency_s = (BASE_LATENCY_US[RING][k] + hop[RING][k]) * 1e-6
    intra_s = nbytes * (g - 1) / n / (fabric.nvlink_gb_per_s * 1e9)
    if fabric.nodes == 1:
        return latency_s + intra_s
    inter_s = nbytes * (n - g) / n / (fabric.net_gb_per_s / g * 1e9)
    return latency_s + np.maximum(intra_s, inter_s)
