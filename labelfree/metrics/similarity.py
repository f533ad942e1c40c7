"""Consistency of example importance: the share of a test example's M most (and M least) important
training examples that carry its label (:func:`similarity_rates`, :func:`similarity_rate_curves`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from labelfree.metrics._rows import _by_rows, _numpy_friendly

__all__ = ["similarity_rates", "similarity_rate_curves"]


def similarity_rates(
    scores: Tensor, test_labels: Tensor, train_labels: Tensor, m: int
) -> tuple[Tensor, Tensor]:
    """Similarity rates of the ``m`` most and ``m`` least important training examples.

    For each test example i, among the ``m`` training examples with the highest ``scores[i]`` the
    fraction whose label equals ``test_labels[i]`` (``similarity_most``, higher is better), and the
    same among the ``m`` lowest-scored (``similarity_least``, lower is better). Labels are used
    here only, never to compute the scores. Ties in scores are broken arbitrarily.
    For several values of M use :func:`similarity_rate_curves` (one sort for all of them).

    Args:
        scores: ``[n_test, n_train]`` example importances (rows = test examples).
        test_labels: ``[n_test]``.
        train_labels: ``[n_train]``.
        m: number of training examples kept, ``1 <= m <= n_train`` (see :func:`percent_to_count`).

    Returns:
        ``(similarity_most, similarity_least)``, each a float ``Tensor[n_test]`` on ``scores``' device.
    """
    most, least = similarity_rate_curves(scores, test_labels, train_labels, [m])
    return most[0], least[0]


_COMPARISONS_PER_BLOCK = 1 << 22  # bounds the [rows, columns, len(ms)] comparison block (4 MiB of bools)


def _rate_counts_by_threshold(
    scores: np.ndarray, test_labels: np.ndarray, train_labels: np.ndarray, ms: Sequence[int]
) -> tuple[Tensor, Tensor] | None:
    """Label matches among each row's top-m and bottom-m entries, ``(most, least)``, each ``[len(ms), n_test]``,
    from order statistics instead of an argsort; ``None`` when a tie straddles a cut-off.

    Sorting values only (no indices) is 3x faster than ``argsort`` with numpy's SIMD sort. Without ties at
    the cut-offs, the top m of row i are exactly the entries ``>= t_i(m)``, its m-th largest value (and
    the bottom m those ``<= b_i(m)``); the label matches among them are counted where they can occur,
    in the block of rows and columns of each label.
    """
    n_test, n_train = scores.shape
    ordered = _by_rows(lambda rows: np.sort(rows, axis=1), scores)
    m = np.asarray(ms, dtype=np.int64)
    inner = m[m < n_train]
    if np.any(ordered[:, n_train - inner] == ordered[:, n_train - inner - 1]) or np.any(
        ordered[:, inner - 1] == ordered[:, inner]
    ):
        return None  # which of the tied entries count is arbitrary: the argsort path decides
    top = np.ascontiguousarray(ordered[:, n_train - m].T)  # [len(ms), n_test]: the m-th largest of each row
    bottom = np.ascontiguousarray(ordered[:, m - 1].T)  # the m-th smallest
    most = np.zeros((len(m), n_test), dtype=np.int64)
    least = np.zeros((len(m), n_test), dtype=np.int64)
    for label in np.unique(test_labels):
        rows, columns = np.flatnonzero(test_labels == label), np.flatnonzero(train_labels == label)
        if len(columns) == 0:
            continue
        step = max(1, _COMPARISONS_PER_BLOCK // (len(columns) * len(m)))
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            block = scores[np.ix_(part, columns)][None]  # [1, r, q]; counted along the contiguous last axis
            most[:, part] = np.count_nonzero(block >= top[:, part, None], axis=2)
            least[:, part] = np.count_nonzero(block <= bottom[:, part, None], axis=2)
    return torch.from_numpy(most), torch.from_numpy(least)


def similarity_rate_curves(
    scores: Tensor, test_labels: Tensor, train_labels: Tensor, ms: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """:func:`similarity_rates` for every ``m`` in ``ms`` at once: ``(most, least)``, each ``[len(ms), n_test]``.

    On the CPU, each row's values are sorted once and the matches counted against its order statistics
    (see :func:`_rate_counts_by_threshold`); when a tie straddles a cut-off, and on other devices, each
    row is argsorted once (ascending) and ``same[i, r] = 1`` when the training example of rank r carries test
    example i's label, and its running sum ``c`` gives every rate: least(m) = c[m - 1] / m and
    most(m) = (c[n - 1] - c[n - m - 1]) / m.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [n_test, n_train], got shape {tuple(scores.shape)}")
    if test_labels.dim() != 1 or train_labels.dim() != 1:
        raise ValueError(
            f"labels must be 1-D, got test_labels {tuple(test_labels.shape)} and train_labels "
            f"{tuple(train_labels.shape)}"
        )
    n_test, n_train = scores.shape
    if len(test_labels) != n_test:
        raise ValueError(
            f"scores has {n_test} rows (test examples) but test_labels has {len(test_labels)} entries"
        )
    if len(train_labels) != n_train:
        raise ValueError(
            f"scores has {n_train} columns (training examples) but train_labels has "
            f"{len(train_labels)} entries"
        )
    ms = list(ms)
    for m in ms:
        if isinstance(m, bool) or not isinstance(m, int):
            raise ValueError(f"M must be an integer number of training examples, got {m!r}")
        if m > n_train:
            raise ValueError(
                f"M = {m} exceeds the {n_train} training examples (columns of scores); "
                f"choose 1 <= M <= {n_train}"
            )
        if m < 1:
            raise ValueError(f"M must be at least 1, got {m}")
    if not torch.isfinite(scores.sum()) and torch.isnan(scores).any():  # the sum is finite without NaN (fast path)
        raise ValueError("scores contain NaN; training examples cannot be ranked")

    device = scores.device
    if _numpy_friendly(scores) and _numpy_friendly(train_labels) and _numpy_friendly(test_labels):
        counted = _rate_counts_by_threshold(scores.detach().contiguous().numpy(), test_labels.numpy(),
                                            train_labels.numpy(), ms)
        if counted is not None:
            index = torch.tensor(ms, dtype=torch.float32)
            return counted[0].float() / index[:, None], counted[1].float() / index[:, None]
        train_np = train_labels.numpy()

        def matches(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
            # [rows, n_train]: whether the training example of each rank (ascending score) has the row's label
            return train_np[np.argsort(rows, axis=1)] == labels[:, None]

        same = torch.from_numpy(_by_rows(matches, scores.detach().contiguous().numpy(), test_labels.numpy()))
    else:
        order = scores.argsort(dim=1)
        same = train_labels.to(device)[order] == test_labels.to(device).unsqueeze(1)
    counts = same.cumsum(dim=1, dtype=torch.int32)
    total = counts[:, -1]
    index = torch.tensor(ms, device=device)
    least = counts[:, index - 1].T.float() / index[:, None]
    below = torch.where(index[:, None] < n_train, counts[:, (n_train - index - 1).clamp_min(0)].T, 0)
    most = (total[None, :] - below).float() / index[:, None]
    return most, least

