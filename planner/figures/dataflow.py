"""Drawing a workflow's dataflow graph: calls in columns by dependency depth, coloured by model."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402

from planner.domain.workflow import Workflow  # noqa: E402
from planner.figures.canvas import model_colours, save_figure  # noqa: E402

KIND_MARKERS = {"generate": "o", "inference": "s", "train": "D"}


def layered_positions(graph: nx.DiGraph, order: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """x = longest-path depth of the call, y = its rank among calls of the same depth."""
    depth: dict[str, int] = {}
    for node in order:
        depth[node] = max((depth[p] + 1 for p in graph.predecessors(node)), default=0)
    rows: dict[int, int] = {}
    positions = {}
    for node in order:
        row = rows.get(depth[node], 0)
        rows[depth[node]] = row + 1
        positions[node] = (float(depth[node]), -float(row))
    return positions


def draw_workflow(workflow: Workflow, out: Path) -> None:
    """Draw the DFG with edge labels (data keys) and a legend of models and call kinds."""
    graph = workflow.graph
    positions = layered_positions(graph, workflow.call_order)
    colours = model_colours(list(workflow.models))
    width = 3.0 + 2.6 * max(x for x, _ in positions.values())
    height = 2.0 + 1.3 * max(-y for _, y in positions.values())
    fig, ax = plt.subplots(figsize=(max(width, 6.0), max(height, 3.5)))
    nx.draw_networkx_edges(graph, positions, ax=ax, arrows=True, arrowsize=14,
                           node_size=2200, edge_color="#777777")
    edge_labels = {(s, d): ", ".join(k) for s, d, k in graph.edges(data="keys")}
    nx.draw_networkx_edge_labels(graph, positions, edge_labels=edge_labels, ax=ax,
                                 font_size=7, label_pos=0.55)
    for kind, marker in KIND_MARKERS.items():
        nodes = [n for n in graph if graph.nodes[n]["kind"] == kind]
        nx.draw_networkx_nodes(graph, positions, nodelist=nodes, node_shape=marker, ax=ax,
                               node_size=2200,
                               node_color=[colours[graph.nodes[n]["model"]] for n in nodes])
    nx.draw_networkx_labels(graph, positions, ax=ax, font_size=8)
    for role, colour in colours.items():
        ax.scatter([], [], color=colour, label=f"model: {role}")
    for kind, marker in KIND_MARKERS.items():
        ax.scatter([], [], color="#cccccc", marker=marker, label=kind)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"{workflow.algorithm} workflow: model function calls and the data between "
                 f"them (left to right = dependency order)", fontsize=9)
    ax.margins(0.15)
    ax.axis("off")
    fig.tight_layout()
    save_figure(fig, out)
