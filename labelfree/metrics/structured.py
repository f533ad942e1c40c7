"""Consistency of feature importance for structured inputs: token ids, node features and edges of a graph.

Each mask selects, per explained example, the top ``fraction`` of its *eligible* elements by |attribution|:
``k_i = round(fraction * n_eligible_i)`` (ties broken by position, lower first). A fraction > 0 that selects
nothing for some example (``k_i`` rounds to 0) is an error naming the fraction, the example and its count, as
in :func:`labelfree.metrics.masks.top_feature_mask`; ``fraction=0`` selects nothing.

* **Tokens** (:func:`top_token_mask`, :func:`mask_tokens`): token ids ``[n, T]``; eligible = the tokens whose id
  is not in ``ignore_ids`` (padding, and special tokens such as [CLS] / [SEP] if listed); importance =
  |per-token attribution| (embedding attributions ``[n, T, E]`` are summed over E first, signed, as
  :func:`labelfree.attribution.inputs.token_attributions` does). Selected tokens are replaced by a baseline id
  ([PAD] or [MASK]).
* **Node features** (:func:`top_node_feature_mask`, :func:`mask_node_features`): the explanation of node i is an
  attribution over the whole feature matrix, ``[N, F]`` (so ``[n, N, F]`` for n explained nodes). Eligible
  entries are ``candidates`` (default: all N x F). Recommended, and what the studies should use: the entries of
  the node's L-hop computation subgraph (:func:`k_hop_nodes` with L = the encoder's number of message-passing
  layers) that differ from the baseline (``x != 0`` for a 0 baseline: masking an entry already at the baseline
  changes nothing), i.e. ``candidates = k_hop_nodes(...)[:, :, None] & (x != 0)``. The selected entries of node
  i's copy of the feature matrix are set to the baseline (0), giving one masked matrix per explained node.
* **Edges** (:func:`top_edge_mask`, :func:`remove_edges`): attributions per directed edge ``[n, E]``; eligible =
  ``candidates`` (default all E; for an L-layer encoder the edges that reach node i are those into its
  (L-1)-hop neighbourhood: ``k_hop_nodes(edge_index, nodes, N, L - 1)[:, edge_index[1]]``). Selected edges
  are dropped, returning a new ``edge_index`` (``undirected=True`` also drops the reverse of every dropped edge).

Representation shift: for tokens :func:`labelfree.metrics.representation_shift` applies as is (tokens in,
masked tokens in); for graphs :func:`graph_representation_shift` compares node i's row before and after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from numbers import Real

import torch
from torch import Tensor, nn

from labelfree.metrics.masks import mask_features
from labelfree.modules import eval_mode

__all__ = [
    "graph_representation_shift",
    "k_hop_nodes",
    "mask_node_features",
    "mask_tokens",
    "remove_edges",
    "top_edge_mask",
    "top_node_feature_mask",
    "top_token_mask",
]


def _check_fraction(fraction: float) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r} (for a percentage p use "
                         "percent_to_fraction(p))")


def _top_among(importance: Tensor, eligible: Tensor, fraction: float, what: str) -> Tensor:
    """Boolean ``[n, m]``: the ``round(fraction * eligible_i.sum())`` eligible entries of each row with the largest
    ``importance`` (ties: lower position first)."""
    _check_fraction(fraction)
    if torch.isnan(importance).any():
        raise ValueError("attributions contain NaN; importances cannot be ranked")
    counts = eligible.sum(dim=1)
    k = torch.round(fraction * counts.double()).long()  # round half to even, like Python's round
    empty = ((k == 0) & (fraction > 0)).nonzero().flatten()
    if len(empty):
        first = int(empty[0])
        raise ValueError(f"the mask selects no {what} for {len(empty)} example(s): fraction {fraction:g} of "
                         f"{int(counts[first])} eligible {what}(s) rounds to 0 (first: example {first}); use a larger "
                         "fraction or leave such examples out")
    scores = importance.masked_fill(~eligible, float("-inf"))
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                             .expand_as(order).contiguous())
    return (ranks < k.unsqueeze(1)) & eligible


def _candidates(candidates: Tensor | None, shape: torch.Size, name: str) -> Tensor:
    """``candidates`` broadcast to the attributions' ``shape`` (bool), all True when None."""
    if candidates is None:
        return torch.ones(shape, dtype=torch.bool)
    if candidates.dtype != torch.bool:
        raise ValueError(f"{name} must be a boolean tensor, got dtype {candidates.dtype}")
    try:
        return candidates.expand(shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(candidates.shape)} does not broadcast to the attributions' "
                         f"shape {tuple(shape)}") from None


def top_token_mask(attributions: Tensor, tokens: Tensor, fraction: float,
                   ignore_ids: int | Sequence[int] = 0) -> Tensor:
    """Boolean ``[n, T]``: each text's top ``fraction`` of its non-ignored tokens by |token attribution|.

    Args:
        attributions: ``[n, T]`` per-token, or ``[n, T, E]`` embedding attributions (summed over E).
        tokens: token ids ``[n, T]``.
        fraction: in [0, 1]; ``round(fraction * n_tokens_i)`` tokens per text, ``n_tokens_i`` its tokens whose id
            is not in ``ignore_ids``.
        ignore_ids: padding id(s) and other special ids never selected (default 0, the usual [PAD]).
    """
    if attributions.dim() == 3:
        attributions = attributions.sum(dim=-1)
    if tokens.dim() != 2 or attributions.shape != tokens.shape:
        raise ValueError(f"expected attributions [n, T] or [n, T, E] and tokens [n, T], got "
                         f"{tuple(attributions.shape)} and {tuple(tokens.shape)}")
    ignore = torch.as_tensor(ignore_ids, dtype=tokens.dtype, device=tokens.device).reshape(-1)
    eligible = ~torch.isin(tokens, ignore)
    return _top_among(attributions.abs(), eligible, fraction, "token")


def mask_tokens(tokens: Tensor, mask: Tensor, baseline_id: int) -> Tensor:
    """``tokens [n, T]`` with the entries where ``mask`` is True replaced by ``baseline_id`` ([PAD] or [MASK])."""
    if mask.dtype != torch.bool or mask.shape != tokens.shape:
        raise ValueError(f"mask must be boolean and shaped like tokens {tuple(tokens.shape)}, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    return tokens.masked_fill(mask, int(baseline_id))


def k_hop_nodes(edge_index: Tensor, nodes: Tensor | Sequence[int], num_nodes: int, hops: int) -> Tensor:
    """Boolean ``[n, N]``: the nodes from which a path of at most ``hops`` edges (source -> target) reaches each
    node of ``nodes``: the computation subgraph of a ``hops``-layer message-passing encoder."""
    if hops < 0:
        raise ValueError(f"hops must be >= 0, got {hops}")
    ids = torch.as_tensor(nodes, dtype=torch.int64).reshape(-1)
    reach = torch.zeros(len(ids), num_nodes, dtype=torch.bool)
    reach[torch.arange(len(ids)), ids] = True
    source, target = edge_index[0].cpu(), edge_index[1].cpu()
    for _ in range(hops):
        incoming = torch.zeros(len(ids), num_nodes).index_add_(1, source, reach[:, target].float())
        reach = reach | (incoming > 0)
    return reach


def top_node_feature_mask(attributions: Tensor, fraction: float, candidates: Tensor | None = None) -> Tensor:
    """Boolean ``[n, N, F]``: for each explained node, the top ``fraction`` of its eligible feature-matrix entries
    by |attribution| (see the module docstring for the definition and the recommended ``candidates``).

    Args:
        attributions: ``[n, N, F]``, node i's explanation over the whole feature matrix.
        fraction: in [0, 1].
        candidates: boolean, broadcastable to ``[n, N, F]`` (``[N, F]`` shared, or ``[n, N, F]``); None: all.
    """
    if attributions.dim() != 3:
        raise ValueError(f"expected node-feature attributions [n, N, F], got {tuple(attributions.shape)}")
    eligible = _candidates(candidates, attributions.shape, "candidates").to(attributions.device)
    n = len(attributions)
    mask = _top_among(attributions.abs().reshape(n, -1), eligible.reshape(n, -1), fraction, "node-feature entry")
    return mask.reshape(attributions.shape)


def mask_node_features(x: Tensor, mask: Tensor, baseline: float | Tensor = 0.0) -> Tensor:
    """One masked copy of ``x [N, F]`` per explained node: ``[n, N, F]``, the entries where ``mask [n, N, F]`` is
    True set to ``baseline`` (a scalar or a tensor broadcastable to ``[N, F]``)."""
    if mask.dim() != 3 or mask.shape[1:] != x.shape:
        raise ValueError(f"mask must be [n, *x.shape] = [n, {', '.join(map(str, x.shape))}], got {tuple(mask.shape)}")
    return mask_features(x.unsqueeze(0).expand(mask.shape), mask, baseline)


def top_edge_mask(attributions: Tensor, fraction: float, candidates: Tensor | None = None) -> Tensor:
    """Boolean ``[n, E]``: for each explained node, the top ``fraction`` of its eligible edges by |attribution|.

    Args:
        attributions: ``[n, E]``, one per directed edge of ``edge_index``.
        fraction: in [0, 1].
        candidates: boolean, broadcastable to ``[n, E]``; None: every edge.
    """
    if attributions.dim() != 2:
        raise ValueError(f"expected edge attributions [n, E], got {tuple(attributions.shape)}")
    eligible = _candidates(candidates, attributions.shape, "candidates").to(attributions.device)
    return _top_among(attributions.abs(), eligible, fraction, "edge")


def remove_edges(edge_index: Tensor, drop: Tensor, undirected: bool = False) -> Tensor:
    """A new ``edge_index [2, E']`` without the edges where ``drop [E]`` is True (one explained node's row of
    :func:`top_edge_mask`); ``undirected=True`` also drops the reverse (v, u) of every dropped (u, v)."""
    if drop.dtype != torch.bool or drop.shape != edge_index.shape[1:]:
        raise ValueError(f"drop must be a boolean [E] = [{edge_index.shape[1]}], got {drop.dtype} "
                         f"{tuple(drop.shape)}")
    if undirected and drop.any():
        size = int(edge_index.max()) + 1
        dropped = edge_index[1, drop] * size + edge_index[0, drop]  # keys of the reverse edges
        drop = drop | torch.isin(edge_index[0] * size + edge_index[1], dropped)
    return edge_index[:, ~drop]


def graph_representation_shift(
    encoder: Callable[..., Tensor],
    x: Tensor,
    edge_index: Tensor,
    nodes: Tensor | Sequence[int],
    masked_x: Tensor | None = None,
    masked_edge_index: Sequence[Tensor] | None = None,
) -> Tensor:
    """Per explained node i: ``||f(X, A)_i - f(X'_i, A'_i)_i||^2`` (higher is better), ``Tensor[n]`` on the CPU.

    Args:
        encoder: ``encoder(x [N, F], edge_index [2, E]) -> [N, *latent]`` (an ``nn.Module`` runs in eval mode,
            every submodule's flag restored).
        x, edge_index: the graph.
        nodes: the explained node ids ``[n]``.
        masked_x: ``[n, N, F]`` (:func:`mask_node_features`), node i's masked features; None: ``x``.
        masked_edge_index: n edge indices (:func:`remove_edges`), node i's graph; None: ``edge_index``.
    """
    ids = torch.as_tensor(nodes, dtype=torch.int64).reshape(-1)
    for name, value in (("masked_x", masked_x), ("masked_edge_index", masked_edge_index)):
        if value is not None and len(value) != len(ids):
            raise ValueError(f"{name} must hold one entry per explained node ({len(ids)}), got {len(value)}")
    context = eval_mode(encoder) if isinstance(encoder, nn.Module) else contextlib.nullcontext()
    with context, torch.no_grad():
        reference = encoder(x, edge_index)[ids]
        shifted = [
            encoder(x if masked_x is None else masked_x[j],
                    edge_index if masked_edge_index is None else masked_edge_index[j])[int(node)]
            for j, node in enumerate(ids)
        ]
    if not shifted:
        return torch.zeros(0)
    return (reference - torch.stack(shifted)).reshape(len(ids), -1).pow(2).sum(dim=1).cpu()
