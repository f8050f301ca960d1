"""`plan show`: print a plan as a table (or JSON), with its estimate and critical path."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from costmodel.simulator import Estimate, estimate_plan
from planner.cli.estimate import staleness_lines
from planner.domain.augment import augmented_graph, reallocations, transfers
from planner.domain.cluster import ClusterSpec
from planner.domain.hardware import GIB
from planner.domain.mesh import mesh_text
from planner.domain.plan import Plan, load_plan, plan_to_mapping
from planner.figures.common import (
    device_label,
    format_seconds,
    short_realloc,
    split_node_id,
)
from planner.search.builder import full_tables
from planner.search.lower_bound import gap_text, lower_bound

TEXT_WIDTH = 100
SAVED_ESTIMATE_TOLERANCE = 0.01  # relative; beyond it the saved estimate is called stale
# Without --lower-bound, `plan show` computes a plan's lower bound itself (pricing every
# candidate of every call) only on clusters this small: about a second on one 8-GPU node,
# a minute or more on 128 devices.
BOUND_MAX_DEVICES = 8


def critical_path_lines(plan: Plan, est: Estimate) -> list[str]:
    """The simulator's critical path, one line per iteration: node (seconds) -> ..."""
    simulated = 1 + max(split_node_id(n)[0] for n in est.node_times
                        if n.split("/", 1)[1] in plan.workflow.call_by_name)
    graph = augmented_graph(plan.workflow, plan.executions, simulated, est.staleness)
    by_iteration: dict[int, list[str]] = {}
    for node_id in est.critical_path:
        attrs = graph.nodes[node_id]
        # a reallocation or weight push belongs to the iteration of the call it feeds
        iteration = attrs["iteration"] if attrs["kind"] == "call" else \
            graph.nodes[next(iter(graph.successors(node_id)))]["iteration"]
        start, end = est.node_times[node_id]
        name = split_node_id(node_id)[1]
        text = short_realloc(name) if attrs["kind"] == "realloc" else name
        prefix = "realloc " if attrs["kind"] == "realloc" else ""
        by_iteration.setdefault(iteration, []).append(
            f"{prefix}{text} ({format_seconds(end - start)})")
    return [textwrap.fill(f"  iteration {i}: " + " -> ".join(items), TEXT_WIDTH,
                          subsequent_indent=" " * 6, break_on_hyphens=False)
            for i, items in by_iteration.items()]


def usable_memory_text(cluster: ClusterSpec, device: int) -> str:
    """What a plan may use on `device` and what the device's memory loses before it: the
    reserve (planner.domain.device_reserve) and the user's headroom."""
    hardware = cluster.hardware_of(device)
    reserve = ("for the CUDA context, NCCL buffers and the allocator"
               if hardware.kind == "cuda" else "the process itself holds")
    headroom = (f" and the {cluster.memory_headroom_gib:g} GiB headroom"
                if cluster.memory_headroom_gib else "")
    return (f"usable {cluster.usable_memory_bytes(device) / GIB:.1f} GiB "
            f"({hardware.memory_bytes / GIB:.1f} GiB less the "
            f"{cluster.reserve_bytes(device) / GIB:.2f} GiB reserve {reserve}{headroom})")


def peak_device_lines(plan: Plan, est: Estimate) -> list[str]:
    """The highest device's peak memory, part by part (the simulator's breakdown)."""
    device = max(est.peak_memory_bytes, key=est.peak_memory_bytes.get)
    node = est.memory.peak_node(device)
    during = f" during {short_realloc(node)}" if node else ""
    lines = [f"memory of the peak device {device_label(plan.cluster, device)}: "
             f"{est.peak_memory_bytes[device] / GIB:.1f} GiB{during}, "
             f"{usable_memory_text(plan.cluster, device)}"]
    for kind, model, amount in est.memory.device_parts[device]:
        lines.append(f"  {model:<8} {kind.replace('_', ' '):<16} {amount / GIB:>8.2f} GiB")
    return lines


def lower_bound_line(plan: Plan, est: Estimate, compute: bool) -> str:
    """How close the plan is to the lower bound of its search space (planner.search.
    lower_bound): the bound `plan search` stored with its saved estimate (both priced at
    search time, with the calibration it used), else computed now with the cost model
    `est` comes from when `compute` or the cluster is small (BOUND_MAX_DEVICES)."""
    if plan.staleness:
        return (f"lower bound: the search space's bound is of synchronous plans; a plan of "
                f"staleness {plan.staleness} may run below it")
    search = plan.provenance.search or {}
    saved_bound, saved = search.get("lower_bound_s"), (plan.estimate or {}).get("iteration_s")
    if isinstance(saved_bound, (int, float)) and isinstance(saved, (int, float)) \
            and saved_bound > 0:
        return f"search: the saved estimate is {gap_text(saved, saved_bound)} on its space"
    if not compute and plan.cluster.num_devices > BOUND_MAX_DEVICES:
        return (f"lower bound: not in this plan file; `plan show --lower-bound` computes it "
                f"(prices every candidate on {plan.cluster.num_devices} devices: a minute "
                f"or more)")
    tables = full_tables(plan.workflow, plan.cluster)
    bound = lower_bound(tables)
    if bound is None:
        return "lower bound: none, some call fits on no mesh of this cluster even alone"
    outside = [t.name for t in tables.calls if plan.executions[t.name] not in t.executions]
    if outside:
        return (f"lower bound of the search space: {bound.iteration_s:.2f} s; it does not "
                f"hold for this plan, whose {', '.join(outside)} execution is not a "
                f"candidate of the space")
    return f"estimate is {gap_text(est.iteration_s, bound)} (plans of the search space)"


def plan_as_text(plan: Plan, est: Estimate, compute_bound: bool = False) -> str:
    """A readable table of the plan and its estimate (see `plan show --help`)."""
    cluster, wf = plan.cluster, plan.workflow
    lines = [f"workflow {wf.algorithm} on {cluster.describe()}",
             f"{'call':<16} {'model':<8} {'kind':<10} {'mesh':<10} {'devices':>7}  layout"]
    for name in wf.call_order:
        call = wf.call_by_name[name]
        ex = plan.executions[name]
        lines.append(f"{name:<16} {call.model:<8} {call.kind:<10} "
                     f"{mesh_text(ex.devices, cluster):<10} {ex.num_devices:>7}  "
                     f"{ex.call_layout_text(call.kind)}")
    lines.append("(layout dXtYpZ[eE]mW = data x tensor x pipeline degrees, [expert degree,] "
                 "micro-batches;")
    lines.append(" eE: a mixture-of-experts model's experts split over E dp ranks, when E > 1;")
    lines.append(" /none, /selective, /full = a train call's activation recomputation)")
    on_path = {split_node_id(n)[1] for n in est.critical_path}
    # mixture-of-experts calls price their all-to-alls as phase "all_to_all" (moe_cost.py)
    experts = any(est.call_phases_s.get(name, {}).get("all_to_all") is not None
                  for name in wf.call_order)
    a2a_head = f" {'all-to-all s':>12}" if experts else ""
    lines.append(f"{'call':<16} {'time s':>8} {'peak GiB':>9}{a2a_head}  on critical path")
    for name in wf.call_order:
        a2a = est.call_phases_s.get(name, {}).get("all_to_all")
        a2a_text = (f" {a2a:>12.2f}" if a2a is not None else f" {'-':>12}") if experts else ""
        lines.append(f"{name:<16} {est.call_times_s[name]:>8.2f} "
                     f"{est.call_peak_memory_bytes[name] / GIB:>9.1f}{a2a_text}  "
                     f"{'yes' if name in on_path else 'no'}")
    lines.append("(peak GiB = the call's highest device during the call, resident models "
                 "included)")
    if experts:
        lines.append("(all-to-all s = part of the time: a mixture-of-experts call's token "
                     "dispatch and combine)")
    moves = reallocations(wf, plan.executions, plan.staleness)
    lines.append(f"reallocations: {len(moves)}")
    for move in moves:
        suffix = " (next iteration)" if move.wraps else ""
        seconds = est.realloc_times_s.get(move.name)
        timing = format_seconds(seconds) if seconds is not None else "not simulated"
        lines.append(f"  {move.model}: {move.src_call} -> {move.dst_call}{suffix}: {timing}")
    data_moves = transfers(wf, plan.executions)
    lines.append(f"data transfers (between placements): {len(data_moves)}")
    for move in data_moves:
        seconds = est.transfer_times_s.get(f"{move.src_call}->{move.dst_call}", 0.0)
        lines.append(f"  {move.src_call} -> {move.dst_call} ({', '.join(move.keys)}): "
                     f"{format_seconds(seconds)}")
    peak = max(est.peak_memory_bytes.values()) / GIB
    fits = "fits in device memory" if est.feasible else f"DOES NOT FIT: {est.reason}"
    lines.append(f"estimate: {est.iteration_s:.2f} s per iteration (steady state), peak "
                 f"memory {peak:.1f} GiB, {fits}")
    lines.extend(staleness_lines(plan, est))
    lines.append(lower_bound_line(plan, est, compute_bound))
    lines.extend(peak_device_lines(plan, est))
    lines.append(f"compute times from: {est.compute_source}")
    stale = _stale_note(plan, est)
    if stale:
        lines.append(stale)
    lines.append("critical path (the chain of nodes that sets the time, over the simulated "
                 "iterations):")
    lines.extend(critical_path_lines(plan, est))
    return "\n".join(lines)


def _stale_note(plan: Plan, est: Estimate) -> str | None:
    saved = (plan.estimate or {}).get("iteration_s")
    if not isinstance(saved, (int, float)) or saved <= 0:
        return None
    if abs(saved - est.iteration_s) <= SAVED_ESTIMATE_TOLERANCE * saved:
        return None
    return (f"note: the file's saved estimate is {saved:.2f} s per iteration; the cost model "
            f"now says {est.iteration_s:.2f} s")


def run(args: argparse.Namespace) -> int:
    plan = load_plan(Path(args.plan))
    if args.json:
        print(json.dumps(plan_to_mapping(plan), indent=2))
    else:
        print(plan_as_text(plan, estimate_plan(plan), compute_bound=args.lower_bound))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show", help="print a plan as a table with its estimate and critical path",
        description="Print a plan: each call's mesh (node:slots) and layout "
                    "(dXtYpZmW = data x tensor x pipeline degrees, micro-batches; a train "
                    "call adds its activation recomputation: /none keeps every "
                    "activation, /selective reruns each block's attention in backward, "
                    "/full reruns each block), its "
                    "estimated seconds and peak memory, the reallocations and data transfers "
                    "the plan implies with their times, the steady-state seconds per "
                    "iteration, the memory of the device with the highest peak part by part "
                    "(weights, gradients, optimizer states, activations, KV cache, logits, "
                    "workspace, weights copy, message buffers; per model), and the critical "
                    "path of the simulated schedule, and how far the plan is above a "
                    "lower bound on every plan of the search space (stored by `plan "
                    "search`; computed for other plans on clusters of up to "
                    f"{BOUND_MAX_DEVICES} devices, or with --lower-bound). The "
                    "estimate is recomputed with the current cost model. --json prints the "
                    "plan file's content as JSON instead.")
    parser.add_argument("plan", metavar="PLAN.yaml", help="plan file")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--lower-bound", action="store_true",
                        help="compute the lower bound when the plan file has none, on any "
                             "cluster size (prices every candidate of every call)")
    parser.set_defaults(handler=run)
