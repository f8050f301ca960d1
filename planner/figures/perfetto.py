"""A plan's estimated timeline, and a measured run beside it, as a Chrome trace-event JSON
file that Perfetto (ui.perfetto.dev) and chrome://tracing open.

Format: the Trace Event Format's JSON object form, `{"traceEvents": [...],
"displayTimeUnit": "ms", "otherData": {...}}`, with two event types:
- complete events, `{"ph": "X", "name", "cat", "pid", "tid", "ts", "dur", "args"}`, ts and
  dur in microseconds (written to the nanosecond);
- metadata events, `{"ph": "M", "name": "process_name" | "thread_name" |
  "process_sort_index" | "thread_sort_index", "pid", "tid", "args": {"name": ..} or
  {"sort_index": ..}}`, which name and order the tracks.

Processes: pid ESTIMATE_PID is the estimate (the simulator's K iterations, K =
DEFAULT_ITERATIONS, from idle devices at time 0), pid MEASURED_PID the measured run of
`--trace` (seconds from its first start, planner/figures/trace.py reads it); both start at 0,
so iteration 0 of each lines up. Tracks (tids) of a process: ITERATIONS_TID holds one slice
per iteration (from the end of the previous one to its end, the simulator's rule 5), then
one track per device (tid DEVICE_TID0 + device) with the calls, reallocations and (measured:
the runtime's ranks run them) data transfers that occupy it. An estimated data transfer
occupies no device (it delays its consumer, simulator rule 4), so estimated transfers go on
"data transfers" tracks of their own. Perfetto stacks slices of one track by time and cannot
show two that partly overlap, so every track is packed: a slice that overlaps one already on
its track goes to the first extra track it fits ("device 0:3 (2)", "data transfers (2)").
The estimate never needs one on a device (the simulator holds a device for one node at a
time); a measured run may, because a step's start and end are the latest over its ranks
(runtime/executor/trace.py).

Slice args: a call's layout (dXtYpZmW, and /recompute for a train call), mesh, devices,
iteration and seconds; a reallocation's model, from / to calls and layouts and bytes moved; a
transfer's bytes. Estimated bytes are the cost model's (the transfer schedule's bytes over
intra- and inter-node links); measured bytes are the trace's `reallocations` / `transfers`
entries (bytes sent per run, the mean over iterations).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import Estimate, simulate, simulated_iterations
from planner.domain.augment import augmented_graph
from planner.domain.errors import validated
from planner.domain.hardware import GIB
from planner.domain.input_files import load_json_input
from planner.domain.mesh import mesh_text
from planner.domain.output_files import atomic_write_text
from planner.domain.plan import Plan
from planner.figures.common import (
    REALLOC_PREFIX,
    TRANSFER_PREFIX,
    device_label,
    short_realloc,
    split_node_id,
)
from planner.figures.trace import MeasuredNode, load_trace

ESTIMATE_PID, MEASURED_PID = 1, 2
ITERATIONS_TID, DEVICE_TID0 = 0, 1
US_PER_S = 1e6
NS_DIGITS = 3            # microseconds written with three decimals: nanoseconds
OVERLAP_TOLERANCE_US = 1e-3   # one nanosecond: rounding, not an overlap
TRANSFER_TRACK = "data transfers"


@dataclass(frozen=True)
class Slice:
    """One node before its tracks are chosen: drawn on each of `devices`' tracks, or on the
    data-transfer track when `devices` is empty."""

    name: str
    category: str        # call | realloc | transfer
    start_s: float
    end_s: float
    devices: tuple[int, ...]   # empty: a transfer that occupies no device
    args: dict


@dataclass
class _Tracks:
    """Thread ids of one process: their names, and each track's extra overlap tracks."""

    next_tid: int
    names: dict[int, str] = field(default_factory=dict)
    ends_us: dict[int, float] = field(default_factory=dict)     # latest end per track
    overflow: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def name_track(self, tid: int, name: str) -> None:
        self.names[tid] = name

    def place(self, tid: int, start_us: float, end_us: float) -> int:
        """The track of a slice: `tid`, or the first of its extra tracks ("<name> (2)",
        "<name> (3)", ...) it does not overlap, a new one when it overlaps them all."""
        extras = self.overflow[self.names[tid]]
        for candidate in [tid] + extras:
            if self.ends_us.get(candidate, 0.0) <= start_us + OVERLAP_TOLERANCE_US:
                self.ends_us[candidate] = end_us
                return candidate
        new = self.next_tid
        self.next_tid += 1
        extras.append(new)
        self.names[new] = f"{self.names[tid]} ({len(extras) + 1})"
        self.ends_us[new] = end_us
        return new


def _us(seconds: float) -> float:
    return round(seconds * US_PER_S, NS_DIGITS)


def _metadata(pid: int, tid: int, kind: str, args: dict) -> dict:
    return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "args": args}


def process_events(pid: int, title: str, plan: Plan, slices: list[Slice],
                   iteration_ends_s: list[float], first_start_s: float) -> list[dict]:
    """Metadata and complete events of one process (module docstring)."""
    cluster = plan.cluster
    tracks = _Tracks(next_tid=DEVICE_TID0 + cluster.num_devices)
    tracks.name_track(ITERATIONS_TID, "iterations")
    for d in range(cluster.num_devices):
        tracks.name_track(DEVICE_TID0 + d, f"device {device_label(cluster, d)}")
    events = []
    starts = [first_start_s] + iteration_ends_s[:-1]
    for i, (start, end) in enumerate(zip(starts, iteration_ends_s)):
        events.append({"ph": "X", "name": f"iteration {i}", "cat": "iteration", "pid": pid,
                       "tid": ITERATIONS_TID, "ts": _us(start),
                       "dur": round(_us(end) - _us(start), NS_DIGITS),
                       "args": {"iteration": i, "seconds": end - start}})
    transfer_tid = None
    for item in sorted(slices, key=lambda s: (s.start_s, s.end_s, s.name)):
        ts, end = _us(item.start_s), _us(item.end_s)
        if item.devices:
            placed = [tracks.place(DEVICE_TID0 + d, ts, end) for d in item.devices]
        else:
            if transfer_tid is None:
                transfer_tid = tracks.next_tid
                tracks.next_tid += 1
                tracks.name_track(transfer_tid, TRANSFER_TRACK)
            placed = [tracks.place(transfer_tid, ts, end)]
        events += [{"ph": "X", "name": item.name, "cat": item.category, "pid": pid,
                    "tid": tid, "ts": ts, "dur": round(end - ts, NS_DIGITS),
                    "args": item.args} for tid in placed]
    meta = [_metadata(pid, 0, "process_name", {"name": title}),
            _metadata(pid, 0, "process_sort_index", {"sort_index": pid})]
    for tid, name in sorted(tracks.names.items()):
        meta.append(_metadata(pid, tid, "thread_name", {"name": name}))
        meta.append(_metadata(pid, tid, "thread_sort_index", {"sort_index": tid}))
    return meta + events


def _call_args(plan: Plan, call: str, iteration: int, seconds: float) -> dict:
    ex = plan.executions[call]
    kind = plan.workflow.call_by_name[call].kind
    return {"iteration": iteration, "model": plan.workflow.call_by_name[call].model,
            "layout": ex.call_layout_text(kind), "mesh": mesh_text(ex.devices, plan.cluster),
            "devices": list(ex.devices), "seconds": seconds}


def _realloc_args(plan: Plan, name: str, iteration: int, seconds: float) -> dict:
    """`name` is `realloc:<model>:<src>-><dst>`."""
    model, _, pair = name[len(REALLOC_PREFIX):].partition(":")
    src, _, dst = pair.partition("->")
    calls = plan.workflow.call_by_name
    return {"iteration": iteration, "model": model, "from": src, "to": dst,
            "from_layout": plan.executions[src].call_layout_text(calls[src].kind),
            "to_layout": plan.executions[dst].call_layout_text(calls[dst].kind),
            "seconds": seconds}


def _runs_in(graph, node_id: str) -> int:
    """The iteration a node runs in: a reallocation's is its destination call's (as in
    planner.figures.timeline.runs_iteration, which loads matplotlib)."""
    attrs = graph.nodes[node_id]
    if attrs["kind"] == "call":
        return attrs["iteration"]
    (dst,) = graph.successors(node_id)
    return graph.nodes[dst]["iteration"]


def estimated_slices(plan: Plan, est: Estimate, graph, costs: PlanCosts) -> list[Slice]:
    """Calls and reallocations on their devices, transfers on no device, with bytes."""
    slices = []
    for node_id, (start, end) in est.node_times.items():
        attrs = graph.nodes[node_id]
        name = split_node_id(node_id)[1]
        iteration = _runs_in(graph, node_id)
        if attrs["kind"] == "call":
            args = _call_args(plan, name, iteration, end - start)
            args["peak_memory_gib"] = est.call_peak_memory_bytes[name] / GIB
            slices.append(Slice(name, "call", start, end, tuple(attrs["devices"]), args))
            continue
        src, dst = plan.executions[attrs["src"]], plan.executions[attrs["dst"]]
        moved = costs.realloc(attrs["model"], src, dst)
        args = _realloc_args(plan, name, iteration, end - start)
        args.update(bytes=moved.intra_node_bytes + moved.inter_node_bytes,
                    intra_node_bytes=moved.intra_node_bytes,
                    inter_node_bytes=moved.inter_node_bytes)
        slices.append(Slice(f"realloc {short_realloc(name)}", "realloc", start, end,
                            tuple(attrs["devices"]), args))
    for src_node, dst_node, attrs in graph.edges(data=True):
        if not attrs.get("transfer"):
            continue
        src, dst = graph.nodes[src_node]["call"], graph.nodes[dst_node]["call"]
        start = est.node_times[src_node][1]
        seconds = est.transfer_times_s[f"{src}->{dst}"]
        moved = costs.transfer(src, dst, plan.executions[src], plan.executions[dst])
        slices.append(Slice(f"transfer {src}->{dst}", "transfer", start, start + seconds, (),
                            {"iteration": graph.nodes[dst_node]["iteration"], "from": src,
                             "to": dst, "keys": list(attrs["keys"]),
                             "bytes": moved.intra_node_bytes + moved.inter_node_bytes,
                             "seconds": seconds}))
    return slices


def iteration_ends(runs: list[tuple[int, float]], num_iterations: int) -> list[float]:
    """end(i): the latest end among the (iteration, end) of the nodes that run in i."""
    ends = [0.0] * num_iterations
    for iteration, end in runs:
        ends[iteration] = max(ends[iteration], end)
    return ends


class _Move(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    name: str
    bytes: float | None = None


class _Moves(BaseModel):
    """The trace's per-step byte counts (runtime/executor/trace.py); absent lists are
    empty, so a trace of nodes alone still converts."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reallocations: list[_Move] = []
    transfers: list[_Move] = []


def measured_bytes(path: Path) -> dict[str, float]:
    """Bytes per measured step, by node name without the iteration (`realloc:...`,
    `transfer:<src>-><dst>`)."""
    moves = validated(_Moves, load_json_input(path), path)
    found = {m.name: m.bytes for m in moves.reallocations if m.bytes is not None}
    found.update({TRANSFER_PREFIX + m.name: m.bytes for m in moves.transfers
                  if m.bytes is not None})
    return found


def measured_slices(plan: Plan, nodes: list[MeasuredNode],
                    moved: dict[str, float]) -> list[Slice]:
    slices = []
    for n in nodes:
        seconds = n.end_s - n.start_s
        if n.name.startswith(REALLOC_PREFIX):
            args = _realloc_args(plan, n.name, n.iteration, seconds)
            name, category = f"realloc {short_realloc(n.name)}", "realloc"
        elif n.name.startswith(TRANSFER_PREFIX):
            src, _, dst = n.name[len(TRANSFER_PREFIX):].partition("->")
            args = {"iteration": n.iteration, "from": src, "to": dst, "seconds": seconds}
            name, category = f"transfer {src}->{dst}", "transfer"
        else:
            args = _call_args(plan, n.name, n.iteration, seconds)
            name, category = n.name, "call"
        if n.name in moved:
            args["bytes"] = moved[n.name]
        args["measured_devices"] = list(n.devices)
        slices.append(Slice(name, category, n.start_s, n.end_s, tuple(n.devices), args))
    return slices


def perfetto_trace(plan: Plan, label: str, trace: Path | None = None) -> dict:
    """The trace-event JSON object of `plan`'s estimate, and of the measured run in
    `trace` when given (module docstring)."""
    costs = PlanCosts(plan.workflow, plan.cluster)
    iterations = simulated_iterations(plan.staleness)
    est = simulate(plan.workflow, plan.cluster, plan.executions, iterations, costs,
                   staleness=plan.staleness)
    graph = augmented_graph(plan.workflow, plan.executions, iterations, plan.staleness)
    ends = iteration_ends([(_runs_in(graph, n), end) for n, (_, end) in est.node_times.items()],
                          iterations)
    heading = f"{plan.workflow.algorithm} on {plan.cluster.describe()}"
    events = process_events(ESTIMATE_PID, f"estimate: {label}, {heading}, "
                            f"{est.iteration_s:.3f} s per iteration", plan,
                            estimated_slices(plan, est, graph, costs), ends, 0.0)
    other = {"plan": label, "workflow": plan.workflow.algorithm,
             "cluster": plan.cluster.describe(), "estimated_iteration_s": est.iteration_s,
             "estimate_feasible": est.feasible, "iterations": iterations}
    if trace is not None:
        nodes = load_trace(trace, plan)
        count = max(n.iteration for n in nodes) + 1
        measured_ends = iteration_ends([(n.iteration, n.end_s) for n in nodes], count)
        seconds = ((measured_ends[-1] - measured_ends[0]) / (count - 1) if count > 1 else
                   measured_ends[0] - min(n.start_s for n in nodes))
        events += process_events(MEASURED_PID, f"measured: {trace.name}, {count} "
                                 f"iteration(s), {seconds:.3f} s per iteration", plan,
                                 measured_slices(plan, nodes, measured_bytes(trace)),
                                 measured_ends, min(n.start_s for n in nodes))
        other.update(trace=str(trace), measured_iteration_s=seconds)
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def write_perfetto(plan: Plan, out: Path, label: str, trace: Path | None = None) -> None:
    """Write `perfetto_trace` to `out` atomically, one event per line."""
    data = perfetto_trace(plan, label, trace)
    lines = ",\n".join(json.dumps(e, separators=(",", ":")) for e in data["traceEvents"])
    text = (f'{{"displayTimeUnit":"ms","otherData":{json.dumps(data["otherData"])},\n'
            f'"traceEvents":[\n{lines}\n]}}\n')
    atomic_write_text(Path(out), text)
