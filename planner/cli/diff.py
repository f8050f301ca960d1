"""`plan diff`: what differs between two plans, and what it changes in the estimate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from costmodel.simulator import Estimate, estimate_plan
from planner.domain.augment import reallocations, transfers
from planner.domain.hardware import GIB
from planner.domain.mesh import mesh_text
from planner.domain.plan import Plan, load_plan

MAX_LISTED_FIELDS = 12
TIME_EPSILON_S = 1e-9


def flat_fields(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as {dotted.path: leaf value}."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = ((f"[{i}]", v) for i, v in enumerate(data))
    else:
        return {prefix: data}
    result = {}
    for key, value in items:
        path = f"{prefix}{key}" if str(key).startswith("[") or not prefix else f"{prefix}.{key}"
        result.update(flat_fields(value, path))
    return result


def field_differences(a: Any, b: Any) -> list[dict]:
    """Every leaf that differs: {field, a, b}; a missing leaf is None on its side."""
    fa, fb = flat_fields(a), flat_fields(b)
    return [{"field": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k)]


def _workflow_data(plan: Plan) -> dict:
    """The workflow as data, calls keyed by name so a reordering is not a difference."""
    data = plan.workflow.model_dump(mode="json")
    data["calls"] = {c["name"]: c for c in data["calls"]}
    return data


def _execution_data(plan: Plan, name: str) -> dict | None:
    ex = plan.executions.get(name)
    if ex is None:
        return None
    kind = plan.workflow.call_by_name[name].kind
    return {"mesh": mesh_text(ex.devices, plan.cluster), "layout": ex.call_layout_text(kind)}


def plan_differences(a: Plan, b: Plan, est_a: Estimate, est_b: Estimate) -> dict:
    """Everything `plan diff` reports, as JSON-ready data (keys in `plan diff --help`)."""
    calls = list(a.workflow.call_order) + [c for c in b.workflow.call_order
                                           if c not in a.workflow.call_by_name]
    changed_calls = []
    for name in calls:
        ea, eb = _execution_data(a, name), _execution_data(b, name)
        ta, tb = est_a.call_times_s.get(name), est_b.call_times_s.get(name)
        if ea != eb:
            changed_calls.append({"name": name, "a": ea, "b": eb, "time_s_a": ta,
                                  "time_s_b": tb})
    call_times = [{"name": n, "a": est_a.call_times_s[n], "b": est_b.call_times_s[n],
                   "delta": est_b.call_times_s[n] - est_a.call_times_s[n]}
                  for n in calls if n in est_a.call_times_s and n in est_b.call_times_s
                  and abs(est_b.call_times_s[n] - est_a.call_times_s[n]) > TIME_EPSILON_S]
    moves_a = {m.name: m for m in reallocations(a.workflow, a.executions, a.staleness)}
    moves_b = {m.name: m for m in reallocations(b.workflow, b.executions, b.staleness)}
    data_a = {f"{t.src_call}->{t.dst_call}" for t in transfers(a.workflow, a.executions)}
    data_b = {f"{t.src_call}->{t.dst_call}" for t in transfers(b.workflow, b.executions)}
    peak_a = max(est_a.peak_memory_bytes.values()) / GIB
    peak_b = max(est_b.peak_memory_bytes.values()) / GIB
    workflow = field_differences(_workflow_data(a), _workflow_data(b))
    cluster = field_differences(a.cluster.model_dump(mode="json"),
                                b.cluster.model_dump(mode="json"))
    return {
        "identical": not (workflow or cluster or changed_calls),
        "workflow": workflow,
        "cluster": cluster,
        "calls": changed_calls,
        "iteration_s": {"a": est_a.iteration_s, "b": est_b.iteration_s,
                        "delta": est_b.iteration_s - est_a.iteration_s,
                        "ratio": est_b.iteration_s / est_a.iteration_s},
        "call_times_s": call_times,
        "peak_memory_gib": {"a": peak_a, "b": peak_b, "delta": peak_b - peak_a},
        "feasible": {"a": est_a.feasible, "b": est_b.feasible,
                     "reason_a": est_a.reason, "reason_b": est_b.reason},
        "reallocations": {
            "added": [{"name": n, "time_s": est_b.realloc_times_s.get(n)}
                      for n in moves_b if n not in moves_a],
            "removed": [{"name": n, "time_s": est_a.realloc_times_s.get(n)}
                        for n in moves_a if n not in moves_b]},
        "transfers": {"added": sorted(data_b - data_a), "removed": sorted(data_a - data_b)},
    }


def _fields_text(title: str, items: list[dict]) -> list[str]:
    if not items:
        return [f"{title}: same"]
    lines = [f"{title}: {len(items)} field(s) differ"]
    for item in items[:MAX_LISTED_FIELDS]:
        lines.append(f"  {item['field']}: {item['a']!r} -> {item['b']!r}")
    if len(items) > MAX_LISTED_FIELDS:
        lines.append(f"  ... and {len(items) - MAX_LISTED_FIELDS} more (see --json)")
    return lines


def differences_as_text(diff: dict, name_a: str, name_b: str) -> str:
    lines = [f"A = {name_a}", f"B = {name_b}"]
    if diff["identical"]:
        lines.append("no differences: same workflow, cluster and executions")
    lines += _fields_text("workflow", diff["workflow"])
    lines += _fields_text("cluster", diff["cluster"])
    if diff["calls"]:
        lines.append(f"calls with a different mesh or layout: {len(diff['calls'])}")
        lines.append(f"  {'call':<16} {'A mesh':<9} {'A layout':<18} {'B mesh':<9} "
                     f"{'B layout':<18} {'A s':>8} {'B s':>8}")
        for c in diff["calls"]:
            a, b = c["a"] or {"mesh": "-", "layout": "(absent)"}, \
                c["b"] or {"mesh": "-", "layout": "(absent)"}
            ta = f"{c['time_s_a']:.2f}" if c["time_s_a"] is not None else "-"
            tb = f"{c['time_s_b']:.2f}" if c["time_s_b"] is not None else "-"
            lines.append(f"  {c['name']:<16} {a['mesh']:<9} {a['layout']:<18} {b['mesh']:<9} "
                         f"{b['layout']:<18} {ta:>8} {tb:>8}")
    else:
        lines.append("calls: same mesh and layout for every call")
    it = diff["iteration_s"]
    lines.append(f"iteration time: {it['a']:.2f} s -> {it['b']:.2f} s ({it['delta']:+.2f} s, "
                 f"B/A = {it['ratio']:.3f})")
    other_times = [t for t in diff["call_times_s"]
                   if t["name"] not in {c["name"] for c in diff["calls"]}]
    for t in other_times:
        lines.append(f"  {t['name']}: {t['a']:.2f} s -> {t['b']:.2f} s ({t['delta']:+.2f} s, "
                     f"same execution, other inputs)")
    mem = diff["peak_memory_gib"]
    lines.append(f"peak memory: {mem['a']:.1f} GiB -> {mem['b']:.1f} GiB ({mem['delta']:+.1f})")
    feasible = diff["feasible"]
    if feasible["a"] != feasible["b"]:
        lines.append(f"feasible: {feasible['a']} -> {feasible['b']} "
                     f"({feasible['reason_a'] or feasible['reason_b']})")
    for kind in ("added", "removed"):
        for r in diff["reallocations"][kind]:
            seconds = f", {r['time_s']:.4f} s" if r["time_s"] is not None else ""
            lines.append(f"reallocation {kind}: {r['name']}{seconds}")
    for kind in ("added", "removed"):
        if diff["transfers"][kind]:
            lines.append(f"data transfers {kind}: "
                         f"{', '.join(diff['transfers'][kind])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    a, b = load_plan(Path(args.plan_a)), load_plan(Path(args.plan_b))
    diff = plan_differences(a, b, estimate_plan(a), estimate_plan(b))
    if args.json:
        print(json.dumps({"a": args.plan_a, "b": args.plan_b, **diff}, indent=2))
    else:
        print(differences_as_text(diff, args.plan_a, args.plan_b))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diff", help="compare two plans and their estimates",
        description="Compare plan A with plan B: the workflow and cluster fields that differ, "
                    "each call whose mesh (node:slots) or layout (dXtYpZmW, with "
                    "/none, /selective or /full for a train call's activation "
                    "recomputation) differs, and what that changes in the estimate (both "
                    "recomputed with the current cost model): seconds per iteration "
                    "(B - A and B / A), per-call seconds, peak memory, feasibility, "
                    "reallocations and data transfers added or removed. Exit 0 whether "
                    "or not they differ. JSON keys: identical, workflow, cluster (lists of "
                    "{field, a, b}), calls, iteration_s, call_times_s, peak_memory_gib, "
                    "feasible, reallocations, transfers.")
    parser.add_argument("plan_a", metavar="A.yaml", help="first plan")
    parser.add_argument("plan_b", metavar="B.yaml", help="second plan")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.set_defaults(handler=run)
