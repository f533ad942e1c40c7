"""Protocol: consistency of label-free feature importance for the nodes of a graph (node features and edges).

For each explained node i and each explainer, the label-free attribution of ``g_i(X~) = <f(X, A)_i, f(X~, A)_i>``
(:class:`~labelfree.attribution.inputs.NodeRepresentation`) over the node-feature matrix, or of
``g_i(w) = <f(X, A)_i, f(X, A, w)_i>`` (:class:`~labelfree.attribution.inputs.EdgeRepresentation`) over the edge
weights, ranks node i's *eligible* elements (:mod:`labelfree.metrics.structured`):

* node features: the non-zero entries (for the baseline 0; entries already at the baseline cannot change) of the
  rows of node i's L-hop computation subgraph (L = the encoder's message-passing layers), the only entries f_i
  depends on. The top p % are set to 0.
* edges: the directed edges into node i's (L-1)-hop neighbourhood, the only ones f_i depends on. The top p % are
  removed (their weight set to 0: for a GCN the same as dropping the directed edge).

The score is the representation shift ``||f(X, A)_i - f(X', A')_i||^2`` (higher is better), against the random
ranking. Nodes are explained one at a time, each on its computation subgraph (:func:`computation_subgraph`: the
same f_i, exactly, for a GCN; an attribution over the whole Cora feature matrix would be 2708 x 1433 floats and a
forward pass over the whole graph per integration step). A :class:`~labelfree.attribution.features.RandomAttribution` draws each node's ranking from its
own generator (seed + node id), so the random rankings of different nodes are independent.

Rows: ``method, level, metric, value, std, n, target`` with ``target`` ``node_features`` or ``edges``, level = p (%),
metric = representation_shift, std over the explained nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from captum.attr import Attribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from labelfree.attribution.batched import attribute_features
from labelfree.attribution.features import RandomAttribution
from labelfree.attribution.inputs import EdgeRepresentation, NodeRepresentation
from labelfree.guards import check_finite
from labelfree.metrics import percent_to_fraction
from labelfree.metrics.structured import k_hop_nodes, remove_edges
from labelfree.modules import eval_mode
from labelfree.protocols.consistency import tidy_row

log = logging.getLogger(__name__)

__all__ = ["TARGETS", "ComputationSubgraph", "ExplainerFactory", "computation_subgraph", "eligible_counts", "explainable",
           "graph_consistency", "top_masks"]

#: builds a label-free explainer on a forward module (NodeRepresentation or EdgeRepresentation of a subgraph)
ExplainerFactory = Callable[[nn.Module], Attribution]

#: what is masked: node features (set to the baseline) or edges (removed)
TARGETS = ("node_features", "edges")


def eligible_counts(x: Tensor, edge_index: Tensor, nodes: Tensor, hops: int, baseline: float = 0.0) -> Tensor:
    """``int64 [n, 2]``: each node's eligible node-feature entries and eligible edges."""
    reach = k_hop_nodes(edge_index, nodes, len(x), hops)
    features = (reach.float() @ (x.cpu() != baseline).float().sum(1)).long()
    edges = k_hop_nodes(edge_index, nodes, len(x), hops - 1)[:, edge_index[1].cpu()].sum(1)
    return torch.stack([features, edges], dim=1)


def explainable(x: Tensor, edge_index: Tensor, nodes: Tensor, hops: int, percents: Sequence[float],
                baseline: float = 0.0) -> Tensor:
    """Boolean ``[n]``: the nodes for which the smallest p of ``percents`` selects at least one eligible node
    feature and one eligible edge (``round(p / 100 * count) >= 1``); the others cannot be scored at that p."""
    fraction = min(percent_to_fraction(p) for p in percents)
    counts = eligible_counts(x, edge_index, nodes, hops, baseline)
    return (torch.round(fraction * counts.double()) >= 1).all(dim=1)


def _node_explainer(make: ExplainerFactory, forward: nn.Module, node: int) -> Attribution:
    """The explainer used for one node: a random ranking gets its own seed per node."""
    explainer = make(forward)
    if isinstance(explainer, RandomAttribution):
        return RandomAttribution(forward, seed=explainer.seed + node)
    return explainer


@dataclass(frozen=True)
class ComputationSubgraph:
    """Node i's computation subgraph, on which an L-layer GCN gives f_i exactly: the nodes within L + 1 hops
    (``nodes``, global ids; i is ``center``, a local id) and the edges into the nodes within L hops
    (``edge_ids`` into the global ``edge_index``; ``edge_index`` relabelled). The extra hop keeps the in-degrees of
    the L-hop nodes, which GCN's normalisation reads, exact. ``features`` [n_sub] and ``edges`` [E_sub] mark the
    rows within L hops and the edges into the (L-1)-hop neighbourhood (what the masks may select)."""

    nodes: Tensor
    center: int
    edge_ids: Tensor
    edge_index: Tensor
    features: Tensor
    edges: Tensor


def computation_subgraph(edge_index: Tensor, num_nodes: int, node: int, hops: int) -> ComputationSubgraph:
    """The :class:`ComputationSubgraph` of ``node`` for an encoder of ``hops`` message-passing layers."""
    reach = k_hop_nodes(edge_index, [node], num_nodes, hops + 1)[0]
    inner = k_hop_nodes(edge_index, [node], num_nodes, hops)[0]
    core = k_hop_nodes(edge_index, [node], num_nodes, hops - 1)[0]
    source, target = edge_index[0].cpu(), edge_index[1].cpu()
    edge_ids = inner[target].nonzero().flatten()
    nodes = reach.nonzero().flatten()
    local = torch.full((num_nodes,), -1, dtype=torch.int64)
    local[nodes] = torch.arange(len(nodes))
    sub = torch.stack([local[source[edge_ids]], local[target[edge_ids]]])
    return ComputationSubgraph(nodes=nodes, center=int(local[node]), edge_ids=edge_ids, edge_index=sub,
                               features=inner[nodes], edges=core[target[edge_ids]])


def top_masks(importance: Tensor, eligible: Tensor, fractions: Sequence[float], what: str) -> list[Tensor]:
    """For each fraction, the boolean mask (shaped like ``importance``) of the ``round(fraction * n_eligible)``
    eligible entries with the largest |importance|, ties by position (lower first): the selection of
    :func:`~labelfree.metrics.structured.top_node_feature_mask` / ``top_edge_mask``, with one sort of the eligible
    entries for every fraction (a node's feature matrix has ~10^5-10^6 entries, a few thousand eligible)."""
    positions = eligible.reshape(-1).nonzero().flatten()
    values = importance.reshape(-1)[positions].abs()
    if torch.isnan(values).any():
        raise ValueError(f"attributions of the {what} contain NaN; importances cannot be ranked")
    order = positions[values.argsort(descending=True, stable=True)]
    masks = []
    for fraction in fractions:
        k = int(torch.round(torch.tensor(fraction * len(positions), dtype=torch.float64)))
        if k == 0 and fraction > 0:
            raise ValueError(f"the mask selects nothing among the {len(positions)} eligible {what} at fraction "
                             f"{fraction:g}; explain only explainable() nodes")
        mask = torch.zeros(importance.numel(), dtype=torch.bool)
        mask[order[:k]] = True
        masks.append(mask.reshape(importance.shape))
    return masks


def _shift(encoder: nn.Module, reference: Tensor, x: Tensor, edge_index: Tensor, center: int) -> Tensor:
    """``||reference - encoder(x, edge_index)[center]||^2`` as ``Tensor[1]`` on the CPU."""
    with torch.no_grad():
        return (reference - encoder(x, edge_index)[center]).pow(2).sum().reshape(1).cpu()


def graph_consistency(
    encoder: nn.Module,
    x: Tensor,
    edge_index: Tensor,
    nodes: Tensor | Sequence[int],
    explainers: Mapping[str, Mapping[str, ExplainerFactory]],
    attribute_kwargs: Mapping[str, Mapping[str, Any]],
    percents: Sequence[float],
    hops: int,
    baseline: float = 0.0,
) -> tuple[pd.DataFrame, dict[str, Tensor]]:
    """Representation shift per (target, method, p) over the explained ``nodes``.

    Each node is explained and masked on its :func:`computation_subgraph` (exact for a GCN: f_i is the same number
    as on the whole graph, at a fraction of the cost); attributions outside it are 0 and never eligible.

    Args:
        encoder: ``encoder(x [N, F], edge_index [2, E], edge_weight [E] | None) -> [N, d]`` (eval mode), an L-layer
            message-passing encoder whose layers aggregate over incoming edges (GCN).
        x, edge_index: the graph the encoder passes messages on.
        nodes: explained node ids ``[n]`` (each must be :func:`explainable` at the smallest p).
        explainers: per target (``node_features``, ``edges``), name -> a factory that builds the label-free
            explainer on a forward module, ``NodeRepresentation(encoder, edge_index)`` resp.
            ``EdgeRepresentation(encoder, x, edge_index)`` of the node's subgraph (e.g.
            ``lambda forward: LabelFreeForwardArgs(IntegratedGradients(forward))``, or a ``RandomAttribution``).
        attribute_kwargs: name -> keyword arguments of ``attribute`` (``n_steps``, ``internal_batch_size``, ...).
        percents: p, % of each node's eligible elements masked.
        hops: the encoder's message-passing layers L.
        baseline: the node-feature masking value (0: a word absent); edges are removed.

    Returns:
        the tidy rows (module docstring) and, per ``"<target>/<method>"``, the first node's attributions on the whole
        graph (``[N, F]`` or ``[E]``, 0 outside its subgraph; for a figure).
    """
    unknown = sorted(set(explainers) - set(TARGETS))
    if unknown or not explainers:
        raise ValueError(f"graph_consistency explainers must be keyed by target in {list(TARGETS)}, got {sorted(explainers)}")
    ids = torch.as_tensor(nodes, dtype=torch.int64).reshape(-1)
    if len(ids) == 0:
        raise ValueError("graph_consistency needs at least one explained node")
    fractions = [percent_to_fraction(p) for p in percents]
    shifts: dict[tuple[str, str, float], list[Tensor]] = {}
    first: dict[str, Tensor] = {}
    num_nodes, device = len(x), x.device
    with eval_mode(encoder):
        for node in tqdm(ids.tolist(), desc="graph consistency", leave=False):
            sub = computation_subgraph(edge_index, num_nodes, node, hops)
            sub_x, sub_edges = x[sub.nodes.to(device)], sub.edge_index.to(device)
            center = torch.tensor([sub.center], device=device)
            with torch.no_grad():
                reference = encoder(sub_x, sub_edges)[sub.center]
            for target, named in explainers.items():
                if target == "node_features":
                    inputs, forward = sub_x.unsqueeze(0), NodeRepresentation(encoder, sub_edges)
                    eligible, base = (sub.features[:, None] & (sub_x.cpu() != baseline)).unsqueeze(0), baseline
                else:
                    inputs = torch.ones(1, sub_edges.shape[1], device=device)
                    forward, eligible, base = EdgeRepresentation(encoder, sub_x, sub_edges), sub.edges.unsqueeze(0), 0.0
                for name, make in named.items():
                    kwargs = {**attribute_kwargs.get(name, {}), "additional_forward_args": (center,)}
                    scores = attribute_features(_node_explainer(make, forward, node), inputs, base, kwargs).cpu()
                    check_finite(f"{target} attributions by {name}", scores)
                    if f"{target}/{name}" not in first:
                        whole = torch.zeros(x.shape if target == "node_features" else edge_index.shape[1:])
                        if target == "node_features":
                            whole[sub.nodes] = scores[0]
                        else:
                            whole[sub.edge_ids] = scores[0]
                        first[f"{target}/{name}"] = whole
                    masks = top_masks(scores[0], eligible[0], fractions, f"{target} of node {node}")
                    for p, mask in zip(percents, masks):
                        mask = mask.to(device)
                        if target == "node_features":
                            shift = _shift(encoder, reference, sub_x.masked_fill(mask, baseline), sub_edges, sub.center)
                        else:
                            shift = _shift(encoder, reference, sub_x, remove_edges(sub_edges, mask), sub.center)
                        shifts.setdefault((target, name, float(p)), []).append(shift)
    rows = [{**tidy_row(name, p, "representation_shift", torch.cat(parts)), "target": target}
            for (target, name, p), parts in shifts.items()]
    log.info("graph consistency: %d nodes, %d rows", len(ids), len(rows))
    return check_finite("graph_consistency", pd.DataFrame(rows)), first
