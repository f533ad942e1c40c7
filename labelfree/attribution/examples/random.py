"""The random baseline of example importance."""

from __future__ import annotations

import torch
from torch import Tensor

from labelfree.attribution.examples.base import ExampleImportance

__all__ = ["RandomExampleImportance"]


class RandomExampleImportance(ExampleImportance):
    """Random baseline: scores uniform in [0, 1), the same for the same ``seed`` and shapes."""

    columns_independent = True  # (fit_columns slices the whole draw)

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._n_train: int | None = None
        self._columns: slice = slice(None)

    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> RandomExampleImportance:
        self._n_train = len(train_x)
        self._columns = slice(None)
        self._fitted = True
        return self

    def fit_columns(self, train_x: Tensor, train_y: Tensor | None, start: int, stop: int) -> RandomExampleImportance:
        """The columns ``[start, stop)`` of the unsharded draw (the whole matrix is drawn, then sliced: cheap)."""
        super().fit_columns(train_x, train_y, start, stop)  # checks the range
        self._n_train = len(train_x)
        self._columns = slice(start, stop)
        return self

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        self._check_fitted()
        assert self._n_train is not None
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(len(test_x), self._n_train, generator=generator)[:, self._columns]
