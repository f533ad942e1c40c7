"""Figures of the graph study: representation shift with edges removed, and one explained node's neighbourhood
coloured by importance (matplotlib only, a radial layout by hop distance)."""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from labelfree.plots import PAGE, plot_level_curves, styled  # noqa: E402

__all__ = ["hop_distances", "plot_edge_shift", "plot_node_neighbourhood"]


@styled
def plot_edge_shift(results: pd.DataFrame, title: str = "") -> Figure:
    """Representation shift of a node against the % of its eligible edges removed, one line per method."""
    return plot_level_curves(results, "representation_shift", "edges removed (%)",
                             r"representation shift $\|f_i(A) - f_i(\tilde A)\|^2$", title)


def hop_distances(edge_index: Tensor, num_nodes: int, node: int, hops: int) -> Tensor:
    """``int64 [N]``: each node's hop distance to ``node`` (along edges into it), -1 beyond ``hops``."""
    distance = torch.full((num_nodes,), -1, dtype=torch.int64)
    distance[node] = 0
    frontier = torch.zeros(num_nodes, dtype=torch.bool)
    frontier[node] = True
    source, target = edge_index[0].cpu(), edge_index[1].cpu()
    for hop in range(1, hops + 1):
        reached = torch.zeros(num_nodes, dtype=torch.bool)
        reached[source[frontier[target]]] = True
        new = reached & (distance < 0)
        distance[new] = hop
        frontier = new
    return distance


def _radial_layout(distance: Tensor) -> dict[int, tuple[float, float]]:
    """Node -> (x, y): the explained node at the centre, hop h on the circle of radius h."""
    positions: dict[int, tuple[float, float]] = {}
    for hop in range(int(distance.max()) + 1):
        members = (distance == hop).nonzero().flatten().tolist()
        for k, node in enumerate(members):
            angle = 2 * math.pi * k / max(len(members), 1) + 0.3 * hop
            positions[node] = (hop * math.cos(angle), hop * math.sin(angle)) if hop else (0.0, 0.0)
    return positions


@styled
def plot_node_neighbourhood(edge_index: Tensor, node: int, node_importance: Tensor, edge_importance: Tensor,
                            hops: int, labels: Tensor | None = None, title: str = "") -> Figure:
    """Node ``node``'s ``hops``-hop neighbourhood: nodes coloured by ``node_importance [N]`` (e.g. the sum of
    |attribution| over a node's features), edges by ``edge_importance [E]`` (|attribution| of each directed edge;
    the larger of the two directions is drawn), the explained node ringed; ``labels [N]`` written beside nodes."""
    num_nodes = len(node_importance)
    distance = hop_distances(edge_index, num_nodes, node, hops)
    positions = _radial_layout(distance)
    keep = (distance[edge_index[0].cpu()] >= 0) & (distance[edge_index[1].cpu()] >= 0)
    strongest: dict[tuple[int, int], float] = {}
    for (a, b), weight in zip(edge_index[:, keep].t().tolist(), edge_importance[keep].abs().tolist()):
        key = (min(a, b), max(a, b))
        strongest[key] = max(strongest.get(key, 0.0), weight)
    fig, axes = plt.subplots(1, 1, figsize=(PAGE * 0.6, PAGE * 0.55), layout="constrained")
    if strongest:
        segments = [[positions[a], positions[b]] for a, b in strongest]
        weights = torch.tensor(list(strongest.values()))
        lines = LineCollection(segments, cmap="Greys", array=weights.numpy(), linewidths=0.6 + 2.4 * (
            weights / weights.max().clamp_min(1e-12)).numpy(), zorder=1)
        lines.set_clim(-0.15 * float(weights.max()), float(weights.max()))  # the weakest edges stay visible
        axes.add_collection(lines)
        fig.colorbar(lines, ax=axes, shrink=0.6, label="edge importance |attribution|")
    members = sorted(positions)
    xy = torch.tensor([positions[m] for m in members])
    values = node_importance[members].abs()
    points = axes.scatter(xy[:, 0], xy[:, 1], c=values.numpy(), cmap="viridis", s=40, edgecolors="black",
                          linewidths=0.3, zorder=2)
    axes.scatter([0.0], [0.0], s=160, facecolors="none", edgecolors="red", linewidths=1.5, zorder=3)
    if labels is not None:
        for m, (px, py) in zip(members, xy.tolist()):
            axes.annotate(str(int(labels[m])), (px, py), fontsize=5, xytext=(3, 3), textcoords="offset points")
    fig.colorbar(points, ax=axes, shrink=0.6, label="node-feature importance (sum |attribution|)")
    axes.set_aspect("equal")
    axes.set_axis_off()
    fig.suptitle(textwrap.fill(title, 50))
    return fig
