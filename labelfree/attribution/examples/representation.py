"""Representation-based example importance: SimplEx and DKNN only use ``h = encoder(x)``."""

from __future__ import annotations

import logging
from typing import TypeVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from labelfree.attribution.examples.base import ExampleImportance, check_finite, check_positive_int
from labelfree.modules import OutputSelector, eval_mode, module_device, select_output

logger = logging.getLogger(__name__)

__all__ = ["DKNN", "SimplEx"]


def _represent(encoder: nn.Module, x: Tensor, batch_size: int, output: OutputSelector = None) -> Tensor:
    """Flattened representations ``encoder(x)``, shape ``[n, d]``, on the encoder's device.

    Computed batch by batch in eval mode under ``no_grad``; the modes are restored afterwards. ``output`` picks
    the representation from an encoder that returns a tuple or dict (:func:`labelfree.modules.select_output`).
    """
    device = module_device(encoder)
    with eval_mode(encoder), torch.no_grad():
        reps = [select_output(encoder(x[i : i + batch_size].to(device)), output).flatten(1)
                for i in range(0, len(x), batch_size)]
    return torch.cat(reps)


_Explainer = TypeVar("_Explainer", bound="_RepresentationImportance")


class _RepresentationImportance(ExampleImportance):
    """An explainer that only reads representations ``encoder(x)`` (computed ``batch_size`` examples at a time):
    ``fit`` keeps the training ones, ``attribute`` compares the test ones with them."""

    def __init__(self, encoder: nn.Module, batch_size: int, output: OutputSelector = None) -> None:
        check_positive_int("batch_size", batch_size)
        self.encoder = encoder
        self.batch_size = batch_size
        self.output = output
        self._train_reps: Tensor | None = None

    def fit(self: _Explainer, train_x: Tensor, train_y: Tensor | None = None) -> _Explainer:
        if len(train_x) == 0:
            raise ValueError(f"{type(self).__name__}.fit needs at least one training example")
        self._train_reps = _represent(self.encoder, train_x, self.batch_size, self.output)
        self._fitted = True
        return self

    def _representations(self, test_x: Tensor) -> tuple[Tensor, Tensor]:
        """The training representations ``[n_train, d]`` kept by ``fit`` and those of ``test_x`` ``[n_test, d]``."""
        self._check_fitted()
        assert self._train_reps is not None
        return self._train_reps, _represent(self.encoder, test_x, self.batch_size, self.output)


class SimplEx(_RepresentationImportance):
    """SimplEx (Crabbé et al., 2021): each test representation as a convex mix of training ones.

    For test representation ``h_t`` the weights are ``softmax(w_t)`` over the training set, with
    ``w_t`` fitted by Adam to minimise ``|| sum_i softmax(w_t)_i h_i - h_t ||^2``. All test examples
    are fitted at once as one ``[n_test, n_train]`` parameter matrix (the rows' losses are
    independent, so minimising their sum fits each row), starting from ``w = 0`` (uniform weights),
    hence deterministic. Scores = the weights (rows are nonnegative and sum to 1). After
    ``attribute``, :attr:`reconstruction_error` holds each test example's final squared error ``[n_test]``.

    Why ``lr = 1`` with cosine decay: when the representation is low-dimensional (the paper's d = 4
    with 1000 training points) a test point is a convex combination of training points in many
    ways, so which weights come out is decided by the optimiser. A large initial step size drives
    the weights to sparse solutions (a test representation equal to a training one gets almost all
    of the weight; with a constant lr of 0.1 or 0.3 only 10-40% of such points are recovered, the
    rest being spread over many neighbours), and decaying it to 0 lets Adam settle at the minimum
    (a constant lr of 1 leaves the error of out-of-hull test points up to 70% above the optimum;
    with the decay it is within 0.5%).

    Args:
        encoder: maps inputs to representations (any latent shape; flattened).
        steps: Adam steps, >= 1 (paper: 1000).
        lr: initial Adam learning rate, > 0 (default 1.0, see above).
        cosine_decay: decay the learning rate to 0 over ``steps`` with a cosine schedule (default True).
        batch_size: examples per encoder call when computing representations.
        output: for an encoder returning a tuple or dict, which part is the representation: an index, a key or a
            callable (:func:`labelfree.modules.select_output`); ``None``: the output is a tensor.
    """

    unshardable_reason = ("its weights for a test example are a softmax over every training example, fitted in one "
                          "optimisation, so each column depends on all the others")

    def __init__(
        self,
        encoder: nn.Module,
        steps: int = 1000,
        lr: float = 1.0,
        cosine_decay: bool = True,
        batch_size: int = 1024,
        output: OutputSelector = None,
    ) -> None:
        check_positive_int("steps", steps)
        check_finite("SimplEx lr", lr, minimum=0.0, strict=True)
        super().__init__(encoder, batch_size, output)
        self.steps = steps
        self.lr = lr
        self.cosine_decay = cosine_decay
        self.reconstruction_error: Tensor | None = None

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        train_reps, test_reps = self._representations(test_x)
        logits = torch.zeros(len(test_reps), len(train_reps), device=train_reps.device, dtype=train_reps.dtype,
                             requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.steps) if self.cosine_decay else None
        with torch.enable_grad():
            for _ in tqdm(range(self.steps), desc="SimplEx", leave=False):
                optimizer.zero_grad(set_to_none=True)
                residual = torch.softmax(logits, dim=1) @ train_reps - test_reps
                residual.pow(2).sum().backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
        with torch.no_grad():
            weights = torch.softmax(logits, dim=1)
            self.reconstruction_error = (weights @ train_reps - test_reps).pow(2).sum(dim=1).cpu()
        logger.info("SimplEx: mean squared reconstruction error %.3g", self.reconstruction_error.mean().item())
        return weights.cpu()


class DKNN(_RepresentationImportance):
    """Deep k-nearest neighbours without cut-off: ``score(t, i) = 1 / (||h_t - h_i||^2 + eps)``.

    The paper keeps all training points; ``eps`` (> 0) keeps the score finite at zero distance.
    Distances are computed from explicit differences (``torch.cdist`` without the matrix-product
    shortcut), so they are never negative and are exactly 0 for identical representations.

    Args:
        encoder: maps inputs to representations (any latent shape; flattened).
        eps: added to the squared distance, > 0 (default 1e-12: small enough not to change the scores of
            representations that are close together, e.g. a random-weight encoder's; 1e-8 changes the
            largest scores of the benchmark's by about 1 %).
        batch_size: examples per encoder call when computing representations.
        output: for an encoder returning a tuple or dict, which part is the representation (as for :class:`SimplEx`).
    """

    columns_independent = True  # score(t, i) reads training example i only

    def __init__(self, encoder: nn.Module, eps: float = 1e-12, batch_size: int = 1024,
                 output: OutputSelector = None) -> None:
        check_finite("DKNN eps", eps, minimum=0.0, strict=True)
        super().__init__(encoder, batch_size, output)
        self.eps = eps

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        train_reps, test_reps = self._representations(test_x)
        distances = torch.cdist(test_reps, train_reps, compute_mode="donot_use_mm_for_euclid_dist")
        return (1.0 / (distances.pow(2).clamp_min(0.0) + self.eps)).cpu()
