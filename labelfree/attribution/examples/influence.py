"""Influence functions (Koh & Liang, 2017), label-free.

:class:`InfluenceFunctions` holds what every solver shares (the objective, the seed and the memory bounds);
the solver object (:mod:`.solvers`: :class:`LiSSA`, :class:`Arnoldi`, :class:`Exact`) holds only its own settings.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.attribution.examples.base import (
    LossBasedImportance,
    check_optional_positive_int,
    check_positive_int,
)
from labelfree.attribution.examples.hessian import HessianOperator
from labelfree.attribution.examples.objective import Objective
from labelfree.attribution.examples.solvers import Arnoldi, Exact, InverseHessianEstimate, InverseHessianSolver, LiSSA

logger = logging.getLogger(__name__)

__all__ = ["Arnoldi", "Exact", "InfluenceFunctions", "InverseHessianSolver", "LiSSA", "TrainingHessian"]


# ----------------------------------------------------------------------------------------------
# The Hessian of the training loss, as the solvers see it
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingHessian:
    """The Hessian H (in theta) of the mean loss of the training examples ``x`` (labels ``y``), with the
    memory bounds and the split of :class:`InfluenceFunctions`; solvers only multiply by it.

    Attributes:
        objective: what is differentiated.
        x: training inputs ``[n_train, ...]``; y: their labels ``[n_train]`` or ``None``.
        vector_chunk_size, example_chunk_size, split: passed to :meth:`Objective.hessian`.
    """

    objective: Objective
    x: Tensor
    y: Tensor | None
    vector_chunk_size: int | None
    example_chunk_size: int | None
    split: bool | None

    def __len__(self) -> int:
        return len(self.x)

    def sampled_product(self, index: Tensor, vectors: Tensor) -> Tensor:
        """``H_B V`` ``[P, k]`` for the batch ``B`` of training examples drawn as ``index`` (with replacement).

        The batch's Hessian is the mean over its draws: each distinct example once, weighted by how often it
        was drawn (exact, and fewer examples when the batch repeats some).
        """
        unique, counts = torch.unique(index, return_counts=True)
        unique = unique.to(self.x.device)
        batch_y = None if self.y is None else self.y[unique]
        return self.objective.hvp(
            self.x[unique], vectors, batch_y, vector_chunk_size=self.vector_chunk_size,
            weights=counts.double() / len(index), example_chunk_size=self.example_chunk_size, split=self.split,
        )

    def batch_operators(self, batch_size: int, columns: int) -> list[tuple[HessianOperator, float]]:
        """H as operators on ``batch_size`` consecutive training examples at a time, each with its share of the
        mean (``H = sum share * operator``); ``columns``: products each operator will serve."""
        n_train = len(self.x)
        operators = []
        for start in range(0, n_train, batch_size):
            stop = min(start + batch_size, n_train)
            batch_y = None if self.y is None else self.y[start:stop]
            operator = self.objective.hessian(
                self.x[start:stop], batch_y, example_chunk_size=self.example_chunk_size,
                vector_chunk_size=self.vector_chunk_size, split=self.split, columns=columns,
            )
            operators.append((operator, (stop - start) / n_train))
        return operators


# ----------------------------------------------------------------------------------------------
# The explainer
# ----------------------------------------------------------------------------------------------


class InfluenceFunctions(LossBasedImportance):
    """Influence functions (Koh & Liang, 2017), label-free:
    ``score(t, i) = grad L(x_t)^T H^{-1} grad L(x_i)``, H the Hessian of the mean training loss in theta.

    Sign/orientation: no minus sign (the paper's form). A large positive score means that a gradient
    step on training example ``i`` also decreases the loss of test example ``t`` (a "proponent");
    Koh & Liang's influence of up-weighting ``i`` on the test loss is the negative of this score.

    ``H^{-1} v`` is estimated by ``solver``: :class:`LiSSA` (the paper's stochastic recursion, the default),
    :class:`Arnoldi` (its expectation from a low-rank eigendecomposition of H) or :class:`Exact` (the same from
    the explicit Hessian, small models); all target the damped Hessian ``H + damping * scale * I``.

    Args:
        objective: what is differentiated.
        solver: the inverse-Hessian solver and its settings (default ``LiSSA()``: the paper's damping 1e-3,
            scale 1000, depth 100).
        seed: seed of the solver's random draws (LiSSA's batches, Arnoldi's start vector; default 0).
        chunk_size: examples per ``vmap`` call for per-example gradients (default 256).
        test_chunk_size: test examples whose gradients are inverted together (bounds memory to about
            ``4 * test_chunk_size * P`` floats besides the ``[n_train, P]`` training gradients; the result
            does not depend on it, since every chunk replays the same sampled batches); ``None``: all.
        vector_chunk_size: test vectors per vmapped Hessian-vector product (bounds memory; ``None``:
            all at once; default 8: on a 2-core CPU 10 % faster than 16 and 25 % faster than 32 for the MNIST
            autoencoder).
        hvp_chunk_size: training examples per Hessian-vector-product graph (``None``: the whole sampled
            batch); exact, it only bounds memory (see :meth:`Objective.hessian`).
        split_hessian: let Hessian-vector products skip the head (the decoder) by splitting the Hessian
            at the encoder's output, exactly, where the model allows it and it is cheaper (see
            :meth:`Objective.hessian`); ``False`` always differentiates the whole loss. Same scores either
            way up to float rounding.
        train_chunk_size: ``None`` (default): ``fit`` computes and keeps the ``[n_train, P]`` training gradients.
            An int: no training gradient is kept; ``attribute`` first inverts every test gradient (keeping
            ``[n_test, P]``) and then computes the training gradients that many at a time, each block scored and
            dropped, so memory no longer grows with the training set (the whole MNIST training split: 54,000 x
            43,428 floats would be 9.4 GB). Same scores up to float rounding; the training gradients are computed
            at each ``attribute`` call instead of once.
    """

    def __init__(
        self,
        objective: Objective,
        solver: InverseHessianSolver = LiSSA(),  # noqa: B008 (a frozen dataclass: immutable)
        seed: int = 0,
        chunk_size: int = 256,
        test_chunk_size: int | None = 256,
        vector_chunk_size: int | None = 8,
        hvp_chunk_size: int | None = None,
        split_hessian: bool = True,
        train_chunk_size: int | None = None,
    ) -> None:
        if not isinstance(solver, InverseHessianSolver):
            hint = (" (a config node: instantiate it first, e.g. with hydra.utils.instantiate)"
                    if isinstance(solver, Mapping) else "")
            raise ValueError(
                f"InfluenceFunctions solver must be a solver object, {LiSSA.__name__}(...), "
                f"{Arnoldi.__name__}(...) or {Exact.__name__}(...), got {solver!r}{hint}"
            )
        check_positive_int("chunk_size", chunk_size)
        check_optional_positive_int("test_chunk_size", test_chunk_size)
        check_optional_positive_int("vector_chunk_size", vector_chunk_size)
        check_optional_positive_int("hvp_chunk_size", hvp_chunk_size)
        check_optional_positive_int("train_chunk_size", train_chunk_size)
        if not isinstance(split_hessian, bool):
            raise ValueError(f"InfluenceFunctions split_hessian must be true or false, got {split_hessian!r}")
        self.objective = objective
        self.solver = solver
        self.seed = seed
        self.chunk_size = chunk_size
        self.test_chunk_size = test_chunk_size
        self.vector_chunk_size = vector_chunk_size
        self.hvp_chunk_size = hvp_chunk_size
        self.split_hessian = split_hessian
        self.train_chunk_size = train_chunk_size
        self._columns: tuple[int, int] = (0, 0)
        self._train_x: Tensor | None = None
        self._train_y: Tensor | None = None
        self._train_grads: Tensor | None = None
        self._inverse: InverseHessianEstimate | None = None

    @property
    def ritz_values(self) -> Tensor | None:
        """After ``fit``: with :class:`Arnoldi`, the Ritz values ``[rank]`` kept; with :class:`Exact`, every
        eigenvalue of H ``[P]``; otherwise ``None``."""
        return getattr(self._inverse, "values", None)  # the Ritz-based estimates keep them; LiSSA's has none

    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> InfluenceFunctions:
        if len(train_x) == 0:
            raise ValueError("InfluenceFunctions.fit needs at least one training example")
        return self._fit(train_x, train_y, 0, len(train_x))

    def fit_columns(self, train_x: Tensor, train_y: Tensor | None, start: int, stop: int) -> InfluenceFunctions:
        """A shard: H (and the solver's estimate of its inverse, with the same ``seed``) from every training
        example, as in ``fit``, but gradients, and so score columns, only for training examples ``[start, stop)``.
        Each shard repeats the solver's work: sharding saves the training gradients' memory and time only."""
        if not 0 <= start < stop <= len(train_x):
            raise ValueError(f"columns [{start}, {stop}) are not a non-empty range of the {len(train_x)} training "
                             "examples")
        return self._fit(train_x, train_y, start, stop)

    def _fit(self, train_x: Tensor, train_y: Tensor | None, start: int, stop: int) -> InfluenceFunctions:
        self._train_y = self._labels(train_y, len(train_x), "train")
        self._train_x = train_x
        self._columns = (start, stop)
        self._train_grads = None
        if self.train_chunk_size is None:
            self._train_grads = self._gradients(start, stop)
            logger.info("InfluenceFunctions: kept a train-gradient matrix of shape %s", tuple(self._train_grads.shape))
        hessian = TrainingHessian(
            self.objective, train_x, self._train_y, vector_chunk_size=self.vector_chunk_size,
            example_chunk_size=self.hvp_chunk_size, split=None if self.split_hessian else False,
        )
        self._inverse = self.solver.fit(hessian, self.seed)
        self._fitted = True
        return self

    def inverse_hvp(self, vectors: Tensor) -> Tensor:
        """The solver's estimate of ``(H + damping * scale * I)^{-1} V`` for ``V`` of shape ``[P, k]`` -> ``[P, k]``."""
        self._check_fitted()
        assert self._inverse is not None
        return self._inverse(vectors.to(self.objective.device))

    def _gradients(self, start: int, stop: int) -> Tensor:
        """Per-example gradients ``[stop - start, P]`` of training examples ``[start, stop)``."""
        assert self._train_x is not None
        y = None if self._train_y is None else self._train_y[start:stop]
        return self.objective.per_example_grads(self._train_x[start:stop], y, chunk_size=self.chunk_size)

    def _inverse_test_gradients(self, test_x: Tensor, test_y: Tensor | None) -> Iterator[tuple[int, int, Tensor]]:
        """``(start, stop, rows H^{-1} grad L(x_t))`` for the test examples, ``test_chunk_size`` at a time; every
        chunk replays the solver's same sampled batches (its sampler is reseeded), so chunking is exact."""
        n_test = len(test_x)
        step = max(n_test if self.test_chunk_size is None else self.test_chunk_size, 1)
        for start in range(0, n_test, step):
            stop = min(start + step, n_test)
            chunk_y = None if test_y is None else test_y[start:stop]
            test_grads = self.objective.per_example_grads(test_x[start:stop], chunk_y, chunk_size=self.chunk_size)
            yield start, stop, self.inverse_hvp(test_grads.T).T
            del test_grads

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        self._check_fitted()
        test_y = self._labels(test_y, len(test_x), "test")
        first, last = self._columns
        dtype = self.objective.dtype
        scores = torch.zeros(len(test_x), last - first, dtype=dtype)
        if self._train_grads is not None:
            for start, stop, inverse_test in self._inverse_test_gradients(test_x, test_y):
                scores[start:stop] = (inverse_test @ self._train_grads.T).cpu()
            return scores
        inverse = torch.zeros(len(test_x), self.objective.n_params, device=self.objective.device, dtype=dtype)
        for start, stop, inverse_test in self._inverse_test_gradients(test_x, test_y):
            inverse[start:stop] = inverse_test
        assert self.train_chunk_size is not None
        blocks = range(first, last, self.train_chunk_size)
        for start in tqdm(blocks, desc="influence (training gradients)", leave=False):
            stop = min(start + self.train_chunk_size, last)
            scores[:, start - first : stop - first] = (inverse @ self._gradients(start, stop).T).cpu()
        return scores
