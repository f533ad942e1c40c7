"""Link-prediction splits of a graph: held-out edges and fixed negative pairs, drawn from a seeded generator.

:func:`split_edges` follows the usual VGAE protocol (Kipf & Welling, 2016; PyG's ``RandomLinkSplit``): the
undirected edges are shuffled and a ``val_fraction`` / ``test_fraction`` share held out; message passing uses
the remaining (training) edges only, in both directions. Validation and test negatives are node pairs that are
not edges of the full graph (and not self-loops), as many as the held-out positives. Every node also gets
``deg_train(i)`` fixed negative partners (uniform over the other nodes; a partner may, rarely, be a neighbour:
Cora's density is 0.14 %), which the per-node loss of :mod:`labelfree.models.vgae` uses, so that loss is
deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["EdgeSplit", "padded_partners", "split_edges"]


@dataclass(frozen=True)
class EdgeSplit:
    """Edges of one graph split for link prediction (all ``int64``).

    Attributes:
        train_edge_index: ``[2, 2 * E_train]``, both directions of every training edge (message passing).
        val_pos, val_neg, test_pos, test_neg: ``[2, k]`` undirected node pairs (one direction each).
        node_negatives: ``[2, 2 * E_train]``, one fixed negative pair ``(i, j)`` per directed training edge
            leaving ``i`` (so node i has ``deg_train(i)`` of them), sorted by source.
    """

    train_edge_index: Tensor
    val_pos: Tensor
    val_neg: Tensor
    test_pos: Tensor
    test_neg: Tensor
    node_negatives: Tensor


def _undirected(edge_index: Tensor) -> Tensor:
    """``[2, E_u]``: each undirected edge once, as (min, max), sorted."""
    pairs = torch.stack([edge_index.min(0).values, edge_index.max(0).values])
    pairs = pairs[:, pairs[0] != pairs[1]]
    return torch.unique(pairs, dim=1)


def _both_directions(pairs: Tensor, num_nodes: int) -> Tensor:
    """``[2, 2k]`` sorted by (source, target)."""
    edges = torch.cat([pairs, pairs.flip(0)], dim=1)
    order = torch.argsort(edges[0] * num_nodes + edges[1])
    return edges[:, order]


def _non_edges(count: int, num_nodes: int, forbidden: Tensor, generator: torch.Generator) -> Tensor:
    """``[2, count]`` distinct undirected pairs (min, max) that are neither self-loops nor in ``forbidden``
    (keys ``min * N + max``), drawn uniformly (in the order drawn)."""
    blocked = set(forbidden.tolist())
    found: list[int] = []
    while len(found) < count:
        draw = torch.randint(0, num_nodes, (2, 2 * count + 16), generator=generator)
        low, high = draw.min(0).values, draw.max(0).values
        for a, b in zip(low.tolist(), high.tolist()):
            key = a * num_nodes + b
            if a != b and key not in blocked:
                blocked.add(key)
                found.append(key)
    keys = torch.tensor(found[:count], dtype=torch.int64)
    return torch.stack([keys // num_nodes, keys % num_nodes])


def split_edges(edge_index: Tensor, num_nodes: int, val_fraction: float, test_fraction: float,
                seed: int) -> EdgeSplit:
    """Hold out ``val_fraction`` and ``test_fraction`` of the undirected edges of ``edge_index [2, E]``
    (``round(fraction * E_u)`` each), draw their negatives and every node's fixed negatives (see the module
    docstring); deterministic for a seed."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    generator = torch.Generator().manual_seed(int(seed))
    pairs = _undirected(edge_index)
    n_val, n_test = round(val_fraction * pairs.shape[1]), round(test_fraction * pairs.shape[1])
    if pairs.shape[1] - n_val - n_test < 1:
        raise ValueError(f"the graph has {pairs.shape[1]} undirected edges: none left for training")
    pairs = pairs[:, torch.randperm(pairs.shape[1], generator=generator)]
    val_pos, test_pos = pairs[:, :n_val], pairs[:, n_val:n_val + n_test]
    train = _both_directions(pairs[:, n_val + n_test:], num_nodes)
    forbidden = pairs[0] * num_nodes + pairs[1]
    negatives = _non_edges(n_val + n_test, num_nodes, forbidden, generator)
    partners = (train[0] + torch.randint(1, num_nodes, (train.shape[1],), generator=generator)) % num_nodes
    return EdgeSplit(train_edge_index=train, val_pos=val_pos, val_neg=negatives[:, :n_val],
                     test_pos=test_pos, test_neg=negatives[:, n_val:],
                     node_negatives=torch.stack([train[0], partners]))


def padded_partners(pairs: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Each node's partners in ``pairs [2, k]`` (grouped by source) as a padded table: ``partners int64 [N, D]``
    and ``mask bool [N, D]`` (D = the largest count, at least 1; padding points at node 0 and is masked)."""
    source, target = pairs
    counts = torch.bincount(source, minlength=num_nodes)
    width = max(int(counts.max()) if len(counts) else 0, 1)
    order = torch.argsort(source, stable=True)
    source, target = source[order], target[order]
    offsets = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(source)) - offsets[source]
    partners = torch.zeros(num_nodes, width, dtype=torch.int64)
    mask = torch.zeros(num_nodes, width, dtype=torch.bool)
    partners[source, slot] = target
    mask[source, slot] = True
    return partners, mask
