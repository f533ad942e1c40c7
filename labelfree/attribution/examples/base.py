"""The contract every example explainer follows, and the small checks they share.

``fit(train_x)`` once, then ``attribute(test_x) -> Tensor[n_test, n_train]`` where entry ``[t, i]`` is the
importance of training example ``i`` for test example ``t`` (rows = test examples, higher = more important).
Scores are always returned on the CPU; inputs may live on the CPU while the model lives on another device.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

if TYPE_CHECKING:
    from labelfree.attribution.examples.objective import Objective

__all__ = ["ExampleImportance", "LossBasedImportance"]


def pretext_objective_loss(model: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
    """Default objective: the model's deterministic per-example pretext loss, shape ``[n]``."""
    return model.pretext_loss(x, y, perturb=False)


def check_positive_int(name: str, value: int) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an integer >= 1 (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_optional_positive_int(name: str, value: int | None) -> None:
    """Like :func:`check_positive_int`, ``None`` also accepted (no bound)."""
    if value is not None:
        check_positive_int(name, value)


def check_positive_int_fields(settings: object, *names: str) -> None:
    """:func:`check_positive_int` on each attribute ``names`` of ``settings``, named ``"<class> <attribute>"``."""
    for name in names:
        check_positive_int(f"{type(settings).__name__} {name}", getattr(settings, name))


def check_finite(name: str, value: float, *, minimum: float, strict: bool) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is a finite number ``> minimum`` (``strict``)
    or ``>= minimum``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


class ExampleImportance(ABC):
    """``fit(train_x)`` then ``attribute(test_x) -> Tensor[n_test, n_train]`` (higher = more important)."""

    _fitted: bool = False

    @abstractmethod
    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> ExampleImportance:
        """Prepare everything that depends on the training examples ``train_x`` ``[n_train, ...]``."""

    @abstractmethod
    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        """Importance of every training example for every test example: float ``[n_test, n_train]`` on CPU."""

    #: Whether column i of the scores depends on training example i alone (then a shard of the training set is
    #: fitted on its slice); an explainer whose scores couple the columns says why in :attr:`unshardable_reason`.
    columns_independent: ClassVar[bool] = False
    unshardable_reason: ClassVar[str] = "it does not declare how its score columns depend on the training set"

    def fit_columns(self, train_x: Tensor, train_y: Tensor | None, start: int, stop: int) -> ExampleImportance:
        """Fit so that ``attribute`` returns columns ``[start, stop)`` of the ``[n_test, n_train]`` scores that
        ``fit(train_x, train_y)`` would give, equal to them (a shard of the training set; see
        :mod:`labelfree.attribution.examples.shards`). Refused, with the reason, where that is impossible."""
        if not 0 <= start < stop <= len(train_x):
            raise ValueError(f"columns [{start}, {stop}) are not a non-empty range of the {len(train_x)} training "
                             "examples")
        if not self.columns_independent:
            raise ValueError(f"{type(self).__name__} cannot be computed on a shard of the training set: "
                             f"{self.unshardable_reason}; run it unsharded")
        return self.fit(train_x[start:stop], None if train_y is None else train_y[start:stop])

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__}.attribute was called before fit; call fit(train_x) first")


class LossBasedImportance(ExampleImportance):
    """An explainer that differentiates an :class:`~labelfree.attribution.examples.objective.Objective`
    (its first constructor argument); holds the label handling they share."""

    objective: Objective

    def _labels(self, y: Tensor | None, n: int, what: str) -> Tensor | None:
        """The labels handed to the objective's loss: ``y`` when it uses them (``Objective.uses_labels``: ``True``
        requires them, ``None`` passes them when given), else ``None`` with a warning if some were given."""
        uses = self.objective.uses_labels
        if uses is False:
            if y is not None:
                warnings.warn(
                    f"{type(self).__name__}: {what}_y is ignored: the objective's loss does not use labels "
                    "(model.uses_labels is False, or the loss takes only (model, x)); pass "
                    "Objective(..., loss=loss(model, x, y), uses_labels=True) to use them", UserWarning, stacklevel=3)
            return None
        if y is None:
            if uses:
                raise ValueError(
                    f"{type(self).__name__}: the objective's loss uses labels (uses_labels is True), "
                    f"so {what}_y is required"
                )
            return None
        if len(y) != n:
            raise ValueError(f"{what}_x and {what}_y must have the same length, got {n} and {len(y)}")
        return y
