"""The augmented dataflow graph of a plan over two iterations.

One row per model; columns by dependency depth (longest path from the start), so time runs
left to right. Calls are drawn with the marker of their kind, reallocation nodes as small
hatched squares in their model's row. Edges: data (grey; orange dashed where the data moves
between placements, i.e. a transfer), order between consecutive calls of one model (dotted), and
parameter version (blue: the train call of iteration i before the model's first call of
iteration i+1).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from costmodel.simulator import Estimate  # noqa: E402
from planner.domain.plan import Plan  # noqa: E402
from planner.figures.canvas import plan_colours, save_figure  # noqa: E402
from planner.figures.common import format_seconds  # noqa: E402
from planner.figures.dataflow import KIND_MARKERS  # noqa: E402
from planner.figures.timeline import runs_iteration  # noqa: E402

EDGE_STYLES = {
    "data": dict(edge_color="#888888", style="solid", width=1.0),
    "transfer": dict(edge_color="#e67e00", style="dashed", width=1.4),
    "order": dict(edge_color="#444444", style="dotted", width=1.0),
    "version": dict(edge_color="#1f4fbf", style="solid", width=1.8),
}
EDGE_TEXT = {"data": "data already in place", "transfer": "data moved (other devices or dp/tp/pp split)",
             "order": "same model, next call (order)",
             "version": "parameter version (train -> next iteration)"}
CALL_SIZE, REALLOC_SIZE = 1500, 420
ITERATION_SHADES = ("#f3f3f3", "#e4ecf7")
ITERATION_GAP = 0.35  # columns between two iterations' blocks
COLUMN_IN = 1.6
LABEL_BOX = dict(facecolor="white", edgecolor="none", alpha=0.75, pad=0.6)


def depth_positions(graph: nx.DiGraph, rows: dict[str, int]) -> dict[str, tuple[float, float]]:
    """x = longest-path depth among the nodes of the node's own iteration, each iteration's
    columns to the right of the previous one's; y = the node's model row."""
    iteration = {node: runs_iteration(graph, node) for node in graph}
    depth: dict[str, int] = {}
    for node in nx.topological_sort(graph):
        depth[node] = max((depth[p] + 1 for p in graph.predecessors(node)
                           if iteration[p] == iteration[node]), default=0)
    offset, offsets = 0, {}
    for i in sorted(set(iteration.values())):
        offsets[i] = offset
        offset += max(depth[n] for n in graph if iteration[n] == i) + 1 + ITERATION_GAP
    return {node: (float(offsets[iteration[node]] + depth[node]),
                   -float(rows[graph.nodes[node]["model"]])) for node in graph}


def draw_augmented_graph(plan: Plan, graph: nx.DiGraph, est: Estimate, out: Path,
                         heading: str) -> None:
    """Draw `graph` (planner.domain.augment.augmented_graph of the plan) as in the module docstring."""
    colours = plan_colours(plan)
    rows = {model: i for i, model in enumerate(plan.workflow.models)}
    pos = depth_positions(graph, rows)
    width = max(x for x, _ in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(max(9.0, 2.2 + COLUMN_IN * width),
                                    1.9 + 1.3 * len(rows)))

    for i in sorted({runs_iteration(graph, n) for n in graph}):
        xs = [pos[n][0] for n in graph if runs_iteration(graph, n) == i]
        ax.axvspan(min(xs) - 0.5, max(xs) + 0.5, color=ITERATION_SHADES[i % 2], zorder=0)
        ax.text((min(xs) + max(xs)) / 2, 0.75, f"iteration {i}", ha="center", fontsize=9,
                fontweight="bold")

    for kind, style in EDGE_STYLES.items():
        edges = [(s, d) for s, d, a in graph.edges(data=True) if _edge_kind(a) == kind]
        nx.draw_networkx_edges(graph, pos, edgelist=edges, ax=ax, arrows=True, arrowsize=11,
                               node_size=CALL_SIZE, connectionstyle="arc3,rad=0.12",
                               **style)
    calls = [n for n in graph if graph.nodes[n]["kind"] == "call"]
    for kind, marker in KIND_MARKERS.items():
        nodes = [n for n in calls if plan.workflow.call_by_name[graph.nodes[n]["call"]].kind
                 == kind]
        nx.draw_networkx_nodes(graph, pos, nodelist=nodes, node_shape=marker, ax=ax,
                               node_size=CALL_SIZE, edgecolors="black", linewidths=0.6,
                               node_color=[colours[graph.nodes[n]["model"]] for n in nodes])
    moves = [n for n in graph if graph.nodes[n]["kind"] in ("realloc", "push")]
    if moves:
        drawn = nx.draw_networkx_nodes(graph, pos, nodelist=moves, node_shape="s", ax=ax,
                                       node_size=REALLOC_SIZE, edgecolors="black",
                                       linewidths=0.8,
                                       node_color=[colours[graph.nodes[n]["model"]]
                                                   for n in moves])
        drawn.set_hatch("////")
    for node in calls:
        call = graph.nodes[node]["call"]
        x, y = pos[node]
        kind = plan.workflow.call_by_name[call].kind
        ax.text(x, y - 0.33, f"{call}\n{plan.executions[call].call_layout_text(kind)}, "
                f"{format_seconds(est.call_times_s[call])}", ha="center", va="top",
                fontsize=7, bbox=LABEL_BOX)
    for node in moves:
        x, y = pos[node]
        kind = graph.nodes[node]["kind"]
        times = est.push_times_s if kind == "push" else est.realloc_times_s
        seconds = times[node.split("/", 1)[1]]
        ax.text(x, y - 0.2, f"{kind}\n{format_seconds(seconds)}", ha="center", va="top",
                fontsize=6.5, bbox=LABEL_BOX)
    ax.set_yticks([-r for r in rows.values()], [f"model: {m}" for m in rows], fontsize=8)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(-len(rows) + 0.2, 1.1)
    ax.set_xlabel("dependency order, left to right (column = longest chain of nodes before it)")
    handles = [Patch(facecolor=c, label=f"model: {m}") for m, c in colours.items()]
    handles += [Line2D([], [], marker=mk, linestyle="none", markerfacecolor="#cccccc",
                       markeredgecolor="black", markersize=8, label=f"{k} call")
                for k, mk in KIND_MARKERS.items()]
    handles.append(Patch(facecolor="#cccccc", edgecolor="black", hatch="////",
                         label="reallocation of parameters"))
    handles += [Line2D([], [], color=s["edge_color"], linestyle=s["style"],
                       linewidth=s["width"], label=EDGE_TEXT[k]) for k, s in EDGE_STYLES.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
              frameon=False)
    ax.set_title(f"{heading}\naugmented dataflow graph over {len(ITERATION_SHADES)} "
                 f"iterations: calls, reallocations, data / transfer / version edges",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, out)


def _edge_kind(attrs: dict) -> str:
    if attrs["kind"] == "data":
        return "transfer" if attrs.get("transfer") else "data"
    return attrs["kind"]
