"""The solvers that estimate ``H^{-1} v`` for :class:`~labelfree.attribution.examples.InfluenceFunctions`.

Each solver holds only its own settings; :class:`~labelfree.attribution.examples.influence.InfluenceFunctions`
holds what they share (the objective, the seed, the memory bounds) and hands them the training Hessian:

* :class:`LiSSA` (the paper's): the stochastic recursion of Agarwal et al. (2017);
* :class:`Arnoldi`: the *expectation* of the same depth-D LiSSA estimate, from a low-rank
  eigendecomposition of the Hessian (Schioppa et al., 2022), at a cost independent of the number of test
  examples; or Schioppa et al.'s own truncated inverse (``estimand="truncated_inverse"``);
* :class:`Exact`: the same expectation from the explicit ``[P, P]`` Hessian (small models: ground truth).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.attribution.examples.base import check_finite, check_positive_int_fields

if TYPE_CHECKING:
    from labelfree.attribution.examples.influence import TrainingHessian

logger = logging.getLogger("labelfree.attribution.examples.influence")  # one logger for the explainer and its solvers

__all__ = ["Arnoldi", "Exact", "InverseHessianEstimate", "InverseHessianSolver", "LiSSA", "LiSSADivergenceError"]


# ----------------------------------------------------------------------------------------------
# Solvers
# ----------------------------------------------------------------------------------------------


class LiSSADivergenceError(RuntimeError):
    """The LiSSA series (or its expectation) diverges on the model's Hessian at the solver's settings."""


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

    def check_expectation(self, eigenvalues: Tensor, dtype: torch.dtype) -> None:
        """Refuse an expected estimate ``phi(H) v`` that diverging directions swamp.

        Along an eigenvalue mu the recursion multiplies by ``a = 1 - damping - mu / scale``; it converges to the
        damped inverse only where ``|a| < 1``, i.e. ``-damping * scale < mu < (2 - damping) * scale``. Elsewhere
        (negative curvature below ``-damping * scale``, or mu above ``(2 - damping) * scale``) it grows as
        ``|a|^(depth + 1)``; once that exceeds ``1 / eps`` of ``dtype`` every converging direction is below the
        estimate's precision, so the "inverse-Hessian product" is that one direction (or overflows). Raises
        :class:`LiSSADivergenceError` naming the eigenvalue and the settings that would converge.
        """
        a = 1.0 - self.damping - eigenvalues.double() / self.scale
        growth = a.abs().pow(self.depth + 1)
        limit = 1.0 / torch.finfo(dtype).eps
        if not len(growth) or float(growth.max()) <= limit:
            return
        worst = int(growth.argmax())
        mu, factor = float(eigenvalues[worst]), float(a[worst].abs())
        if mu < 0:  # converges once damping * scale > |mu|, with damping < 2 so that mu = 0 still converges
            fix = (f"damping * scale above {-mu:.4g} with damping below 2 (e.g. damping 1 and scale "
                   f"{math.ceil(-mu * 1.01):d}, a strongly damped inverse (H + damping * scale * I)^-1)")
        else:
            fix = f"a scale above {mu / (2.0 - self.damping):.4g}"
        raise LiSSADivergenceError(
            f"the depth-{self.depth} LiSSA recursion (damping {self.damping:g}, scale {self.scale:g}) diverges on "
            f"this Hessian: it has the eigenvalue {mu:.4g}, along which each step multiplies by "
            f"|1 - damping - mu / scale| = {factor:.4g}, {float(growth[worst]):.3g} over the recursion, beyond "
            f"{dtype}'s 1 / eps = {limit:.3g}: the estimate would be that one direction, not H^-1 v. The recursion "
            f"converges only for eigenvalues in ({-self.damping * self.scale:.3g}, "
            f"{(2.0 - self.damping) * self.scale:.3g}). Accepted: {fix}, or influence functions left out of the "
            "explainers"
        )

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
                    raise LiSSADivergenceError(
                        "LiSSA diverged (non-finite estimate): the Hessian has an eigenvalue outside "
                        f"({-solver.damping * solver.scale:.3g}, {(2.0 - solver.damping) * solver.scale:.3g}), where "
                        f"the recursion converges at damping={solver.damping:g}, scale={solver.scale:g}: a "
                        "large one (increase scale) or negative curvature (increase damping or scale); the Arnoldi "
                        "solver names the eigenvalue"
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

    ``estimand="truncated_inverse"`` computes instead Schioppa et al.'s own estimate, the one Captum's
    ``ArnoldiInfluenceFunction`` and dattri's ``IFAttributorArnoldi`` return:
    ``sum_k u_k u_k^T v / (lambda_k + damping * scale)``, the damped inverse on the Ritz space and 0 on its
    complement (``depth`` is then unused). It differs from the default wherever H has directions outside the
    Ritz space (for a singular H, always: the default gives them ``phi(0)``, this estimate 0).

    Args:
        damping, scale, depth: the LiSSA estimate whose expectation is computed (see :class:`InverseHessianSolver`).
        iterations: Arnoldi steps (full-Hessian-vector products), >= 1 (default 100).
        rank: Ritz pairs kept, 1 <= rank <= iterations (default 20).
        batch_size: training examples per Hessian graph of a full-Hessian-vector product, >= 1 (default 300);
            the products add up exactly, so it only bounds memory (up to float rounding).
        estimand: ``"lissa_expectation"`` (default) or ``"truncated_inverse"`` (see above).
    """

    iterations: int = 100
    rank: int = 20
    batch_size: int = 300
    estimand: str = "lissa_expectation"

    ESTIMANDS: ClassVar[tuple[str, ...]] = ("lissa_expectation", "truncated_inverse")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int_fields(self, "iterations", "rank", "batch_size")
        if self.estimand not in self.ESTIMANDS:
            raise ValueError(f"Arnoldi estimand {self.estimand!r} is not one of {', '.join(self.ESTIMANDS)}")
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
        largest = 0.0  # the largest |H q_j| so far, a lower bound on |H|: the scale of a negligible residual
        for j in tqdm(range(steps), desc="Arnoldi", leave=False):
            w = sum(share * operator.matmul(basis[:, j : j + 1])[:, 0] for operator, share in operators)
            largest = max(largest, float(w.norm()))
            for _ in range(2):  # classical Gram-Schmidt, twice: orthogonal to float precision
                coefficients = basis[:, : j + 1].T @ w
                w = w - basis[:, : j + 1] @ coefficients
                projected[: j + 1, j] += coefficients.double().cpu()
            norm = w.norm()
            projected[j + 1, j] = float(norm)
            # relative to |H|, not absolute: a Hessian whose eigenvalues are all tiny still gets every step
            if norm <= torch.finfo(w.dtype).eps * largest:
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
        ritz_values = values[keep].to(device=device, dtype=basis.dtype)
        if self.estimand == "truncated_inverse":
            return _TruncatedInverse(self, ritz_values, ritz_vectors)
        self.check_expectation(values[keep], dtype)
        return _RitzEstimate(self, ritz_values, ritz_vectors)


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
        self.check_expectation(values, objective.dtype)
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


class _TruncatedInverse(_RitzEstimate):
    """``sum_k u_k u_k^T v / (lambda_k + damping * scale)``: the damped inverse on the Ritz space, 0 elsewhere
    (``Arnoldi(estimand="truncated_inverse")``)."""

    def __init__(self, solver: InverseHessianSolver, values: Tensor, vectors: Tensor) -> None:
        super().__init__(solver, values, vectors)
        damped = values.double() + solver.damping * solver.scale
        if not bool((damped > 0).all()):
            raise ValueError(
                f"Arnoldi truncated_inverse: a kept Ritz value plus damping * scale is not positive (smallest "
                f"{float(damped.min()):.3g}); H has negative curvature there: raise damping or use the default "
                "estimand"
            )
        self.gains = 1.0 / damped

    def __call__(self, v: Tensor) -> Tensor:
        return self.vectors @ (self.gains.to(v.dtype)[:, None] * (self.vectors.T @ v))
