"""Per-device Gantt chart of a plan's estimate, optionally with a measured trace beside it.

The simulator schedules K iterations (K = 3 by default); iteration 0 starts from idle
devices, so the chart shows the steady-state iterations 1..K-1. Each device row holds the
calls and reallocations that occupy it; data transfers occupy no device (they delay the
consumer), so they are drawn as thin strips at the bottom of the consumer's rows. A plan
with staleness >= 1 shows its weight pushes (tagged P#, listed below the chart) and its
iterations overlapping: generation of iteration i + 1 beside training of iteration i.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from costmodel.simulator import Estimate  # noqa: E402
from planner.domain.plan import Plan  # noqa: E402
from planner.figures.canvas import plan_colours, save_figure  # noqa: E402
from planner.figures.common import (  # noqa: E402
    REALLOC_PREFIX,
    device_label,
    format_seconds,
    short_realloc,
    split_node_id,
)
from planner.figures.trace import MeasuredNode  # noqa: E402

HEADER_TOP = -1.35        # rows above device 0 hold the iteration spans
MIN_BAR_FRACTION = 0.004   # shortest drawn bar, as a fraction of the time window
LABEL_FONT_PT = 7.5
NOTE_WIDTH_CHARS = 190
TAG_WIDTH_PT = 14         # room one "R#" tag needs above its bar
CHAR_WIDTH_PT = 0.62 * LABEL_FONT_PT  # mean glyph width of the default sans font
PUSH_PREFIX = "push:"     # planner.domain.augment.WeightPush.name
MOVE_HATCH = {REALLOC_PREFIX: "////", PUSH_PREFIX: "\\\\\\\\"}


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

    def __init__(self, ax, window: tuple[float, float], axis_width_pt: float,
                 row_pt: float, two_lanes: bool):
        self.ax = ax
        self.pt_per_row = row_pt
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

    def run_rects(self, first: int, last: int, start: float, end: float, measured: bool,
                  style: dict) -> tuple[float, float, float, float]:
        """Draw a run of adjacent device rows as one box (one lane per row when there are
        two lanes); return the box to label: the whole run, or its middle row's lane."""
        if not self.two_lanes:
            return self.rect(first, last, start, end, measured, **style)
        boxes = [self.rect(d, d, start, end, measured, **style)
                 for d in range(first, last + 1)]
        return boxes[(last - first) // 2]

    def label(self, lines: list[str], x: float, y: float, width: float,
              height: float) -> None:
        """Write as many of `lines` as fit across the box, else the first one upright."""
        width_pt, height_pt = width * self.pt_per_s, height * self.pt_per_row

        def needed(text: str) -> float:
            return len(text) * CHAR_WIDTH_PT + 4

        centre = (x + width / 2, y + height / 2)
        fit_rows = int(height_pt // (LABEL_FONT_PT * 1.25))
        across = [t for t in lines[:fit_rows] if needed(t) <= width_pt]
        if across and across == lines[:len(across)]:
            self.ax.text(*centre, "\n".join(across), ha="center", va="center",
                         fontsize=LABEL_FONT_PT, clip_on=True)
        elif needed(lines[0]) <= height_pt and LABEL_FONT_PT * 1.3 <= width_pt:
            self.ax.text(*centre, lines[0], ha="center", va="center", rotation=90,
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
    fig_w, fig_h = 13.0, max(3.4, 1.9 + row_in * (n - HEADER_TOP))
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    axis_width_pt = fig_w * 72 * 0.86
    chart = _Chart(ax, window, axis_width_pt, row_in * 72, two_lanes=bool(measured_bars))

    realloc_tags: dict[str, str] = {}
    push_tags: dict[str, str] = {}
    tag_spots: list[tuple[float, float, str]] = []
    # calls first, reallocations and pushes on top: they are often milliseconds long
    for bar in sorted(shown_bars, key=lambda b: (_move_prefix(b.name) is not None, b.start_s)):
        colour = colours[bar.model]
        prefix = _move_prefix(bar.name)
        is_realloc = prefix is not None
        style = dict(facecolor=colour, edgecolor="black" if is_realloc else "white",
                     linewidth=0.8 if is_realloc else 0.6,
                     hatch=MOVE_HATCH.get(prefix), zorder=3 if is_realloc else 2)
        tags, letter = (push_tags, "P") if prefix == PUSH_PREFIX else (realloc_tags, "R")
        for first, last in device_runs(bar.devices, merge=True):
            box = chart.run_rects(first, last, bar.start_s, bar.end_s, False, style)
            if is_realloc:
                tag = tags.setdefault(bar.name, f"{letter}{len(tags) + 1}")
                if first == min(bar.devices):
                    tag_spots.append((box[0] + box[2] / 2, box[1], tag))
            else:
                chart.label([bar.name, format_seconds(bar.end_s - bar.start_s)], *box)
    _draw_tags(ax, tag_spots, TAG_WIDTH_PT / chart.pt_per_s)
    transfer_count = _draw_transfers(chart, est, graph, shown, colours)
    for bar in measured_bars:
        for first, last in device_runs(bar.devices, merge=False):
            chart.rect(first, last, bar.start_s, bar.end_s, True, facecolor="none",
                       edgecolor=colours[bar.model], hatch="xxxx", linewidth=1.0, zorder=2)

    _draw_iteration_marks(ax, ends, shown, window)
    ax.axhline(-0.5, color="#999999", linewidth=0.6)
    ax.set_xlim(*window)
    ax.set_ylim(n - 0.5, HEADER_TOP)
    ax.set_yticks(range(n), [device_label(cluster, d) for d in range(n)], fontsize=8)
    ax.set_ylabel("device (node:slot)")
    ax.set_xlabel("simulated time since the start of iteration 0 (s)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)

    handles = [Patch(facecolor=c, label=f"model: {m}") for m, c in colours.items()]
    handles.append(Patch(facecolor="#bbbbbb", edgecolor="black", hatch="////",
                         label="reallocation (R#, listed below)"))
    if push_tags:
        handles.append(Patch(facecolor="#bbbbbb", edgecolor="black",
                             hatch=MOVE_HATCH[PUSH_PREFIX],
                             label="weight push to the generation copy (P#, listed below)"))
    if transfer_count:
        handles.append(Patch(facecolor="#bbbbbb", hatch="....",
                             label="data transfer (strip under the consumer)"))
    if measured_bars:
        handles.append(Patch(facecolor="none", edgecolor="black", hatch="xxxx",
                             label="measured (lower half of each row)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8,
              frameon=False)
    notes = [f"{tag}: {short_realloc(name)}, {format_seconds(est.realloc_times_s[name])}"
             for name, tag in realloc_tags.items()]
    notes += [f"{tag}: weight push {name[len(PUSH_PREFIX):].replace(':', ': ', 1)}, "
              f"{format_seconds(est.push_times_s[name])} (staleness {est.staleness})"
              for name, tag in push_tags.items()]
    notes.append(_transfer_note(est, transfer_count))
    if measured_note:
        notes.append(measured_note)
    if notes:
        wrapped = [textwrap.fill(n, NOTE_WIDTH_CHARS, subsequent_indent="    ") for n in notes]
        fig.text(0.01, -0.01, "\n".join(wrapped), fontsize=7.5, va="top", ha="left")
    fig.tight_layout()
    save_figure(fig, out)


def _move_prefix(name: str) -> str | None:
    """REALLOC_PREFIX or PUSH_PREFIX for a reallocation's or weight push's name, else None."""
    return next((prefix for prefix in MOVE_HATCH if name.startswith(prefix)), None)


def _draw_tags(ax, spots: list[tuple[float, float, str]], min_gap_s: float) -> None:
    """Write the R# tags above their bars; tags that would overlap are joined ("R3,R4")."""
    groups: list[list] = []
    for x, y, tag in sorted(spots):
        last = groups[-1] if groups else None
        if last and last[1] == y and x - last[0] < min_gap_s * len(last[2]):
            last[2].append(tag)
        else:
            groups.append([x, y, [tag]])
    for x, y, tags in groups:
        ax.annotate(",".join(sorted(set(tags))), (x, y), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=6.5,
                    fontweight="bold", annotation_clip=False)


def _transfer_note(est: Estimate, drawn: int) -> str:
    """One line listing every data transfer (between placements) with its time."""
    if not est.transfer_times_s:
        return "data transfers: none (every consumer runs on its producer's placement)"
    items = ", ".join(f"{k} {format_seconds(v)}" for k, v in est.transfer_times_s.items())
    drawn_text = "" if drawn else " (each too short to draw)"
    return f"data transfers{drawn_text}: {items}"


def _draw_transfers(chart: _Chart, est: Estimate, graph, shown: set[int],
                    colours: dict) -> int:
    """Thin strips in the consumer's rows, from the producer's end for the transfer time;
    transfers shorter than the shortest drawn bar are only listed below the chart."""
    count = 0
    offset, height = chart.lane(False)
    for src, dst, attrs in graph.edges(data=True):
        if not attrs.get("transfer") or graph.nodes[dst]["iteration"] not in shown:
            continue
        key = f"{graph.nodes[src]['call']}->{graph.nodes[dst]['call']}"
        start = est.node_times[src][1]
        width = est.transfer_times_s.get(key, 0.0)
        if width < chart.min_width:
            continue
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
        ax.annotate("", xy=(ends[i], -0.95), xytext=(left, -0.95), xycoords="data",
                    arrowprops=dict(arrowstyle="<->", linewidth=0.8),
                    annotation_clip=False)
        ax.text((left + ends[i]) / 2, -1.0, f"iteration {i}: {ends[i] - ends[i - 1]:.1f} s",
                ha="center", va="bottom", fontsize=8,
                bbox=dict(facecolor="white", edgecolor="none", pad=1))


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
