"""Seeded index subsets: class-balanced draws and train/validation splits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["balanced_subset", "random_subset", "train_val_split"]


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen


def _sorted_indices(indices: Tensor, n: int) -> Tensor:
    """Distinct ``indices`` in ``[0, n)`` sorted ascending, in O(n) (a mask, no comparison sort)."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[indices] = True
    return torch.nonzero(mask, as_tuple=True)[0]


def random_subset(n: int, size: int | None, seed: int) -> Tensor:
    """The first ``size`` indices of a seeded random permutation of ``range(n)``; ``range(n)`` itself
    (every example, in order) when ``size`` is None.

    Returns int64 indices ``[min(size, n)]`` in the permutation's order (not sorted), so the same seed
    and a larger ``size`` extend the same draw.
    """
    if size is not None and (int(size) != size or size < 1):
        raise ValueError(f"a subset size must be a positive integer or None, got {size!r}.")
    if size is None:
        return torch.arange(int(n))
    return torch.randperm(int(n), generator=_generator(seed))[: int(size)]


def balanced_subset(
    labels: Tensor, n_per_class: int, seed: int, classes: Sequence[int] | None = None
) -> Tensor:
    """Indices of ``n_per_class`` examples of each class, drawn without replacement.

    Args:
        labels: integer class labels, shape ``[n]``.
        n_per_class: how many examples to draw from each class (>= 1).
        seed: seeds a ``torch.Generator``; the same seed gives the same subset.
        classes: the classes to draw from (default: every class present in ``labels``).

    Returns:
        int64 indices into ``labels``, shape ``[n_per_class * n_classes]``, sorted ascending.

    Raises:
        ValueError: a class has fewer than ``n_per_class`` examples, or bad arguments.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}.")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}.")
    if int(n_per_class) != n_per_class or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}.")
    n_per_class = int(n_per_class)
    labels = labels.cpu()
    if classes is None:
        # (unsorted unique + Python sort: torch's sorted unique is needlessly slow on CPU)
        class_list = sorted(int(c) for c in torch.unique(labels, sorted=False).tolist())
    else:
        class_list = [int(c) for c in classes]
        if len(set(class_list)) != len(class_list):
            raise ValueError(f"classes contains duplicates: {list(classes)}.")

    gen = _generator(seed)
    chosen: list[Tensor] = []
    for c in class_list:  # one draw per class, in a fixed order, from one generator
        members = torch.nonzero(labels == c, as_tuple=True)[0]
        if members.numel() < n_per_class:
            raise ValueError(
                f"Class {c} has only {members.numel()} examples but n_per_class={n_per_class} "
                f"were requested."
            )
        perm = torch.randperm(members.numel(), generator=gen)[:n_per_class]
        chosen.append(members[perm])
    if not chosen:
        return torch.empty(0, dtype=torch.int64)
    return _sorted_indices(torch.cat(chosen), labels.numel())


def train_val_split(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Random disjoint split of ``range(n)`` into training and validation indices.

    The validation set has ``round(val_fraction * n)`` indices (at least 1 when
    ``val_fraction > 0``); the training set has the rest and must not be empty.

    Returns:
        ``(train_idx, val_idx)``: int64 tensors, each sorted ascending; together they cover
        ``range(n)`` exactly once. The same ``seed`` gives the same split.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1)``, ``n < 1``, or nothing left for training.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    n = int(n)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must satisfy 0 <= val_fraction < 1, got {val_fraction!r}.")
    n_val = round(float(val_fraction) * n)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n_val >= n:
        raise ValueError(
            f"val_fraction={val_fraction} of n={n} leaves no training examples (n_val={n_val})."
        )
    perm = torch.randperm(n, generator=_generator(seed))
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[perm[:n_val]] = True
    train_idx = torch.nonzero(~is_val, as_tuple=True)[0]
    val_idx = torch.nonzero(is_val, as_tuple=True)[0]
    return train_idx, val_idx
