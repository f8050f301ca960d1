"""The trace of a run: per-rank step records merged into the shape of `plan estimate --json`.

A step's start is the latest start over its ranks (when all its devices are there, as the
simulator starts a node when all its devices are free), its end the latest end. Keys:
- iteration_s: (end of iteration K-1 - end of iteration s) / (K-1-s) with the plan's
  staleness s (0: synchronous), the simulator's steady-state rule (with K <= s + 1
  iterations: the whole run over K);
- calls: [{name, model, mesh, devices, dp, tp, pp, ep, micro_batches, time_s,
  all_to_all_bytes, peak_memory_gib, peak_memory_by_device}] with time_s the mean over
  iterations 1.. (all iterations when there is one), all_to_all_bytes the bytes the call's
  mixture-of-experts all-to-alls sent, summed over its ranks, per run of it (the same
  mean; runtime.comm.AllToAllLedger says what counts; 0 for a dense model or at ep 1),
  peak_memory_gib the peak over ranks and iterations (on CPU only the first iteration is
  metered: runtime/executor/worker.py), and
  peak_memory_by_device [{device, gib}] each device's peak over iterations (what the
  estimate's per-call peak_memory_parts price at the call's highest device and
  memory_by_device per device: every tensor on the device during the call, the resident
  models of other calls included; runtime/executor/measure.py);
- reallocations / transfers: [{name, time_s, bytes, peak_memory_by_device}] named like the
  estimate's (`realloc:<model>:<src>-><dst>`, `<src>-><dst>`); bytes = sent between ranks
  per run of it; peak_memory_by_device as for calls (during the step);
- nodes: [{name: "<iteration>/<node>", start_s, end_s, devices}], seconds from the first start;
- peak_memory_gib, memory_source (cpu_live_tensor_bytes | cuda_max_memory_allocated), and
  iterations: [{iteration, seconds, metrics}].
With staleness s >= 1 also: staleness (s), pushes [{name, time_s, bytes}] like
reallocations, versions [{call, iteration, version, staleness}] (the weight version each
generate call of a rollout model read, the version of all its samples, and iteration -
version), each iteration's `staleness` (the largest of its generate calls') and
staleness_reached (the largest over the run).
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean

from planner.domain.hardware import GIB
from planner.domain.mesh import mesh_text
from planner.domain.plan import Plan


def merge_records(messages: list[dict]) -> dict[str, dict]:
    """{node name: {kind, label, iteration, start, end, bytes, all_to_all_bytes,
    peak_bytes, devices, peak_bytes_by_device}}."""
    nodes: dict[str, dict] = {}
    for message in messages:
        for r in message["records"]:
            node = nodes.setdefault(r["node"], {"kind": r["kind"], "label": r["label"],
                                                "iteration": r["iteration"], "start": r["start"],
                                                "end": r["end"], "bytes": 0,
                                                "all_to_all_bytes": 0, "peak_bytes": 0,
                                                "devices": [], "peak_bytes_by_device": {}})
            node["start"] = max(node["start"], r["start"])
            node["end"] = max(node["end"], r["end"])
            node["bytes"] += r["bytes"]
            node["all_to_all_bytes"] += r["all_to_all_bytes"]
            node["peak_bytes"] = max(node["peak_bytes"], r["peak_bytes"])
            node["devices"].append(message["rank"])
            node["peak_bytes_by_device"][message["rank"]] = r["peak_bytes"]
            if "version" in r:
                node["version"] = r["version"]
    return nodes


def iteration_ends(nodes: dict[str, dict], iterations: int) -> list[float]:
    ends = [0.0] * iterations
    for n in nodes.values():
        ends[n["iteration"]] = max(ends[n["iteration"]], n["end"])
    return ends


def _steady(values_by_iteration: dict[int, float]) -> float:
    later = [v for i, v in values_by_iteration.items() if i > 0]
    return mean(later or list(values_by_iteration.values()))


def _peaks_by_device(runs) -> list[dict]:
    """[{device, gib}]: each device's peak over the runs (iterations) of one step."""
    peaks: dict[int, int] = defaultdict(int)
    for n in runs:
        for device, peak in n["peak_bytes_by_device"].items():
            peaks[device] = max(peaks[device], peak)
    return [{"device": d, "gib": peaks[d] / GIB} for d in sorted(peaks)]


def build_trace(plan: Plan, messages: list[dict], iterations: int) -> dict:
    nodes = merge_records(messages)
    t0 = min(n["start"] for n in nodes.values())
    ends = iteration_ends(nodes, iterations)
    s = plan.staleness
    iteration_s = ((ends[-1] - ends[s]) / (iterations - 1 - s) if iterations > s + 1
                   else (ends[-1] - t0) / iterations)
    by_label: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for n in nodes.values():
        by_label[(n["kind"], n["label"])][n["iteration"]] = n
    calls = []
    for name in plan.workflow.call_order:
        ex = plan.executions[name]
        runs = by_label[("call", name)]
        calls.append({"name": name, "model": plan.workflow.call_by_name[name].model,
                      "mesh": mesh_text(ex.devices, plan.cluster), "devices": list(ex.devices),
                      "dp": ex.dp, "tp": ex.tp, "pp": ex.pp, "ep": ex.ep,
                      "micro_batches": ex.micro_batches,
                      "time_s": _steady({i: n["end"] - n["start"] for i, n in runs.items()}),
                      "all_to_all_bytes": _steady({i: n["all_to_all_bytes"]
                                                   for i, n in runs.items()}),
                      "peak_memory_gib": max(n["peak_bytes"] for n in runs.values()) / GIB,
                      "peak_memory_by_device": _peaks_by_device(runs.values())})

    def moves(kind: str) -> list[dict]:
        return [{"name": label,
                 "time_s": _steady({i: n["end"] - n["start"] for i, n in runs.items()}),
                 "bytes": _steady({i: n["bytes"] for i, n in runs.items()}),
                 "peak_memory_by_device": _peaks_by_device(runs.values())}
                for (k, label), runs in sorted(by_label.items()) if k == kind]

    metrics = defaultdict(dict)
    for message in messages:
        metrics[message["iteration"]].update(message["metrics"])
    starts = [t0] + ends[:-1]
    asynchronous = _asynchronous(nodes, iterations) if s else {}
    return {
        "iteration_s": iteration_s,
        "calls": calls,
        "reallocations": moves("realloc"),
        "transfers": moves("transfer"),
        "peak_memory_gib": max(n["peak_bytes"] for n in nodes.values()) / GIB,
        "memory_source": messages[0]["memory_source"],
        "nodes": [{"name": name, "start_s": n["start"] - t0, "end_s": n["end"] - t0,
                   "devices": sorted(n["devices"])}
                  for name, n in sorted(nodes.items(), key=lambda kv: kv[1]["start"])],
        "iterations": [{"iteration": i, "seconds": ends[i] - starts[i], "metrics": metrics[i],
                        **({"staleness": asynchronous["by_iteration"][i]} if s else {})}
                       for i in range(iterations)],
        **({"staleness": s, "pushes": moves("push"), "versions": asynchronous["versions"],
            "staleness_reached": max(asynchronous["by_iteration"])} if s else {}),
    }


def _asynchronous(nodes: dict[str, dict], iterations: int) -> dict:
    """The versions generate calls read and the staleness of each iteration (module
    docstring); an iteration without a versioned call has staleness 0."""
    versions = sorted(({"call": n["label"], "iteration": n["iteration"], "version": n["version"],
                        "staleness": n["iteration"] - n["version"]}
                       for n in nodes.values() if "version" in n),
                      key=lambda v: (v["iteration"], v["call"]))
    by_iteration = [0] * iterations
    for v in versions:
        by_iteration[v["iteration"]] = max(by_iteration[v["iteration"]], v["staleness"])
    return {"versions": versions, "by_iteration": by_iteration}


def progress_line(iteration: int, iterations: int, seconds: float, metrics: dict) -> str:
    parts = [f"iteration {iteration + 1}/{iterations}", f"{seconds:.2f} s"]
    parts += [f"{k} {v:.4g}" for k, v in sorted(metrics.items())]
    return "  ".join(parts)
