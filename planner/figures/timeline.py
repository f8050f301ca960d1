"""Per-device Gantt chart of a plan's estimate, optionally with a measured trace beside it.

The simulator schedules K iterations (K = 3 by default); iteration 0 starts from idle
devices, so the chart shows the steady-state iterations 1..K-1. Each device row holds the
calls and reallocations that occupy it; data transfers occupy no device (they delay the
consumer), so they are drawn as thin strips at the bottom of the consumer's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from costmodel.simulator import Estimate  # noqa: E402
from planner.figures.common import (REALLOC_PREFIX, device_label, format_seconds,  # noqa: E402
                                    plan_colours, save_figure, short_realloc, split_node_id)
from planner.figures.trace import MeasuredNode  # noqa: E402
from planner.plan import Plan  # noqa: E402

MIN_BAR_FRACTION = 0.004   # shortest drawn bar, as a fraction of the time window
LABEL_FONT_PT = 7.5
CHAR_WIDTH_PT = 0.62 * LABEL_FONT_PT  # mean glyph width of the default sans font


@dataclass(frozen=True)
class Bar:
    """One node drawn on a run of adjacent device rows."""

    name: str          # call or realloc name, without the iteration
    iteration: int     # the iteration it runs in
    model: str
    start_s: float
    end_s: float
    devices: tuple[int, ...]


def runs_iteration(graph, node_id: str) -> int:
    """The iteration a node runs in: a wrapping reallocation runs in its destination's."""
    attrs = graph.nodes[node_id]
    if attrs["kind"] == "call":
        return attrs["iteration"]
    (dst,) = graph.successors(node_id)
    return graph.nodes[dst]["iteration"]


def estimated_bars(graph, est: Estimate) -> list[Bar]:
    bars = []
    for node_id, (start, end) in est.node_times.items():
        attrs = graph.nodes[node_id]
        bars.append(Bar(split_node_id(node_id)[1], runs_iteration(graph, node_id),
                        attrs["model"], start, end, tuple(attrs["devices"])))
    return bars


def iteration_ends(bars: list[Bar], num_iterations: int) -> list[float]:
    """end(i): the last end among the nodes that run in iteration i (simulator rule 5)."""
    ends = [0.0] * num_iterations
    for bar in bars:
        ends[bar.iteration] = max(ends[bar.iteration], bar.end_s)
    return ends


def device_runs(devices: tuple[int, ...], merge: bool) -> list[tuple[int, int]]:
    """(first, last) row ranges of adjacent devices; single rows when `merge` is False."""
    rows = sorted(devices)
    if not merge:
        return [(d, d) for d in rows]
    runs = [[rows[0], rows[0]]]
    for d in rows[1:]:
        if d == runs[-1][1] + 1:
            runs[-1][1] = d
        else:
            runs.append([d, d])
    return [tuple(r) for r in runs]


class _Chart:
    """Drawing state of one timeline: axes, window, lanes."""

    def __init__(self, ax, window: tuple[float, float], axis_width_pt: float, two_lanes: bool):
        self.ax = ax
        self.t0, self.t1 = window
        self.pt_per_s = axis_width_pt / (self.t1 - self.t0)
        self.min_width = MIN_BAR_FRACTION * (self.t1 - self.t0)
        self.two_lanes = two_lanes

    def lane(self, measured: bool) -> tuple[float, float]:
        """Vertical offset and height of a lane inside a device row (row centre at 0)."""
        if not self.two_lanes:
            return -0.4, 0.8
        return (0.02, 0.4) if measured else (-0.42, 0.42)

    def rect(self, first: int, last: int, start: float, end: float, measured: bool,
             **style) -> tuple[float, float, float, float]:
        offset, height = self.lane(measured)
        width = max(end - start, self.min_width)
        y = first + offset
        h = (last - first) + height
        self.ax.add_patch(Rectangle((start, y), width, h, **style))
        return start, y, width, h

    def label(self, text: str, x: float, y: float, width: float, height: float) -> None:
        """Write `text` centred in a box if it fits across, else upright if it fits down."""
        width_pt = width * self.pt_per_s
        needed = len(max(text.split("\n"), key=len)) * CHAR_WIDTH_PT + 4
        if needed <= width_pt:
            self.ax.text(x + width / 2, y + height / 2, text, ha="center", va="center",
                         fontsize=LABEL_FONT_PT, clip_on=True)


def draw_timeline(plan: Plan, est: Estimate, graph, out: Path, title: str,
                  measured: list[MeasuredNode] | None = None) -> None:
    """Gantt chart of the steady-state iterations of `est` (and `measured`, if given)."""
    colours = plan_colours(plan)
    cluster = plan.cluster
    num_iterations = max(attrs["iteration"] for _, attrs in graph.nodes(data=True)) + 1
    bars = estimated_bars(graph, est)
    ends = iteration_ends(bars, num_iterations)
    shown = set(range(1, num_iterations))
    shown_bars = [b for b in bars if b.iteration in shown]
    window = (min(b.start_s for b in shown_bars), max(b.end_s for b in shown_bars))
    measured_bars, measured_note = _aligned_measured(measured or [], shown, window[0])
    if measured_bars:
        window = (window[0], max(window[1], max(b.end_s for b in measured_bars)))
    span = window[1] - window[0]
    window = (window[0] - 0.01 * span, window[1] + 0.01 * span)

    n = cluster.num_devices
    row_in = 0.62 if measured_bars else 0.42
    fig_w, fig_h = 13.0, max(3.2, 1.6 + row_in * n)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    axis_width_pt = fig_w * 72 * 0.86
    chart = _Chart(ax, window, axis_width_pt, two_lanes=bool(measured_bars))

    realloc_tags: dict[str, str] = {}
    for bar in sorted(shown_bars, key=lambda b: b.start_s):
        colour = colours[bar.model]
        is_realloc = bar.name.startswith(REALLOC_PREFIX)
        for first, last in device_runs(bar.devices, merge=not measured_bars):
            x, y, w, h = chart.rect(first, last, bar.start_s, bar.end_s, False,
                                    facecolor=colour, edgecolor="black" if is_realloc
                                    else "white", linewidth=0.8 if is_realloc else 0.6,
                                    hatch="////" if is_realloc else None)
            if is_realloc:
                tag = realloc_tags.setdefault(bar.name, f"R{len(realloc_tags) + 1}")
                if first == min(bar.devices):
                    ax.annotate(tag, (x + w / 2, y), xytext=(0, 3),
                                textcoords="offset points", ha="center", va="bottom",
                                fontsize=6.5, fontweight="bold", annotation_clip=False)
            else:
                chart.label(f"{bar.name}\n{format_seconds(bar.end_s - bar.start_s)}",
                            x, y, w, h)
    transfer_count = _draw_transfers(chart, plan, est, graph, shown, colours)
    for bar in measured_bars:
        for first, last in device_runs(bar.devices, merge=False):
            chart.rect(first, last, bar.start_s, bar.end_s, True, facecolor="none",
                       edgecolor=colours[bar.model], hatch="xxxx", linewidth=1.0)

    _draw_iteration_marks(ax, ends, shown, window)
    ax.set_xlim(*window)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_yticks(range(n), [device_label(cluster, d) for d in range(n)], fontsize=8)
    ax.set_ylabel("device (node:slot)")
    ax.set_xlabel("simulated time since the start of iteration 0 (s)")
    ax.set_title(title, fontsize=10, pad=22)
    ax.grid(axis="x", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)

    handles = [Patch(facecolor=c, label=f"model: {m}") for m, c in colours.items()]
    handles.append(Patch(facecolor="#bbbbbb", edgecolor="black", hatch="////",
                         label="reallocation (R#, listed below)"))
    if transfer_count:
        handles.append(Patch(facecolor="#bbbbbb", hatch="....",
                             label="data transfer (delays the consumer)"))
    if measured_bars:
        handles.append(Patch(facecolor="none", edgecolor="black", hatch="xxxx",
                             label="measured (lower half of each row)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8,
              frameon=False)
    notes = [f"{tag}: {short_realloc(name)}, {format_seconds(est.realloc_times_s[name])}"
             for name, tag in realloc_tags.items()]
    if measured_note:
        notes.append(measured_note)
    if notes:
        fig.text(0.01, -0.01, "\n".join(notes), fontsize=7.5, va="top", ha="left")
    fig.tight_layout()
    save_figure(fig, out)


def _draw_transfers(chart: _Chart, plan: Plan, est: Estimate, graph, shown: set[int],
                    colours: dict) -> int:
    """Thin strips in the consumer's rows: from the producer's end for the transfer time."""
    count = 0
    offset, height = chart.lane(False)
    for src, dst, attrs in graph.edges(data=True):
        if not attrs.get("transfer") or graph.nodes[dst]["iteration"] not in shown:
            continue
        key = f"{graph.nodes[src]['call']}->{graph.nodes[dst]['call']}"
        start = est.node_times[src][1]
        width = max(est.transfer_times_s.get(key, 0.0), chart.min_width)
        for d in graph.nodes[dst]["devices"]:
            chart.ax.add_patch(Rectangle((start, d + offset + height * 0.8), width,
                                         height * 0.2, facecolor=colours[graph.nodes[src]
                                                                         ["model"]],
                                         edgecolor="black", linewidth=0.3, hatch="...."))
        count += 1
    return count


def _draw_iteration_marks(ax, ends: list[float], shown: set[int],
                          window: tuple[float, float]) -> None:
    """Dashed lines at the end of each iteration; the steady-state time written between."""
    for i in sorted(shown | {min(shown) - 1}):
        if window[0] <= ends[i] <= window[1]:
            ax.axvline(ends[i], color="black", linestyle="--", linewidth=0.9)
    for i in sorted(shown):
        left = max(ends[i - 1], window[0])
        ax.annotate("", xy=(ends[i], -0.5), xytext=(left, -0.5), xycoords="data",
                    arrowprops=dict(arrowstyle="<->", linewidth=0.8),
                    annotation_clip=False)
        ax.text((left + ends[i]) / 2, -0.62, f"iteration {i}: {ends[i] - ends[i - 1]:.1f} s",
                ha="center", va="bottom", fontsize=8)


def _aligned_measured(nodes: list[MeasuredNode], shown: set[int],
                      est_start: float) -> tuple[list[Bar], str | None]:
    """Measured bars of the shown iterations (or the trace's last ones), shifted so the
    first shown measured node starts where the first shown estimated node starts."""
    if not nodes:
        return [], None
    iterations = sorted({n.iteration for n in nodes})
    picked = [i for i in iterations if i in shown] or iterations[-len(shown):]
    chosen = [n for n in nodes if n.iteration in picked]
    shift = est_start - min(n.start_s for n in chosen)
    bars = [Bar(n.name, n.iteration, n.model, n.start_s + shift, n.end_s + shift, n.devices)
            for n in chosen]
    note = (f"measured: iterations {', '.join(map(str, picked))} of the trace, shifted by "
            f"{shift:+.2f} s so that they start with the estimate")
    return bars, note
