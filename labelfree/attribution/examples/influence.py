"""Influence functions (Koh & Liang, 2017), label-free, and the solvers that estimate ``H^{-1} v``.

:class:`InfluenceFunctions` holds what every solver shares (the objective, the seed and the memory bounds);
the solver object holds only its own settings:

* :class:`LiSSA` (the paper's): the stochastic recursion of Agarwal et al. (2017);
* :class:`Arnoldi`: the *expectation* of the same depth-D LiSSA estimate, from a low-rank
  eigendecomposition of the Hessian (Schioppa et al., 2022), at a cost independent of the number of test
  examples;
* :class:`Exact`: the same expectation from the explicit ``[P, P]`` Hessian (small models: ground truth).
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.attribution.examples.base import (
    LossBasedImportance,
    check_finite,
    check_optional_positive_int,
    check_positive_int,
    check_positive_int_fields,
)
from labelfree.attribution.examples.hessian import HessianOperator
from labelfree.attribution.examples.objective import Objective

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
# Solvers
# ----------------------------------------------------------------------------------------------


class InverseHessianEstimate(ABC):
    """A fitted solver: ``estimate(V)`` approximates ``(H + damping * scale * I)^{-1} V``, ``[P, k] -> [P, k]``."""

    @abstractmethod
    def __call__(self, vectors: Tensor) -> Tensor:
        """The estimate for the columns of ``vectors`` (on the objective's device)."""


@dataclasses.dataclass(frozen=True)
class InverseHessianSolver(ABC):
    """Settings of the depth-``depth`` LiSSA series shared by every solver; subclasses add their own.

    The recursion ``h_0 = v;  h_j = v + (1 - damping) h_{j-1} - H_j h_{j-1} / scale;  estimate = h_depth / scale``
    has the fixed point ``(H + damping * scale * I)^{-1} v``: the estimate targets the damped Hessian (with the
    paper's damping 1e-3 and scale 1000, ``H + I``); the series converges when the eigenvalues of
    ``H / scale + damping`` lie in ``(0, 2)``.

    Args:
        damping: >= 0 (paper: 1e-3).
        scale: > 0, must exceed the largest Hessian eigenvalue (paper: 1000).
        depth: recursion depth, >= 1 (paper: 100).
    """

    damping: float = 1e-3
    scale: float = 1000.0
    depth: int = 100

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_finite(f"{name} damping", self.damping, minimum=0.0, strict=False)
        check_finite(f"{name} scale", self.scale, minimum=0.0, strict=True)
        check_positive_int_fields(self, "depth")

    def lissa_polynomial(self, eigenvalues: Tensor) -> Tensor:
        """``phi(mu) = (1 / scale) sum_{j=0}^{depth} a^j``, ``a = 1 - damping - mu / scale`` (float64): the
        depth-``depth`` recursion with the exact Hessian is ``phi(H) v``."""
        a = 1.0 - self.damping - eigenvalues.double() / self.scale
        terms = self.depth + 1
        safe = (1.0 - a).abs() > 1e-12
        geometric = torch.where(safe, (1.0 - a.pow(terms)) / torch.where(safe, 1.0 - a, 1.0), torch.full_like(a, terms))
        return geometric / self.scale

    @abstractmethod
    def fit(self, hessian: TrainingHessian, seed: int) -> InverseHessianEstimate:
        """Prepare the estimate for the training Hessian ``hessian``; ``seed`` seeds any random draw."""


@dataclasses.dataclass(frozen=True)
class LiSSA(InverseHessianSolver):
    """The stochastic LiSSA estimate of ``H^{-1} v`` (Agarwal et al., 2017), the paper's::

        h_0 = v;  h_j = v + (1 - damping) h_{j-1} - H_{B_j} h_{j-1} / scale;  estimate = h_depth / scale

    with ``B_j`` a minibatch of ``batch_size`` training examples drawn with replacement, averaged over
    ``repeats`` independent recursions (see :class:`InverseHessianSolver` for the fixed point). The
    recursion is linear in ``v``, so it runs on all test gradients at once as a ``[P, n_test]`` matrix, one
    sampled batch per step shared by all columns. Sampling uses its own ``torch.Generator`` seeded with
    the explainer's ``seed`` at every call (same seed, same numbers; every test chunk replays the same
    batches). Cost: ``repeats * depth`` Hessian-matrix products, each about 2-3 forward/backward passes of
    a batch per test example (see :meth:`Objective.hvp`).

    Args:
        damping, scale, depth: see :class:`InverseHessianSolver` (paper: 1e-3, 1000, 100).
        batch_size: training examples per sampled batch, >= 1 (default 300, the MNIST training batch).
        repeats: independent recursions averaged, >= 1 (default 1).
    """

    batch_size: int = 300
    repeats: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int_fields(self, "batch_size", "repeats")

    def fit(self, hessian: TrainingHessian, seed: int) -> InverseHessianEstimate:
        return _LiSSAEstimate(self, hessian, seed)


class _LiSSAEstimate(InverseHessianEstimate):
    def __init__(self, solver: LiSSA, hessian: TrainingHessian, seed: int) -> None:
        self.solver = solver
        self.hessian = hessian
        self.seed = seed

    def __call__(self, v: Tensor) -> Tensor:
        solver = self.solver
        generator = torch.Generator().manual_seed(self.seed)
        n_train = len(self.hessian)
        estimate = torch.zeros_like(v)
        for repeat in range(solver.repeats):
            h = v.clone()
            steps = tqdm(range(solver.depth), desc=f"LiSSA (repeat {repeat + 1}/{solver.repeats})", leave=False)
            for _ in steps:
                index = torch.randint(n_train, (solver.batch_size,), generator=generator)
                hessian_h = self.hessian.sampled_product(index, h)
                h = v + (1.0 - solver.damping) * h - hessian_h / solver.scale
                if not torch.isfinite(h).all():
                    raise RuntimeError(
                        "LiSSA diverged (non-finite estimate): the largest Hessian eigenvalue exceeds what "
                        f"scale={solver.scale} allows; increase scale (or damping)"
                    )
            estimate += h / solver.scale
        return estimate / solver.repeats


@dataclasses.dataclass(frozen=True)
class Arnoldi(InverseHessianSolver):
    """The *expected* depth-``depth`` LiSSA estimate, without sampling (Schioppa et al., 2022).

    Since LiSSA's batches are independent, the expectation of its recursion is the same polynomial of the
    full Hessian H of the mean loss over the training examples: ``E[estimate] = phi(H) v`` with
    ``phi(mu) = (1 / scale) sum_{j=0}^{depth} (1 - damping - mu / scale)^j``. ``fit`` runs ``iterations`` steps
    of Arnoldi (Lanczos with full re-orthogonalisation) on H, one full-Hessian-vector product per step, and
    keeps the ``rank`` Ritz pairs (lambda_k, u_k) of largest |lambda|; then
    ``phi(H) v = phi(0) v + sum_k (phi(lambda_k) - phi(0)) u_k u_k^T v``, exact when H has no other eigenvalue
    far from 0. The cost does not depend on the number of test examples: use it where LiSSA at the paper's
    depth does not fit (the paper-scale MNIST check: 1000 test vectors x 100 steps);
    ``scripts/bench_explainers.py`` reports its agreement with LiSSA.

    Args:
        damping, scale, depth: the LiSSA estimate whose expectation is computed (see :class:`InverseHessianSolver`).
        iterations: Arnoldi steps (full-Hessian-vector products), >= 1 (default 100).
        rank: Ritz pairs kept, 1 <= rank <= iterations (default 20).
        batch_size: training examples per Hessian graph of a full-Hessian-vector product, >= 1 (default 300);
            the products add up exactly, so it only bounds memory (up to float rounding).
    """

    iterations: int = 100
    rank: int = 20
    batch_size: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int_fields(self, "iterations", "rank", "batch_size")
        if self.rank > self.iterations:
            raise ValueError(
                f"Arnoldi rank ({self.rank}) cannot exceed iterations ({self.iterations}): "
                "the Ritz pairs come from an Arnoldi basis of that many vectors"
            )

    def fit(self, hessian: TrainingHessian, seed: int) -> InverseHessianEstimate:
        """Ritz values ``[r]`` and orthonormal Ritz vectors ``[P, r]`` of H with the largest |value|."""
        objective = hessian.objective
        n_params = objective.n_params
        steps = min(self.iterations, n_params)
        device = objective.device
        dtype = objective.dtype
        generator = torch.Generator().manual_seed(seed)
        basis = torch.zeros(n_params, steps + 1, device=device, dtype=dtype)
        projected = torch.zeros(steps + 1, steps, dtype=torch.float64)
        start = torch.randn(n_params, generator=generator, dtype=dtype).to(device)
        basis[:, 0] = start / start.norm()
        size = steps
        operators = hessian.batch_operators(self.batch_size, columns=steps)
        for j in tqdm(range(steps), desc="Arnoldi", leave=False):
            w = sum(share * operator.matmul(basis[:, j : j + 1])[:, 0] for operator, share in operators)
            reference = w.norm()
            for _ in range(2):  # classical Gram-Schmidt, twice: orthogonal to float precision
                coefficients = basis[:, : j + 1].T @ w
                w = w - basis[:, : j + 1] @ coefficients
                projected[: j + 1, j] += coefficients.double().cpu()
            norm = w.norm()
            projected[j + 1, j] = float(norm)
            if norm <= torch.finfo(w.dtype).eps * max(float(reference), 1.0):
                size = j + 1  # invariant subspace found: H is exactly represented on it
                break
            basis[:, j + 1] = w / norm
        square = projected[:size, :size]
        values, vectors = torch.linalg.eigh((square + square.T) / 2)
        keep = values.abs().argsort(descending=True)[: self.rank]
        ritz_vectors = basis[:, :size] @ vectors[:, keep].to(device=device, dtype=basis.dtype)
        logger.info(
            "InfluenceFunctions (arnoldi): %d steps, Ritz values from %.3g to %.3g", size,
            float(values[keep].max()), float(values[keep].min()),
        )
        return _RitzEstimate(self, values[keep].to(device=device, dtype=basis.dtype), ritz_vectors)


@dataclasses.dataclass(frozen=True)
class Exact(InverseHessianSolver):
    """The expected depth-``depth`` LiSSA estimate ``phi(H) v`` (see :class:`Arnoldi`) from the explicit Hessian.

    ``fit`` forms H, the ``[P, P]`` Hessian of the mean training loss, column by column (P Hessian-vector
    products on ``batch_size`` training examples at a time) and diagonalises it (``eigh`` in float64); then
    ``phi(H) v = U phi(Lambda) U^T v`` with every eigenpair, so no Ritz truncation. Where
    ``(1 - damping - mu / scale)^(depth + 1)`` is negligible for every eigenvalue mu,
    ``phi(mu) = 1 / (mu + damping * scale)`` and the estimate is the damped inverse
    ``(H + damping * scale * I)^{-1} v`` of Koh & Liang's explicit influence functions. Memory ``P^2`` floats:
    for small models and as ground truth for the other solvers.

    Args:
        damping, scale, depth: the LiSSA estimate whose expectation is computed (see :class:`InverseHessianSolver`).
        batch_size: training examples per Hessian graph, >= 1 (default 300); only bounds memory.
        max_params: the largest P accepted, >= 1 (default 10,000: a 400 MB float32 matrix).
    """

    batch_size: int = 300
    max_params: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int_fields(self, "batch_size", "max_params")

    def fit(self, hessian: TrainingHessian, seed: int) -> InverseHessianEstimate:
        """Every eigenpair of H (``seed`` is unused: nothing is random)."""
        objective = hessian.objective
        n_params = objective.n_params
        if n_params > self.max_params:
            raise ValueError(
                f"Exact forms the [P, P] Hessian and the objective has P = {n_params:,} parameters (more than "
                f"max_params = {self.max_params:,}); use Arnoldi or LiSSA, or differentiate fewer parameters (wrt=)"
            )
        identity = torch.eye(n_params, device=objective.device, dtype=objective.dtype)
        operators = hessian.batch_operators(self.batch_size, columns=n_params)
        matrix = sum(share * operator.matmul(identity) for operator, share in tqdm(operators, desc="Exact", leave=False))
        values, vectors = torch.linalg.eigh(((matrix + matrix.T) / 2).double())
        logger.info("InfluenceFunctions (exact): %d eigenvalues from %.3g to %.3g", n_params, float(values.min()),
                    float(values.max()))
        return _RitzEstimate(self, values.to(identity), vectors.to(identity))


class _RitzEstimate(InverseHessianEstimate):
    """``phi(H) v = phi(0) v + sum_k (phi(lambda_k) - phi(0)) u_k u_k^T v`` from Ritz pairs (see :class:`Arnoldi`);
    with every eigenpair (:class:`Exact`), ``U phi(Lambda) U^T v``."""

    def __init__(self, solver: InverseHessianSolver, values: Tensor, vectors: Tensor) -> None:
        self.solver = solver
        self.values = values  # [r]
        self.vectors = vectors  # [P, r], orthonormal

    def __call__(self, v: Tensor) -> Tensor:
        at_zero = self.solver.lissa_polynomial(torch.zeros(1))
        gains = (self.solver.lissa_polynomial(self.values) - at_zero).to(v.dtype)
        return float(at_zero) * v + self.vectors @ (gains[:, None] * (self.vectors.T @ v))


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
        return self._inverse.values if isinstance(self._inverse, _RitzEstimate) else None

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
