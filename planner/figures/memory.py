"""Per-device peak memory, stacked by part, against each device's capacity.

The bars are the simulator's breakdown (costmodel.simulator.PlanMemory, rule 6), nothing
composed here: a device's resident parts (each trained model's weights, gradients and
optimizer states on its train mesh; each untrained model's weights), then the parts of the
node that sets its peak: a call's activations, KV cache, logits and workspace (plus a
temporary copy of the weights for a non-train call of a trained model placed unlike its train
call), or a reallocation's message buffers (plus that copy when it feeds one). Colour says the
model, hatching the part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from costmodel.plan_memory import MESSAGE_BUFFERS, ROLLOUT_COPY, WEIGHTS_COPY  # noqa: E402
from costmodel.simulator import Estimate  # noqa: E402
from planner.domain.hardware import GIB  # noqa: E402
from planner.domain.plan import Plan  # noqa: E402
from planner.figures.canvas import plan_colours, save_figure  # noqa: E402
from planner.figures.common import device_label, short_realloc  # noqa: E402

# (hatch, legend text) of each kind of the simulator's breakdown: resident parts plain or
# dotted, working parts striped, transient parts crossed.
KIND_STYLE = {
    "weights": (None, "weights"),
    "gradients": ("..", "gradients (train)"),
    "optimizer": ("o", "optimizer states (train)"),
    "activations": ("//", "activations"),
    "kv_cache": ("\\\\", "KV cache (generation)"),
    "logits": ("--", "logits (last stage)"),
    "workspace": ("||", "workspace"),
    "optimizer_step": ("**", "optimizer step temporaries (train)"),
    "gathered_parameters": ("oo", "gathered parameters (FSDP / ZeRO-3)"),
    "unsharded_gradients": ("xx.", "unsharded gradients before reduce-scatter (FSDP / ZeRO-3)"),
    WEIGHTS_COPY: ("xx", "temporary weights copy (call placed unlike its train call)"),
    MESSAGE_BUFFERS: ("++", "reallocation message buffers"),
    ROLLOUT_COPY: ("##", "rollout copy of the weights (staleness >= 1, generation placement)"),
}
LEGEND_PART_COLOUR = "#8c8c8c"  # dark enough for the white hatching to show
MAX_DEVICES_WITH_NOTES = 16


@dataclass(frozen=True)
class BarSegment:
    """One part of one device's bar, in GiB."""

    device: int
    kind: str
    model: str
    bottom_gib: float
    height_gib: float


def bar_segments(est: Estimate, num_devices: int) -> list[list[BarSegment]]:
    """Per device, its peak's parts as stacked segments, bottom to top in the simulator's
    order: each model's resident parts together, then the peak node's parts."""
    bars = []
    for d in range(num_devices):
        bottom, segments = 0.0, []
        for kind, model, amount in est.memory.device_parts[d]:
            segments.append(BarSegment(d, kind, model, bottom, amount / GIB))
            bottom += amount / GIB
        bars.append(segments)
    return bars


def _peak_note(est: Estimate, device: int, total_gib: float) -> str:
    node = est.memory.peak_node(device)
    during = "" if node is None else "\n" + short_realloc(node).replace(": ", ":\n", 1)
    return f"{total_gib:.1f}{during}"


def _legend_handles(colours: dict, kinds_used: set[str], capacities: list[float]) -> list:
    handles = [Patch(facecolor=c, label=f"model: {m}") for m, c in colours.items()]
    handles += [Patch(facecolor=LEGEND_PART_COLOUR, hatch=hatch, edgecolor="white", label=text)
                for kind, (hatch, text) in KIND_STYLE.items() if kind in kinds_used]
    capacity_text = ", ".join(f"{c:.1f}" for c in sorted(set(capacities)))
    handles.append(plt.Line2D([], [], color="red", linestyle="--",
                              label=f"device memory capacity ({capacity_text} GiB)"))
    return handles


def draw_memory(plan: Plan, est: Estimate, out: Path, heading: str) -> None:
    """Stacked bars per device (module docstring) with the capacity line."""
    colours = plan_colours(plan)
    cluster = plan.cluster
    n = cluster.num_devices
    fig, ax = plt.subplots(figsize=(max(8.0, 4.5 + 0.85 * n), 5.6))
    capacities = [cluster.usable_memory_bytes(d) / GIB for d in range(n)]
    highest_gib = max(est.peak_memory_bytes.values()) / GIB
    top = max(max(capacities), highest_gib)
    kinds_used = set()
    for segments in bar_segments(est, n):
        for s in segments:
            ax.bar(s.device, s.height_gib, bottom=s.bottom_gib, width=0.7,
                   color=colours[s.model], hatch=KIND_STYLE[s.kind][0], edgecolor="white",
                   linewidth=0.6)
            kinds_used.add(s.kind)
    if n <= MAX_DEVICES_WITH_NOTES:
        for d in range(n):
            ax.text(d, top * 1.06, _peak_note(est, d, est.peak_memory_bytes[d] / GIB),
                    ha="center", va="bottom", fontsize=6.5)
    ax.step([d - 0.5 for d in range(n)] + [n - 0.5], capacities + capacities[-1:],
            where="post", color="red", linestyle="--", linewidth=1.2)
    ax.set_ylim(0, top * 1.3)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xticks(range(n), [device_label(cluster, d) for d in range(n)], fontsize=8)
    ax.set_xlabel("device (node:slot); above each bar: peak GiB and the call or "
                  "reallocation during which it occurs")
    ax.set_ylabel("estimated peak memory (GiB)")
    ax.legend(handles=_legend_handles(colours, kinds_used, capacities), loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              handlelength=2.4, handleheight=1.6)  # room for the hatching to show
    fits = "fits" if est.feasible else "DOES NOT FIT"
    ax.set_title(f"{heading}\npeak memory per device by part: {fits}, highest "
                 f"{highest_gib:.1f} GiB", fontsize=10)
    ax.grid(axis="y", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    fig.tight_layout()
    save_figure(fig, out)
