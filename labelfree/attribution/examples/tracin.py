"""TracIn (Pruthi et al., 2020), label-free."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.attribution.examples.base import LossBasedImportance, check_positive_int
from labelfree.attribution.examples.objective import Objective
from labelfree.training import Checkpoint

__all__ = ["TracIn"]


class TracIn(LossBasedImportance):
    """TracIn (Pruthi et al., 2020), label-free: ``score(t, i) = sum_c lr_c grad L_c(x_t) . grad L_c(x_i)``.

    ``L_c`` is the objective at the weights of checkpoint ``c``; gradients are w.r.t. ``objective.wrt``
    (the encoder). The paper saves a checkpoint every 10 epochs with learning-rate factor 1.
    Checkpoints are loaded into a deep copy of the model, never into the model itself. ``fit`` keeps
    the training examples; ``attribute`` computes, per checkpoint, the test gradients once and the
    training gradients chunk by chunk, so no ``[n_train, P]`` matrix is ever held.

    Args:
        objective: what is differentiated.
        checkpoints: the saved checkpoints (at least one).
        chunk_size: examples per ``vmap`` call when computing per-example gradients (default 256).
    """

    def __init__(self, objective: Objective, checkpoints: Sequence[Checkpoint], chunk_size: int = 256) -> None:
        checkpoints = list(checkpoints)
        if not checkpoints:
            raise ValueError("TracIn needs at least one Checkpoint(path, learning_rate); got an empty list")
        for checkpoint in checkpoints:
            if not isinstance(checkpoint, Checkpoint):
                raise TypeError(f"TracIn checkpoints must be Checkpoint instances, got {type(checkpoint).__name__}")
        check_positive_int("chunk_size", chunk_size)
        self.objective = objective
        self.checkpoints = checkpoints
        self.chunk_size = chunk_size
        self._train_x: Tensor | None = None
        self._train_y: Tensor | None = None

    def _checkpoint_objectives(self) -> Iterator[tuple[float, Objective]]:
        """Yield ``(lr_c, objective at checkpoint c)`` for every checkpoint, on one copy of the model."""
        model_copy = copy.deepcopy(self.objective.model)
        device = self.objective.device
        for checkpoint in tqdm(self.checkpoints, desc="TracIn checkpoints", leave=False):
            path = Path(checkpoint.path)
            if not path.is_file():
                raise FileNotFoundError(f"TracIn checkpoint file not found: {path}")
            state = torch.load(path, map_location=device, weights_only=True)
            model_copy.load_state_dict(state)
            yield checkpoint.learning_rate, dataclasses.replace(self.objective, model=model_copy)

    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> TracIn:
        if len(train_x) == 0:
            raise ValueError("TracIn.fit needs at least one training example")
        self._train_y = self._labels(train_y, len(train_x), "train")
        self._train_x = train_x
        self._fitted = True
        return self

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        """Scores ``[n_test, n_train]``. Per checkpoint: the test-gradient matrix ``[n_test, P]``, then the
        training gradients ``chunk_size`` examples at a time (peak memory ~ ``(n_test + chunk_size) * P`` floats)."""
        self._check_fitted()
        assert self._train_x is not None
        test_y = self._labels(test_y, len(test_x), "test")
        n_train = len(self._train_x)
        dtype = next(self.objective.model.get_submodule(self.objective.wrt).parameters()).dtype
        scores = torch.zeros(len(test_x), n_train, device=self.objective.device, dtype=dtype)
        for lr, objective in self._checkpoint_objectives():
            test_grads = objective.per_example_grads(test_x, test_y, chunk_size=self.chunk_size)
            for start in range(0, n_train, self.chunk_size):
                stop = min(start + self.chunk_size, n_train)
                train_y = None if self._train_y is None else self._train_y[start:stop]
                train_grads = objective.per_example_grads(self._train_x[start:stop], train_y, chunk_size=self.chunk_size)
                scores[:, start:stop].add_(test_grads @ train_grads.T, alpha=lr)
            del test_grads
        return scores.cpu()
