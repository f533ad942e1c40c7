"""The supervised pretext task of the pretext-sensitivity study (Crabbé & van der Schaar, 2022, "Pretext"):
the same encoder as the autoencoders with a linear head, trained by cross-entropy on the labels.

Only the encoder is explained, exactly like an autoencoder's: the head only defines the training task.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from labelfree.models.base import PretextModel


class Classifier(PretextModel):
    """``encoder`` (``[n, *input_shape] -> [n, d]``) followed by ``Linear(d -> n_classes)``.

    Loss per example: the cross-entropy of the logits ``head(encoder(x))`` with the label ``y``.
    There is no input perturbation (``perturb`` is the identity).
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, n_classes: int) -> None:
        super().__init__()
        if latent_dim < 1 or n_classes < 2:
            raise ValueError(f"Classifier needs latent_dim >= 1 and n_classes >= 2, got {latent_dim} and {n_classes}")
        self.encoder = encoder
        self.head = nn.Linear(latent_dim, n_classes)
        self.n_classes = n_classes

    @property
    def uses_labels(self) -> bool:
        return True

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[n, n_classes]``."""
        return self.head(self.encoder(x))

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        """Per-example cross-entropy ``[n]``; ``y`` holds integer labels ``[n]`` in ``[0, n_classes)``."""
        if y is None:
            raise ValueError("Classifier.pretext_loss needs the labels y (an integer tensor [n]); got None")
        if y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(
                f"Classifier labels must be an integer tensor [n] matching the {x.shape[0]} inputs; "
                f"got {y.dtype} of shape {tuple(y.shape)}"
            )
        return F.cross_entropy(self(x), y, reduction="none")
