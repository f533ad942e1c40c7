"""Agreement between explanations: Pearson / Spearman correlation between flattened importance arrays
(:func:`pearson_matrix`, :func:`spearman_matrix`), averaged over off-diagonal pairs (:func:`mean_off_diagonal`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["pearson_matrix", "spearman_matrix", "mean_off_diagonal"]


def _flatten_explanations(explanations: Tensor) -> Tensor:
    if explanations.dim() < 2:
        raise ValueError(
            f"explanations must have shape [k, ...] (k explanations, each flattened), got shape "
            f"{tuple(explanations.shape)}"
        )
    flat = explanations.reshape(len(explanations), -1)
    if flat.shape[1] < 2:
        raise ValueError(f"each explanation needs at least 2 entries to correlate, got {flat.shape[1]}")
    return flat.double()


def _pearson_rows(flat: Tensor) -> Tensor:
    centred = flat - flat.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    # a constant row has zero norm: 0 / 0 = NaN, the correlation is undefined
    return ((centred @ centred.T) / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)


def pearson_matrix(explanations: Tensor) -> Tensor:
    """Pearson correlation between every pair of ``k`` flattened explanations.

    Args:
        explanations: ``[k, ...]``; explanation i is ``explanations[i]`` flattened (e.g. the
            saliency maps of one model over the whole test set, or of one latent unit).

    Returns:
        ``Tensor[k, k]`` (float64): r_ij = cov(e_i, e_j) / (std(e_i) std(e_j)). A constant
        explanation (e.g. the all-zero map of a collapsed VAE unit) has no defined correlation:
        its row and column are NaN (the diagonal too). NaN entries propagate.
    """
    return _pearson_rows(_flatten_explanations(explanations))


def _average_ranks(flat: Tensor) -> Tensor:
    """Ranks 1..N of every row, tied values sharing their average rank (rows with NaN: NaN)."""
    k, n = flat.shape
    sorted_values, order = flat.sort(dim=1)
    starts_group = torch.ones_like(sorted_values, dtype=torch.bool)
    starts_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    # a group id unique across rows, so one scatter handles every row
    group = starts_group.long().cumsum(dim=1) - 1 + n * torch.arange(k, device=flat.device)[:, None]
    positions = torch.arange(1, n + 1, dtype=flat.dtype, device=flat.device).expand(k, n)
    sums = torch.zeros(k * n, dtype=flat.dtype, device=flat.device).scatter_add_(
        0, group.reshape(-1), positions.reshape(-1)
    )
    counts = torch.zeros(k * n, dtype=flat.dtype, device=flat.device).scatter_add_(
        0, group.reshape(-1), torch.ones(k * n, dtype=flat.dtype, device=flat.device)
    )
    # a tie group occupies consecutive sorted positions, so its mean position is its average rank
    mean_rank = sums[group] / counts[group]
    ranks = torch.empty_like(flat).scatter_(1, order, mean_rank)
    ranks[torch.isnan(flat).any(dim=1)] = math.nan
    return ranks


def spearman_matrix(explanations: Tensor) -> Tensor:
    """Spearman rank correlation between every pair of ``k`` flattened explanations.

    The Pearson correlation (:func:`pearson_matrix`) of the ranks, tied values receiving their
    average rank (as ``scipy.stats.spearmanr``). Invariant to strictly increasing transforms of an
    explanation. A constant explanation, or one containing NaN, gives NaN rows and columns.

    Returns:
        ``Tensor[k, k]`` (float64).
    """
    return _pearson_rows(_average_ranks(_flatten_explanations(explanations)))


def mean_off_diagonal(matrix: Tensor, skip_nan: bool = False) -> float:
    """Mean of the off-diagonal entries (i != j) of a square ``[k, k]`` matrix, k >= 2.

    The paper's summary of a correlation matrix (average over pairs of models or latent units).
    With ``skip_nan=False`` a NaN entry (a constant explanation) makes the result NaN; with
    ``skip_nan=True`` NaN entries are left out (NaN if all are).
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square [k, k], got shape {tuple(matrix.shape)}")
    k = matrix.shape[0]
    if k < 2:
        raise ValueError(f"a {k}x{k} matrix has no off-diagonal entries; need k >= 2")
    off_diagonal = matrix[~torch.eye(k, dtype=torch.bool, device=matrix.device)].double()
    return float(off_diagonal.nanmean() if skip_nan else off_diagonal.mean())

