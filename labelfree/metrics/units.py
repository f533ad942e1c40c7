"""Saliency maps of latent units (disentangled VAEs, Crabbé & van der Schaar, 2022).

``maps`` are per-unit saliency maps ``[n, d, *feature_shape]``: entry (i, j) is the map of latent unit
j for example i, |mu_j(x_i) * a(mu_j, x_i)| (non-negative). Features are flattened (channels included).
Per-example values of the correlations and the cosine skip undefined pairs (a constant map); per-pixel
values of the entropy and the active-unit count are NaN where the pixel carries no saliency at all
(sum over units = 0; with a black baseline every black pixel), and summaries leave those out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from labelfree.metrics.correlation import _average_ranks

__all__ = [
    "UNIT_CORRELATIONS",
    "unit_correlation",
    "pooled_unit_correlation",
    "unit_cosine",
    "unit_shares",
    "unit_entropy",
    "active_units",
]

UNIT_CORRELATIONS = ("pearson", "spearman")


def _unit_maps(maps: Tensor) -> Tensor:
    """``[n, d, *feature_shape]`` -> ``[n, d, P]`` float64, checked (d >= 2 units, P >= 2 features, no NaN)."""
    if maps.dim() < 3:
        raise ValueError(
            f"unit saliency maps must have shape [n, d, *feature_shape] (n examples, d latent units), got shape "
            f"{tuple(maps.shape)}"
        )
    n, d = maps.shape[:2]
    flat = maps.reshape(n, d, -1).double()
    if d < 2:
        raise ValueError(f"comparing the maps of latent units needs d >= 2 units, got {d}")
    if flat.shape[2] < 2:
        raise ValueError(f"each unit map needs at least 2 features, got {flat.shape[2]}")
    if torch.isnan(flat).any():
        raise ValueError("unit saliency maps contain NaN")
    return flat


def _mean_off_diagonal_rows(matrices: Tensor) -> Tensor:
    """``[n, d, d] -> [n]``: the mean of each matrix's off-diagonal entries, NaN entries left out."""
    d = matrices.shape[1]
    off = ~torch.eye(d, dtype=torch.bool, device=matrices.device)
    return matrices[:, off].nanmean(dim=1)


def _batched_pearson(flat: Tensor) -> Tensor:
    """``[n, d, P] -> [n, d, d]``: Pearson correlation between the d rows of every example (NaN: constant row)."""
    centred = flat - flat.mean(dim=2, keepdim=True)
    norms = centred.norm(dim=2)
    return ((centred @ centred.transpose(1, 2)) / (norms[:, :, None] * norms[:, None, :])).clamp(-1.0, 1.0)


def _ranked(flat: Tensor) -> Tensor:
    """Average ranks of every row of ``[n, d, P]`` along P (ties share their average rank)."""
    n, d, p = flat.shape
    return _average_ranks(flat.reshape(n * d, p)).reshape(n, d, p)


def unit_correlation(maps: Tensor, method: str = "pearson") -> Tensor:
    """Per example, the mean correlation between the saliency maps of distinct latent units.

    For example i, r_jk = corr(S_ij, S_ik) over the P features (Pearson, or Spearman = Pearson of average
    ranks), and the value is mean_{j != k} r_jk. A constant map (e.g. a unit whose mu_j(x) = 0) has no
    defined correlation; its pairs are left out (NaN when no pair is defined).

    Args:
        maps: ``[n, d, *feature_shape]``, d >= 2.
        method: ``pearson`` or ``spearman``.

    Returns:
        ``Tensor[n]`` (float64). Identical unit maps give 1.
    """
    if method not in UNIT_CORRELATIONS:
        raise ValueError(f"Unknown correlation {method!r}; accepted: {list(UNIT_CORRELATIONS)}")
    flat = _unit_maps(maps)
    if method == "spearman":
        flat = _ranked(flat)
    return _mean_off_diagonal_rows(_batched_pearson(flat))


def pooled_unit_correlation(maps: Tensor, method: str = "pearson") -> float:
    """The correlation between unit maps pooled over examples (the authors' code): each unit's maps of all
    ``n`` examples are flattened into one vector of n * P entries, and the mean off-diagonal entry of the
    d x d correlation matrix is returned (pairs with a constant unit left out)."""
    if method not in UNIT_CORRELATIONS:
        raise ValueError(f"Unknown correlation {method!r}; accepted: {list(UNIT_CORRELATIONS)}")
    flat = _unit_maps(maps)
    per_unit = flat.transpose(0, 1).reshape(1, flat.shape[1], -1)
    if method == "spearman":
        per_unit = _ranked(per_unit)
    return float(_mean_off_diagonal_rows(_batched_pearson(per_unit))[0])


def unit_cosine(maps: Tensor) -> Tensor:
    """Per example, the mean cosine similarity <S_ij, S_ik> / (|S_ij| |S_ik|) over pairs of distinct units j != k.

    ``maps [n, d, *feature_shape]`` -> ``Tensor[n]`` (float64); pairs with an all-zero map are left out.
    """
    flat = _unit_maps(maps)
    norms = flat.norm(dim=2)
    cosine = (flat @ flat.transpose(1, 2)) / (norms[:, :, None] * norms[:, None, :])
    return _mean_off_diagonal_rows(cosine)


def unit_shares(maps: Tensor) -> Tensor:
    """Each unit's share of every feature's saliency: q_j(i, p) = S_ij(p) / sum_k S_ik(p).

    ``maps [n, d, *feature_shape]`` (non-negative) -> ``Tensor[n, P, d]`` (float64), the distribution over
    units of each feature; NaN for a feature that carries no saliency (sum over units = 0).
    """
    flat = _unit_maps(maps)
    if (flat < 0).any():
        raise ValueError("unit saliency maps must be non-negative (take |mu_j(x) * attribution|)")
    per_feature = flat.transpose(1, 2)
    total = per_feature.sum(dim=2, keepdim=True)
    return torch.where(total > 0, per_feature / total, torch.full_like(per_feature, math.nan))


def unit_entropy(maps: Tensor) -> Tensor:
    """Entropy (natural log) of the distribution over units of every feature's saliency (:func:`unit_shares`).

    H(i, p) = -sum_j q_j log q_j, between 0 (one unit carries the feature) and log d (all units share it
    equally). ``Tensor[n, P]`` (float64), NaN for features without saliency.
    """
    shares = unit_shares(maps)
    return 0.0 - torch.special.xlogy(shares, shares).sum(dim=2)  # (0 - x: no negative zeros)


def active_units(maps: Tensor) -> Tensor:
    """Number of "active" units of every feature: units whose share of its saliency exceeds 1/d (strictly).

    ``Tensor[n, P]`` (float64): between 0 (every unit exactly 1/d) and d - 1; 1 when one unit carries the
    feature. NaN for features without saliency.
    """
    shares = unit_shares(maps)
    count = (shares > 1.0 / shares.shape[2]).sum(dim=2).double()
    return torch.where(torch.isnan(shares[:, :, 0]), torch.full_like(count, math.nan), count)
