"""The contract every trainable model of the project follows.

A :class:`PretextModel` owns an ``encoder`` (the representation f: X -> H that is explained) and
defines its own pretext loss. The one trainer and the loss-based example explainers only talk to a
model through this contract:

* ``model.encoder(x) -> Tensor[n, *latent_shape]``: the explained representation.
* ``model.perturb(x) -> Tensor``: the pretext perturbation applied to the inputs during training
  only (identity for reconstruction, Gaussian noise for denoising, a random pixel mask for
  inpainting).
* ``model.pretext_loss(x, y, perturb) -> Tensor[n]``: the per-example training loss. With
  ``perturb=False`` it is deterministic; this is the objective that influence functions and TracIn
  differentiate (the expectation over the random perturbation would need sampling).
* ``model.per_example_loss``: False for losses that couple the examples of a batch (contrastive
  models), for which loss-based example importance is not defined.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from labelfree.modules import eval_mode, module_device


class PretextModel(nn.Module, ABC):
    """A model trained on a pretext task whose ``encoder`` is explained."""

    encoder: nn.Module
    #: Whether ``pretext_loss`` is a sum of independent per-example terms. A contrastive loss (NT-Xent)
    #: couples the examples of a batch, so influence functions and TracIn are not defined for it.
    per_example_loss: bool = True

    def perturb(self, x: Tensor) -> Tensor:
        """Training-time perturbation of a batch ``x`` (default: identity)."""
        return x

    @abstractmethod
    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        """Per-example pretext loss, shape ``[n]``, for inputs ``x`` (and labels ``y`` if needed)."""

    @property
    def uses_labels(self) -> bool:
        """Whether :meth:`pretext_loss` needs the labels ``y`` (supervised classifier)."""
        return False

    def represent(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Representations f(x) of a whole tensor in eval mode (every submodule's flag restored afterwards),
        without gradients, batch by batch."""
        device = module_device(self)
        with eval_mode(self), torch.no_grad():
            return torch.cat(
                [self.encoder(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
            )
