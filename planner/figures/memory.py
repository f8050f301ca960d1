"""Per-device peak memory, stacked by kind, against each device's capacity.

The parts follow the simulator's memory rule (costmodel/simulator.py, rule 6):
- resident: each trained model's train state (weights + gradients + optimizer states) on the
  devices of its train call; each untrained model's weights on every placement of its calls;
- the node that sets the device's peak adds, on top: a call's working set (activations, KV
  cache, logits, workspace) and, for a non-train call of a trained model placed unlike the
  train call, its temporary copy of the weights; or a reallocation's receive buffer (plus
  that temporary copy when it feeds one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from costmodel.plan_cost import PlanCosts  # noqa: E402
from costmodel.simulator import Estimate, memory_per_device, trained_executions  # noqa: E402
from planner.domain.augment import reallocations  # noqa: E402
from planner.figures.common import (device_label, plan_colours, save_figure,  # noqa: E402
                                    short_realloc)
from planner.domain.hardware import GIB  # noqa: E402
from planner.domain.plan import Plan  # noqa: E402

KIND_HATCH = {"resident": None, "working": "////", "weights copy": "xxx", "buffer": "...."}
KIND_TEXT = {"resident": "resident state (train state or weights)",
             "working": "working set of the peak's call",
             "weights copy": "temporary weights copy (call placed unlike its train call)",
             "buffer": "reallocation receive buffer"}
MAX_DEVICES_WITH_NOTES = 16


@dataclass(frozen=True)
class MemoryPart:
    """Bytes of one kind, for one model, on one device."""

    kind: str       # resident | working | weights copy | buffer
    model: str
    bytes: float


def memory_parts(plan: Plan, costs: PlanCosts) -> tuple[list[list[MemoryPart]], list[str | None]]:
    """Per device: the parts of its peak (module docstring), and the node setting the peak."""
    wf, ex = plan.workflow, plan.executions
    n = plan.cluster.num_devices
    parts: list[list[MemoryPart]] = [[] for _ in range(n)]
    trained = trained_executions(wf, ex)
    for model in wf.models:
        if model in trained:
            call, train_ex = trained[model]
            amounts = costs.call_memory(call, train_ex).train_state_bytes
            for d, value in zip(train_ex.devices, amounts):
                parts[d].append(MemoryPart("resident", model, float(value)))
            continue
        seen = set()
        for call in wf.calls_of_model(model):
            if ex[call].placement in seen:
                continue
            seen.add(ex[call].placement)
            for d, value in zip(ex[call].devices, costs.call_memory(call, ex[call]).weights_bytes):
                parts[d].append(MemoryPart("resident", model, float(value)))
    _, _, peak_node, _ = memory_per_device(wf, plan.cluster, ex, costs)
    moves = {m.name: m for m in reallocations(wf, ex)}
    for d, node in enumerate(peak_node):
        if node is None:
            continue
        if node in moves:
            move = moves[node]
            buffer = costs.realloc(move.model, ex[move.src_call], ex[move.dst_call])
            parts[d].append(MemoryPart("buffer", move.model,
                                       float(buffer.receive_buffer_bytes.get(d, 0.0))))
            call = move.dst_call
            if _is_temporary_copy(plan, trained, call) and d in ex[call].devices:
                position = ex[call].devices.index(d)
                weights = costs.call_memory(call, ex[call]).weights_bytes[position]
                parts[d].append(MemoryPart("weights copy", move.model, float(weights)))
            continue
        model = wf.call_by_name[node].model
        mem = costs.call_memory(node, ex[node])
        position = ex[node].devices.index(d)
        parts[d].append(MemoryPart("working", model, float(mem.working_bytes[position])))
        if _is_temporary_copy(plan, trained, node):
            parts[d].append(MemoryPart("weights copy", model, float(mem.weights_bytes[position])))
    return parts, peak_node


def _is_temporary_copy(plan: Plan, trained: dict, call_name: str) -> bool:
    call = plan.workflow.call_by_name[call_name]
    return (call.kind != "train" and call.model in trained
            and plan.executions[call_name].placement != trained[call.model][1].placement)


def draw_memory(plan: Plan, est: Estimate, costs: PlanCosts, out: Path, heading: str) -> None:
    """Stacked bars per device (module docstring) with the capacity line."""
    colours = plan_colours(plan)
    cluster = plan.cluster
    n = cluster.num_devices
    parts, peak_node = memory_parts(plan, costs)
    fig, ax = plt.subplots(figsize=(max(8.0, 3.5 + 0.85 * n), 5.2))
    kinds_used = set()
    capacities = [cluster.usable_memory_bytes(d) / GIB for d in range(n)]
    top = max(max(capacities), max(est.peak_memory_bytes.values()) / GIB)
    for d in range(n):
        bottom = 0.0
        for part in sorted(parts[d], key=lambda p: list(KIND_HATCH).index(p.kind)):
            height = part.bytes / GIB
            ax.bar(d, height, bottom=bottom, width=0.7, color=colours[part.model],
                   hatch=KIND_HATCH[part.kind], edgecolor="white", linewidth=0.6)
            bottom += height
            kinds_used.add(part.kind)
        if n <= MAX_DEVICES_WITH_NOTES:
            node = peak_node[d]
            during = "" if node is None else "\n" + short_realloc(node).replace(": ", ":\n", 1)
            ax.text(d, top * 1.06, f"{bottom:.1f}{during}", ha="center", va="bottom",
                    fontsize=6.5)
    ax.step([d - 0.5 for d in range(n)] + [n - 0.5], capacities + capacities[-1:],
            where="post", color="red", linestyle="--", linewidth=1.2)
    ax.set_ylim(0, top * 1.3)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xticks(range(n), [device_label(cluster, d) for d in range(n)], fontsize=8)
    ax.set_xlabel("device (node:slot); above each bar: peak GiB and the call or "
                  "reallocation during which it occurs")
    ax.set_ylabel("estimated peak memory (GiB)")
    handles = [Patch(facecolor=c, label=f"model: {m}") for m, c in colours.items()]
    handles += [Patch(facecolor="#bbbbbb", hatch=KIND_HATCH[k], edgecolor="white",
                      label=KIND_TEXT[k]) for k in KIND_HATCH if k in kinds_used]
    capacity_text = ", ".join(f"{c:.1f}" for c in sorted(set(capacities)))
    handles.append(plt.Line2D([], [], color="red", linestyle="--",
                              label=f"device memory capacity ({capacity_text} GiB)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    fits = "fits" if est.feasible else "DOES NOT FIT"
    ax.set_title(f"{heading}\npeak memory per device by kind: {fits}, highest "
                 f"{max(est.peak_memory_bytes.values()) / GIB:.1f} GiB", fontsize=10)
    ax.grid(axis="y", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    fig.tight_layout()
    save_figure(fig, out)
