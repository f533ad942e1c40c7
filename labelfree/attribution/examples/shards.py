"""Example importance on shards of the training set: columns ``[start, stop)`` of the ``[n_test, n_train]`` scores,
computed by separate jobs and merged into the matrix one job would give.

Which explainers can be sharded, and why the merged matrix is the same:

* TracIn, DKNN (and the random baseline): column i reads training example i only (a gradient product, a
  distance), so a shard fits on its slice. DKNN keeps every training point as a neighbour; picking the k
  nearest (the similarity rates' top M) is done on the merged matrix.
* Influence functions: column i is ``grad L(x_t)^T H^{-1} grad L(x_i)`` with H the Hessian of the mean loss of
  the *whole* training set; each shard fits the solver on every training example with the same seed (so the
  same batches, the same start vector: the same estimate) and differentiates only its own examples.
* SimplEx: refused. Its weights for a test example are one softmax over all training examples, fitted together.

:meth:`ExampleImportance.fit_columns` is the per-explainer part; this module splits and merges.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from labelfree.attribution.examples.base import ExampleImportance

__all__ = ["attribute_shard", "merge_shards", "shard_bounds"]


def shard_bounds(n_train: int, index: int, count: int) -> tuple[int, int]:
    """Columns ``[start, stop)`` of shard ``index`` of ``count``: consecutive, sizes differing by at most one."""
    for name, value in (("count", count), ("index", index), ("n_train", n_train)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"shard {name} must be an integer, got {value!r}")
    if not 1 <= count <= n_train:
        raise ValueError(f"shard count must be between 1 and the number of training examples ({n_train}), got {count}")
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}) for {count} shards, got {index}")
    return index * n_train // count, (index + 1) * n_train // count


def attribute_shard(explainer: ExampleImportance, train_x: Tensor, test_x: Tensor, start: int, stop: int,
                    train_y: Tensor | None = None, test_y: Tensor | None = None) -> Tensor:
    """Scores ``[n_test, stop - start]``: columns ``[start, stop)`` of ``explainer.fit(train_x).attribute(test_x)``."""
    scores = explainer.fit_columns(train_x, train_y, start, stop).attribute(test_x, test_y)
    if scores.shape != (len(test_x), stop - start):
        raise RuntimeError(f"{type(explainer).__name__} returned scores of shape {tuple(scores.shape)} for the shard "
                           f"[{start}, {stop}); expected {(len(test_x), stop - start)}")
    return scores


def merge_shards(blocks: Iterable[tuple[int, int, Tensor]], n_train: int) -> Tensor:
    """The ``[n_test, n_train]`` matrix from blocks ``(start, stop, scores [n_test, stop - start])``.

    Every column must be covered exactly once: a missing range or an overlap stops with the columns named.
    """
    blocks = sorted(blocks, key=lambda block: (block[0], block[1]))
    if not blocks:
        raise ValueError(f"no shard to merge: columns [0, {n_train}) are missing")
    rows = {block[2].shape[0] for block in blocks}
    if len(rows) != 1:
        raise ValueError(f"shards disagree on the number of test examples: {sorted(rows)}")
    covered = 0
    for start, stop, scores in blocks:
        if scores.dim() != 2 or scores.shape[1] != stop - start:
            raise ValueError(f"the shard [{start}, {stop}) holds scores of shape {tuple(scores.shape)}, "
                             f"not [n_test, {stop - start}]")
        if start > covered:
            raise ValueError(f"columns [{covered}, {start}) of {n_train} are missing: a shard did not finish")
        if start < covered:
            raise ValueError(f"the shard [{start}, {stop}) overlaps columns already covered up to {covered}: "
                             "shards of different splits are mixed")
        covered = stop
    if covered != n_train:
        raise ValueError(f"columns [{covered}, {n_train}) of {n_train} are missing: a shard did not finish"
                         if covered < n_train else f"shards cover {covered} columns, more than the {n_train} expected")
    return torch.cat([scores for _, _, scores in blocks], dim=1)
