"""Placement map: which devices each call runs on, and with which layout.

Columns are the calls in execution order, rows the devices (node:slot). A call's mesh is one
coloured block (its model's colour) with its layout dXtYpZmW written in; each device cell
names that device's coordinate in the layout (data, tensor and pipeline rank) when there is
room, so a newcomer can see which devices form a tensor-parallel group or a pipeline stage.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from costmodel.simulator import Estimate  # noqa: E402
from planner.domain.mesh import mesh_text  # noqa: E402
from planner.domain.plan import Plan  # noqa: E402
from planner.figures.canvas import plan_colours, save_figure  # noqa: E402
from planner.figures.common import device_label, format_seconds  # noqa: E402
from planner.sharding.rank_groups import coordinate_of  # noqa: E402

MAX_DEVICES_WITH_COORDINATES = 16


def draw_placement(plan: Plan, est: Estimate, out: Path, heading: str) -> None:
    """Devices x calls map of the plan (module docstring)."""
    colours = plan_colours(plan)
    cluster = plan.cluster
    calls = list(plan.workflow.call_order)
    n = cluster.num_devices
    fig_w = max(6.5, 1.7 + 1.55 * len(calls))
    fig_h = max(3.5, 2.2 + 0.36 * n)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    show_coordinates = n <= MAX_DEVICES_WITH_COORDINATES
    for col, name in enumerate(calls):
        ex = plan.executions[name]
        call = plan.workflow.call_by_name[name]
        first, last = min(ex.devices), max(ex.devices)
        ax.add_patch(Rectangle((col - 0.45, first - 0.45), 0.9, last - first + 0.9,
                               facecolor=colours[call.model], edgecolor="black",
                               linewidth=0.8, alpha=0.85))
        if show_coordinates:
            for position, device in enumerate(ex.devices):
                c = coordinate_of(position, ex.dp, ex.tp, ex.pp)
                ax.text(col, device, f"dp{c.dp_rank} tp{c.tp_rank} pp{c.pp_rank}",
                        ha="center", va="center", fontsize=6.5, color="white")
                if position and ex.devices[position - 1] == device - 1:
                    ax.plot([col - 0.45, col + 0.45], [device - 0.5] * 2, color="white",
                            linewidth=0.4)
        layout_y = (first + last) / 2 if not show_coordinates else first - 0.45
        ax.text(col, layout_y, ex.call_layout_text(call.kind), ha="center",
                va="center" if not show_coordinates else "bottom", fontsize=8,
                fontweight="bold", bbox=dict(facecolor="white", edgecolor="black",
                                             linewidth=0.5, pad=1.5), zorder=4)
    ax.set_xticks(range(len(calls)),
                  [f"{name}\n{plan.workflow.call_by_name[name].kind}, "
                   f"{format_seconds(est.call_times_s[name])}\n"
                   f"mesh {mesh_text(plan.executions[name].devices, cluster)}"
                   for name in calls], fontsize=7.5)
    ax.xaxis.tick_top()
    ax.set_yticks(range(n), [device_label(cluster, d) for d in range(n)], fontsize=8)
    ax.set_xlim(-0.55, len(calls) - 0.45)
    ax.set_ylim(n - 0.5, -0.5 - (0.5 if show_coordinates else 0))
    ax.set_ylabel("device (node:slot)")
    ax.set_xlabel("calls in execution order (left to right), with kind, estimated time, mesh")
    for spine in ("right", "bottom"):
        ax.spines[spine].set_visible(False)
    handles = [Patch(facecolor=c, label=f"model: {m}") for m, c in colours.items()]
    legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       fontsize=8, frameon=False)
    ax.add_artist(legend)
    explain = ("layout dXtYpZmW: data x tensor x\npipeline degrees, micro-batches;\n"
               "/none, /selective, /full: a train\ncall's activation recomputation" +
               ("\ncell dpX tpY ppZ: the device's rank\nin its data, tensor, pipeline group"
                if show_coordinates else ""))
    ax.text(1.01, 0.0, explain, transform=ax.transAxes, fontsize=7.5, va="bottom")
    ax.set_title(f"{heading}\nplacement: the devices and layout of each call; estimate "
                 f"{est.iteration_s:.1f} s per iteration", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out)
