"""Cores of a CPU node shared by the calls that run on it at once.

A CPU "device" is one process (runtime/executor), and a node may hold more of them than it
has cores (cpu4 on a two-core machine). A calibration (costmodel/calibration.py) prices one
call's processes on too few cores (its `oversubscription` and `process_slowdown` factors),
but two calls on disjoint devices of such a node also share its cores: measured on this
two-core machine, a reward inference on devices {2, 3} running beside a reference inference
on {0, 1} took 0.10 s where either alone takes 0.06 s (GRPO llama-tiny on cpu4,
docs/accuracy.md). The operating system shares the cores among the runnable processes
(Linux CFS gives each an equal share), so we price processor sharing: a call whose time
alone is d needs q = min(its processes on the node, cores) cores; while the calls running
on the node need Q cores in all, each progresses at min(1, cores / Q) of its own speed (a
call on several such nodes at the slowest of their rates). Communication nodes
(reallocations, weight pushes) and data transfers take no core: gloo's sends and receives
wait on sockets.

`shared_core_schedule` runs the simulator's list schedule (costmodel/simulator.py, rule 4:
each device runs its nodes in the priority order; a node starts when its predecessors have
ended, plus a data edge's transfer, and each of its devices has finished the nodes before
it) as a discrete-event simulation with those rates. With every rate 1 it gives the list
schedule's times. The simulator uses it only where some node is core-limited: with a
calibration of a CPU whose node holds more devices than it has cores; elsewhere (every
GPU: a device is its own chip) no call shares anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from costmodel.calibration import node_processes
from planner.domain.cluster import ClusterSpec
from planner.domain.layout import Execution

# A node whose remaining work is below this share of its duration has ended: the floating
# rounding of the rate steps, not work left.
_FINISHED_SHARE = 1e-9


def core_limited_nodes(cluster: ClusterSpec, calibration) -> dict[int, int]:
    """Cores of each node whose devices outnumber its cores (the calibration's machine)."""
    if calibration is None:
        return {}
    cores = calibration.cores_per_node
    return {node: cores for node, (hardware, devices) in enumerate(zip(
        cluster.node_hardware, cluster.node_devices_per_node))
        if hardware.kind == "cpu" and hardware.name == calibration.device and devices > cores}


def core_demand(execution: Execution, cluster: ClusterSpec, limited: dict[int, int]
                ) -> dict[int, int]:
    """Cores a call needs on each core-limited node it runs on."""
    return {node: min(count, limited[node])
            for node, count in node_processes(execution, cluster).items() if node in limited}


def core_work_s(call_times_s: dict[str, float], executions, cluster: ClusterSpec,
                limited: dict[int, int]) -> float:
    """The seconds per iteration the busiest core-limited node's cores need for one
    iteration's calls (each call's time x the cores it needs there, over the cores): the
    period a shared node cannot beat in the long run, however the calls overlap. A
    simulated window of a few iterations can come out shorter (the pipeline of stale
    generation fills it with work of the iterations before), so the simulator and the fast
    evaluator report the larger of the two. 0 with no limited node."""
    work: dict[int, float] = {}
    for call, seconds in call_times_s.items():
        for node, cores in core_demand(executions[call], cluster, limited).items():
            work[node] = work.get(node, 0.0) + seconds * cores
    return max((w / limited[node] for node, w in work.items()), default=0.0)


@dataclass(frozen=True)
class ScheduledWork:
    """One node of the list schedule: its devices, seconds alone, the cores it needs per
    core-limited node (empty: none), and its predecessors with the delay of each edge."""

    devices: tuple[int, ...]
    duration_s: float
    demand: dict[int, int]
    preds: tuple[tuple[str, float], ...]


def shared_core_schedule(order: list[str], work: dict[str, ScheduledWork],
                         limited: dict[int, int]
                         ) -> tuple[dict[str, float], dict[str, float], dict[str, str | None]]:
    """(start, end, binding) of every node (module docstring); binding is the node whose
    end let it start (the latest predecessor or earlier node on one of its devices)."""
    queues: dict[int, list[str]] = {}
    for name in order:
        for d in work[name].devices:
            queues.setdefault(d, []).append(name)
    head = {d: 0 for d in queues}
    previous_on: dict[str, list[str]] = {name: [] for name in order}
    for q in queues.values():
        for before, name in zip(q, q[1:]):
            previous_on[name].append(before)
    start, end, binding = {}, {}, {}
    remaining: dict[str, float] = {}
    waiting = list(order)
    now = 0.0

    def at_heads(name: str) -> bool:
        return all(head[d] < len(queues[d]) and queues[d][head[d]] == name
                   for d in work[name].devices)

    def ready_to_start(name: str) -> bool:
        return at_heads(name) and all(p in end for p, _ in work[name].preds)

    def finish(name: str) -> None:
        end[name] = now
        remaining.pop(name, None)
        for d in work[name].devices:
            head[d] += 1

    while waiting or remaining:
        started = True
        while started:      # start what can start now (a zero-time node may free others)
            started = False
            for name in [n for n in waiting if ready_to_start(n)]:
                w = work[name]
                constraints = [(end[p] + delay, p) for p, delay in w.preds] + \
                    [(end[p], p) for p in previous_on[name]]
                ready, bound = max(constraints, key=lambda c: c[0], default=(0.0, None))
                if ready > now:
                    continue
                start[name], binding[name] = now, bound
                waiting.remove(name)
                remaining[name] = w.duration_s
                if w.duration_s <= 0.0:
                    finish(name)
                    started = True
        rates = _rates(remaining, work, limited)
        ends_at = {n: now + remaining[n] / rates[n] for n in remaining}
        next_ready = min((max([end[p] + delay for p, delay in work[n].preds]
                              + [end[p] for p in previous_on[n]], default=0.0)
                          for n in waiting if ready_to_start(n)), default=math.inf)
        step_to = min(min(ends_at.values(), default=math.inf), next_ready)
        if not math.isfinite(step_to):
            raise RuntimeError(f"the schedule is stuck with {waiting[:3]} waiting")
        for n in list(remaining):
            remaining[n] -= rates[n] * (step_to - now)
        now = step_to
        for n in list(remaining):
            if ends_at[n] <= now or remaining[n] <= _FINISHED_SHARE * work[n].duration_s:
                finish(n)
    return start, end, binding


def _rates(running: dict[str, float], work: dict[str, ScheduledWork],
           limited: dict[int, int]) -> dict[str, float]:
    """Each running node's speed: min(1, cores / cores needed) over its limited nodes."""
    needed: dict[int, int] = {}
    for name in running:
        for node, k in work[name].demand.items():
            needed[node] = needed.get(node, 0) + k
    return {name: min([1.0] + [limited[node] / needed[node] for node in work[name].demand])
            for name in running}
