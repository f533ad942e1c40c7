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
ranking. Nodes are explained one at a time (an attribution over the whole Cora feature matrix is 2708 x 1433
floats per node). A :class:`~labelfree.attribution.features.RandomAttribution` draws each node's ranking from its
own generator (seed + node id), so the random rankings of different nodes are independent.

Rows: ``method, level, metric, value, std, n, target`` with ``target`` ``node_features`` or ``edges``, level = p (%),
metric = representation_shift, std over the explained nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from captum.attr import Attribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from labelfree.attribution.batched import attribute_features
from labelfree.attribution.features import RandomAttribution
from labelfree.guards import check_finite
from labelfree.metrics import percent_to_fraction
from labelfree.metrics.structured import (
    graph_representation_shift,
    k_hop_nodes,
    mask_node_features,
    remove_edges,
    top_edge_mask,
    top_node_feature_mask,
)
from labelfree.modules import eval_mode
from labelfree.protocols.consistency import tidy_row

log = logging.getLogger(__name__)

__all__ = ["TARGETS", "eligible_counts", "eligible_edges", "eligible_node_features", "explainable", "graph_consistency"]

#: what is masked: node features (set to the baseline) or edges (removed)
TARGETS = ("node_features", "edges")


def eligible_node_features(x: Tensor, edge_index: Tensor, node: int, hops: int, baseline: float = 0.0) -> Tensor:
    """Boolean ``[1, N, F]``: the entries of node ``node``'s ``hops``-hop computation subgraph that differ from
    ``baseline``."""
    return k_hop_nodes(edge_index, [node], len(x), hops)[:, :, None] & (x.cpu() != baseline).unsqueeze(0)


def eligible_edges(edge_index: Tensor, num_nodes: int, node: int, hops: int) -> Tensor:
    """Boolean ``[1, E]``: the directed edges into node ``node``'s ``(hops - 1)``-hop neighbourhood."""
    return k_hop_nodes(edge_index, [node], num_nodes, hops - 1)[:, edge_index[1].cpu()]


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


def _node_explainer(explainer: Attribution, node: int) -> Attribution:
    """The explainer used for one node: a random ranking gets its own seed per node."""
    if isinstance(explainer, RandomAttribution):
        return RandomAttribution(explainer.forward_func, seed=explainer.seed + node)
    return explainer


def graph_consistency(
    encoder: nn.Module,
    x: Tensor,
    edge_index: Tensor,
    nodes: Tensor | Sequence[int],
    explainers: Mapping[str, Mapping[str, Attribution]],
    attribute_kwargs: Mapping[str, Mapping[str, Any]],
    percents: Sequence[float],
    hops: int,
    baseline: float = 0.0,
) -> tuple[pd.DataFrame, dict[str, Tensor]]:
    """Representation shift per (target, method, p) over the explained ``nodes``.

    Args:
        encoder: ``encoder(x [N, F], edge_index [2, E], edge_weight [E] | None) -> [N, d]`` (eval mode).
        x, edge_index: the graph the encoder passes messages on.
        nodes: explained node ids ``[n]`` (each must be :func:`explainable` at the smallest p).
        explainers: per target (``node_features``, ``edges``), name -> label-free explainer built on
            ``NodeRepresentation(encoder, edge_index)`` resp. ``EdgeRepresentation(encoder, x, edge_index)``
            (:class:`~labelfree.attribution.inputs.LabelFreeForwardArgs`, or a ``RandomAttribution``).
        attribute_kwargs: name -> keyword arguments of ``attribute`` (``n_steps``, ``internal_batch_size``, ...).
        percents: p, % of each node's eligible elements masked.
        hops: the encoder's message-passing layers L.
        baseline: the node-feature masking value (0: a word absent); edges are removed.

    Returns:
        the tidy rows (module docstring) and, per ``"<target>/<method>"``, the first node's attributions
        (``[N, F]`` or ``[E]``, for a figure).
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
            node_id = torch.tensor([node], device=device)
            for target, named in explainers.items():
                if target == "node_features":
                    inputs, eligible = x.unsqueeze(0), eligible_node_features(x, edge_index, node, hops, baseline)
                    base = baseline
                else:
                    inputs = torch.ones(1, edge_index.shape[1], device=device)
                    eligible, base = eligible_edges(edge_index, num_nodes, node, hops), 0.0
                for name, explainer in named.items():
                    kwargs = {**attribute_kwargs.get(name, {}), "additional_forward_args": (node_id,)}
                    scores = attribute_features(_node_explainer(explainer, node), inputs, base, kwargs).cpu()
                    check_finite(f"{target} attributions by {name}", scores)
                    first.setdefault(f"{target}/{name}", scores[0])
                    for p, fraction in zip(percents, fractions):
                        if target == "node_features":
                            mask = top_node_feature_mask(scores, fraction, eligible)
                            shift = graph_representation_shift(
                                encoder, x, edge_index, [node], masked_x=mask_node_features(x, mask.to(device), baseline))
                        else:
                            mask = top_edge_mask(scores, fraction, eligible)[0].to(device)
                            shift = graph_representation_shift(
                                encoder, x, edge_index, [node], masked_edge_index=[remove_edges(edge_index, mask)])
                        shifts.setdefault((target, name, float(p)), []).append(shift)
    rows = [{**tidy_row(name, p, "representation_shift", torch.cat(parts)), "target": target}
            for (target, name, p), parts in shifts.items()]
    log.info("graph consistency: %d nodes, %d rows", len(ids), len(rows))
    return check_finite("graph_consistency", pd.DataFrame(rows)), first
