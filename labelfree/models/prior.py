"""A pretext model trained with an attribution prior on its encoder's label-free attributions.

:class:`PriorRegularised` wraps any :class:`~labelfree.models.base.PretextModel` and is one itself, so the one
trainer, the model cache and every protocol use it unchanged (``encoder``, ``perturb`` and the wrapped model's
other attributes, e.g. a VAE's ``decoder``, ``beta`` and ``loss_terms``, are the wrapped model's).

What its loss is, and why:

* ``pretext_loss(x, y, perturb=True)`` = the wrapped model's loss + ``weight * Omega(x)`` per example
  (:class:`~labelfree.priors.AttributionPrior`). This is the training objective, and the trainer's validation
  loss (``perturb=True`` too) is the same objective, so early stopping selects the epoch that is best for what is
  minimised; selecting on the loss without the prior would ignore half of the objective.
* ``pretext_loss(x, y, perturb=False)`` = the wrapped model's own clean, deterministic loss, without the prior:
  what loss-based explainers differentiate and what a study reports as the model's test loss (the prior is
  reported beside it, measured on its own: :meth:`prior_value`).

``weight = 0`` never reaches this class: :func:`labelfree.models.registry.build_model` then builds the plain
model, so a lambda = 0 model is the plain model (same weights, same cache entry when its config omits the prior).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from labelfree.models.base import PretextModel
from labelfree.priors import AttributionPrior


class PriorRegularised(PretextModel):
    """``model``'s loss plus ``prior.weight * prior(model.encoder, x)`` when training (module docstring).

    Args:
        model: the wrapped pretext model (its ``encoder`` is explained and penalised).
        prior: the attribution prior; its ``weight`` must be > 0.
    """

    def __init__(self, model: PretextModel, prior: AttributionPrior) -> None:
        super().__init__()
        if not prior.weight > 0:
            raise ValueError(f"PriorRegularised needs a prior weight > 0, got {prior.weight!r}; weight 0 is the plain model")
        self.model = model
        self.prior = prior
        self.per_example_loss = model.per_example_loss

    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        return self.model.encoder

    @property
    def uses_labels(self) -> bool:
        return self.model.uses_labels

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapper does not have are the wrapped model's (``decoder``, ``beta``, ``loss_terms``...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(super().__getattr__("model"), name)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def perturb(self, x: Tensor) -> Tensor:
        return self.model.perturb(x)

    def prior_value(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Omega(x) per example ``[n]`` (unweighted; with a graph when gradients are enabled)."""
        return self.prior(self.model.encoder, x, generator)

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        loss = self.model.pretext_loss(x, y, perturb=perturb)
        if not perturb:
            return loss
        limit = self.prior.max_examples
        if limit is not None and len(x) > limit:
            # the first examples of a shuffled batch: their mean penalty estimates the batch's, added to every example
            return loss + self.prior.weight * self.prior_value(x[:limit]).mean()
        return loss + self.prior.weight * self.prior_value(x)
