"""The random baseline of example importance."""

from __future__ import annotations

import torch
from torch import Tensor

from labelfree.attribution.examples.base import ExampleImportance

__all__ = ["RandomExampleImportance"]


class RandomExampleImportance(ExampleImportance):
    """Random baseline: scores uniform in [0, 1), the same for the same ``seed`` and shapes."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._n_train: int | None = None

    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> RandomExampleImportance:
        self._n_train = len(train_x)
        self._fitted = True
        return self

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        self._check_fitted()
        assert self._n_train is not None
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(len(test_x), self._n_train, generator=generator)
