"""labelfree's loss-based explainers against the maintained data-attribution libraries, on the same label-free task.

The command is ``scripts/bench_explainers.py --peers`` (``make bench``); the comparison with the authors' ``lfxai``
is :mod:`experiments.benchmark`, whose model, inputs, checkpoints and timing rules (:func:`median_time`) this
module reuses.

The task, identical for every package: the paper's MNIST autoencoder with fixed random weights (eval mode), inputs
in [0, 1], and the gradient of the per-example pretext loss (mean squared reconstruction error) with respect to the
encoder's parameters only. Each peer sees the model through :class:`PretextLoss` (``forward(x)`` = the per-example
loss), so its "loss function" is the identity on the model's output: Captum through ``layers=["model.encoder"]``
with a ``reduction="none"`` identity loss, dattri through an :class:`~dattri.task.AttributionTask` whose loss is
the batch mean of the same losses and ``layer_name=`` the encoder's parameter names. TracIn reads the same checkpoint
files with the same learning rates.

Pieces and agreement checks (each check must pass, or the command exits with status 1):

* **TracIn** (encoder, ``n_checkpoints`` checkpoints): the same deterministic sum of gradient dot products, so the
  same scores up to float32 summation order (``max |diff| / max |score| <= 1e-3``). dattri's ``TracInAttributor``
  projects gradients to 512 random dimensions by default, with no argument to turn it off: its
  ``projector_kwargs`` attribute is set to ``None`` after construction (its ``attribute`` tests for that), so that
  it computes exact dot products. Captum's ``sample_wise_grads_per_batch`` trick handles only Linear and Conv2d
  layers and the encoder has a BatchNorm2d, so Captum runs its per-example path (one backward per example through
  its batch's graph), in batches of ``captum_batch_size`` (``configs/bench/default.yaml`` says why that size).
* **LiSSA** (encoder, the paper's damping and scale, the workload's depth and batch): labelfree's ``LiSSA`` against
  dattri's ``IFAttributorLiSSA`` (the same recursion ``h <- v + (1 - damping) h - H_B h / scale``). Both are
  stochastic and draw different batches (dattri draws independent batches for every test vector, labelfree shares
  one batch per step among them), so their scores agree only in expectation: Spearman over all (test, train) pairs
  ``>= 0.95``. With the paper's damping and scale the estimate is a large multiple of the gradient plus a small
  curvature term that depends on the batches, so the ranks agree almost exactly; a failure means a different
  estimator, not noise. Captum has no LiSSA (its row says so).
* **Exact inverse Hessian** (a small model: only the encoder's BatchNorm layer, ``exact_wrt``, P = 32): labelfree's
  ``Exact`` solver with a series deep enough that ``(1 - damping - mu/scale)^(depth+1)`` underflows, i.e.
  ``(H + lambda I)^{-1}`` with ``lambda = damping * scale``, against Captum's ``NaiveInfluenceFunction`` (every
  eigenpair kept) and dattri's ``IFAttributorExplicit`` and ``IFAttributorCG``. Deterministic and the same
  quantity, so the same scores up to float32 rounding of a P x P solve (``<= 1e-3``). Captum's Hessian is that of
  the *sum* of the training losses, so it gets ``hessian_reg = n_train * lambda`` and its scores are multiplied by
  ``n_train`` (``g' (n H + n lambda I)^{-1} g = g' (H + lambda I)^{-1} g / n``). ``lambda`` is a fraction of H's
  largest eigenvalue (so the curvature matters) and must make ``H + lambda I`` positive definite (Captum drops
  non-positive eigenvalues, CG needs it): checked first (:func:`exact_series`). P = 32 because Captum forms the
  Hessian with one backward pass per parameter and dattri with ``torch.func.hessian`` over the whole training set:
  with the encoder's last layer (P = 516) on 12 training images, Captum took 112 s under load.
* **Arnoldi, truncated inverse, every Krylov dimension** (the exact rows' small model): labelfree's
  ``Arnoldi(estimand="truncated_inverse")`` against Captum's ``ArnoldiInfluenceFunction`` and dattri's
  ``IFAttributorArnoldi``, all Schioppa et al.'s estimate ``g' U diag(1 / (lambda_k + lambda)) U' g`` on H's top-k
  eigenpairs, 0 elsewhere, with a Krylov space of every dimension (P steps), so the Ritz pairs are H's eigenpairs
  whatever the random start vector: deterministic and the same quantity, ``<= 1e-3``. k is where the spectrum's
  gap ``lambda_k / lambda_(k+1)`` is widest (:func:`_widest_gap`), so the top-k space is well defined. Captum's
  Hessian is the sum's again (``hessian_reg = n_train * lambda``, scores x n_train, ``hessian_inverse_tol = 0``).
* **Arnoldi, truncated inverse, paper workload** (encoder, the library's 100 steps and rank 20, the paper's
  damping * scale = 1 as the regularisation): the same estimand, timed for every package; the agreement column is
  information, not a check. With 100 of P = 43,428 steps the Ritz vectors depend on the random start vector, which
  each package draws its own way, and only the well-separated top of the spectrum converges; the peers also
  orthogonalise once per step in float32 (labelfree twice), so their bases drift further. The library's default
  estimand (``"lissa_expectation"``, the expectation of the paper's LiSSA: ``phi(0)`` on the complement of the Ritz
  space instead of 0) costs the same: the same Arnoldi steps, a different filter on the Ritz values.

pyDVL is not run: its latest release (0.10.0) requires ``numpy<2`` (pip would replace this environment's numpy 2)
and its ``pydvl.influence`` package imports ``dask.distributed`` at import time; its row says so.

Times are medians (:func:`experiments.benchmark.median_time`: pieces under a second get a warm-up call and the
median of ``fast_repeats`` calls). With ``isolate`` every (piece, package) runs in a fresh spawned process, so the
peak resident memory is its own (as in :mod:`experiments.benchmark_paper`); the time covers everything a user would
run (fit, cache, attribute), not the model build or imports.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from experiments.benchmark import (
    IF_MIN_SPEARMAN,
    TRACIN_RTOL,
    Check,
    _quiet,
    bench_section,
    close_scores,
    explainer_settings,
    machine,
    make_checkpoints,
    make_model,
    paper_lissa,
    ranked_alike,
    run_in_process,
    spearman,
)
from labelfree.attribution.examples import Arnoldi, Exact, InfluenceFunctions, Objective, TracIn
from labelfree.io import load_torch, save_text, save_torch
from labelfree.runtime import peak_rss_gib
from labelfree.training import Checkpoint

log = logging.getLogger("bench")

PEERS = ("captum", "dattri")
EXACT_RTOL = 1e-3  # float32 P x P solves (labelfree: eigh in float64 of a float32 Hessian; Captum: eig; dattri: inv)
#: The peers' Arnoldi stops when a residual norm falls under an absolute tolerance. These Hessians' eigenvalues are
#: 1e-8 to 1e-5 (random weights), below any fixed tolerance (Captum's default 0.1 stops before the first step; 1e-10
#: cut the exact rows' Krylov space short and left a 0.4 % error), so the peers run every step, as labelfree does
#: (it stops only at a residual under float epsilon times the largest |H q| seen).
ARNOLDI_TOL = 0.0
#: issue 18: on the paper workload, labelfree at least this much faster than the fastest peer, peak RSS no higher
SPEED_TARGET = 1.5
INPUT_SHAPE = (1, 28, 28)
#: A depth at which (1 - damping - mu/scale)^(depth + 1) underflows for the exact rows' damping of 1/2.
DEEP_SERIES = 2000
WHY_NOT = {
    ("lissa", "captum"): "Captum 0.9 has no LiSSA (captum.influence offers TracInCP, NaiveInfluenceFunction and "
                         "ArnoldiInfluenceFunction)",
}
#: peer rows that run only when the workload's flag is set: package -> (flag, the row's text when it is not)
OPT_IN = {
    "dattri (CG)": ("run_cg", "not run: peers.run_cg is false in configs/bench/default.yaml (about an hour at 1000 "
                              "x 1000: every CG step is a Hessian-vector product over the training set, per test "
                              "vector; docs/bench_peers.md)"),
}
PYDVL_WHY = ("pyDVL 0.10.0 (its latest release) requires numpy<2, so pip would replace this environment's numpy 2, and "
             "its pydvl.influence package imports dask.distributed at import time; it is not in the bench extra")


@dataclass
class PeerWorkload:
    """The ``peers`` section of ``configs/bench/default.yaml`` (``tiny``: with ``peers_tiny``'s values)."""

    n_train: int
    n_test: int
    n_checkpoints: int
    lissa_depth: int
    lissa_batch_size: int
    lissa_test_batch: int
    arnoldi_iterations: int
    arnoldi_rank: int
    exact_wrt: str
    exact_lambda_fraction: float
    cg_steps: int
    run_cg: bool
    captum_batch_size: int
    captum_test_chunk: int
    repeats: int
    fast_repeats: int
    slow_piece_s: float
    piece_timeout_s: float
    seed: int
    exact_lambda: float | None = None  # set by exact_series from H's spectrum
    exact_scale: float | None = None  # set by exact_series from H's spectrum
    exact_arnoldi_rank: int | None = None  # set by exact_series from H's spectrum

    @classmethod
    def from_config(cls, tiny: bool = False, **overrides: Any) -> PeerWorkload:
        return cls(**bench_section("peers", tiny, **overrides))


def peer_versions() -> dict[str, str | None]:
    """The installed version of every peer (``None``: not installed)."""
    versions = {}
    for name in (*PEERS, "pydvl"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# ------------------------------------------------------------------------------------------ the task
class PretextLoss(nn.Module):
    """The label-free task as a peer sees it: ``forward(x)`` is the per-example pretext loss ``[n]`` of ``model``
    (eval mode, deterministic), so parameter names carry the prefix ``model.``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.pretext_loss(x, None, perturb=False)


class _PerExample(nn.Module):
    """Captum's loss on the model's output: the output already is the per-example loss (``reduction="none"``)."""

    reduction = "none"

    def forward(self, losses: Tensor, _targets: Tensor) -> Tensor:
        return losses


def _dattri_loss(module: PretextLoss) -> Callable[[dict[str, Tensor], Any], Tensor]:
    """dattri's ``loss(params, data)``: the mean pretext loss of a batch ``data = (x, label)``, or of one example
    (dattri vmaps over examples, with or without a leading batch dimension of 1)."""
    from torch.func import functional_call

    def loss(params: dict[str, Tensor], data: Any) -> Tensor:
        x = data[0]
        if x.dim() == len(INPUT_SHAPE):
            x = x.unsqueeze(0)
        return functional_call(module, params, (x,)).mean()

    return loss


def _loader(x: Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=batch_size, shuffle=False)


@dataclass
class Setup:
    """What every package is given: the model, inputs, checkpoint files and the differentiated parameters."""

    model: nn.Module
    train_x: Tensor
    test_x: Tensor
    checkpoints: list[Checkpoint]
    wrt: str

    @property
    def module(self) -> PretextLoss:
        return PretextLoss(self.model).eval()

    def param_names(self, module: nn.Module) -> list[str]:
        prefix = f"model.{self.wrt}."
        return [name for name, _ in module.named_parameters() if name.startswith(prefix)]

    @property
    def n_params(self) -> int:
        """P: the number of differentiated parameters (scalars)."""
        return sum(p.numel() for p in self.model.get_submodule(self.wrt).parameters())

    def load(self, module: PretextLoss, path: Any) -> float:
        """Load a checkpoint file into ``module``; its learning rate (Captum's ``checkpoints_load_func``)."""
        module.model.load_state_dict(torch.load(path, weights_only=True))
        module.eval()
        return next(c.learning_rate for c in self.checkpoints if str(c.path) == str(path))


# ------------------------------------------------------------------------------------------ the pieces
def _labelfree_tracin(s: Setup, w: PeerWorkload) -> Callable[[], Tensor]:
    settings = explainer_settings("tracin")
    return lambda: TracIn(Objective(s.model, wrt=s.wrt), s.checkpoints, **settings).fit(s.train_x).attribute(s.test_x)


def _captum_tracin(s: Setup, w: PeerWorkload) -> Callable[[], Tensor]:
    from captum.influence import TracInCP

    def run() -> Tensor:
        module = copy.deepcopy(s.module)
        tracin = TracInCP(module, _loader(s.train_x, w.captum_batch_size), [str(c.path) for c in s.checkpoints],
                          checkpoints_load_func=lambda m, p: s.load(m, p), layers=[f"model.{s.wrt}"],
                          loss_fn=_PerExample(), sample_wise_grads_per_batch=False)
        # test examples as a loader of the same small batches: their gradients are computed once, per example
        return tracin.influence(_loader(s.test_x, w.captum_batch_size), k=None)

    return run


def _dattri_task(s: Setup, checkpoints: list[Any]) -> Any:
    from dattri.task import AttributionTask

    module = copy.deepcopy(s.module)

    def load(model: nn.Module, checkpoint: Any) -> nn.Module:
        if isinstance(checkpoint, (str, Path)):
            s.load(model, checkpoint)
        model.eval()
        return model

    return AttributionTask(loss_func=_dattri_loss(module), model=module, checkpoints=checkpoints,
                           checkpoints_load_func=load), s.param_names(module)


def _dattri_tracin(s: Setup, w: PeerWorkload) -> Callable[[], Tensor]:
    from dattri.algorithm import TracInAttributor

    def run() -> Tensor:
        task, names = _dattri_task(s, [str(c.path) for c in s.checkpoints])
        attributor = TracInAttributor(task, weight_list=torch.tensor([c.learning_rate for c in s.checkpoints]),
                                      normalized_grad=False, layer_name=names)
        attributor.projector_kwargs = None  # exact dot products (see the module docstring)
        with _quiet():
            return attributor.attribute(_loader(s.train_x, len(s.train_x)), _loader(s.test_x, len(s.test_x))).T

    return run


def _labelfree_if(solver: Any) -> Callable[[Setup, PeerWorkload], Callable[[], Tensor]]:
    def build(s: Setup, w: PeerWorkload) -> Callable[[], Tensor]:
        settings = {k: v for k, v in explainer_settings("influence_functions").items() if k != "solver"}
        solver_now = solver(s, w)
        return lambda: (InfluenceFunctions(Objective(s.model, wrt=s.wrt), solver_now, **{**settings, "seed": w.seed})
                        .fit(s.train_x).attribute(s.test_x))

    return build


def _lissa(s: Setup, w: PeerWorkload) -> Any:
    return dataclasses.replace(paper_lissa(), depth=w.lissa_depth, batch_size=w.lissa_batch_size)


def _exact_solver(s: Setup, w: PeerWorkload) -> Exact:
    """``(H + lambda I)^{-1}`` as labelfree's ``Exact`` series: ``scale = w.exact_scale`` (from H's spectrum, see
    :func:`exact_series`), ``damping = lambda / scale``, and a series deep enough to converge."""
    if w.exact_scale is None:
        raise ValueError("the exact rows need exact_scale: run them through run_peers (it reads H's spectrum)")
    return Exact(damping=w.exact_lambda / w.exact_scale, scale=w.exact_scale, depth=DEEP_SERIES)


def _exact_arnoldi(s: Setup, w: PeerWorkload) -> Arnoldi:
    """Schioppa et al.'s truncated inverse on the exact rows' small model, with a Krylov space of every dimension:
    ``(H + lambda I)^{-1}`` on H's ``exact_arnoldi_rank`` largest eigenpairs, 0 elsewhere."""
    if w.exact_scale is None or w.exact_arnoldi_rank is None:
        raise ValueError("the exact rows need exact_scale: run them through run_peers (it reads H's spectrum)")
    return Arnoldi(damping=w.exact_lambda / w.exact_scale, scale=w.exact_scale, iterations=s.n_params,
                   rank=w.exact_arnoldi_rank, estimand="truncated_inverse")


def _workload_arnoldi(s: Setup, w: PeerWorkload) -> Arnoldi:
    lissa = paper_lissa()
    return Arnoldi(damping=lissa.damping, scale=lissa.scale, depth=lissa.depth, iterations=w.arnoldi_iterations,
                   rank=w.arnoldi_rank, estimand="truncated_inverse")


def _dattri_if(kind: str) -> Callable[[Setup, PeerWorkload], Callable[[], Tensor]]:
    def build(s: Setup, w: PeerWorkload) -> Callable[[], Tensor]:
        from dattri.algorithm import IFAttributorArnoldi, IFAttributorCG, IFAttributorExplicit, IFAttributorLiSSA

        n_params = s.n_params
        lissa = paper_lissa()

        def run() -> Tensor:
            task, names = _dattri_task(s, [s.model.state_dict()])
            test_batch = len(s.test_x)
            if kind == "lissa":
                torch.manual_seed(w.seed)
                attributor = IFAttributorLiSSA(task, layer_name=names, batch_size=w.lissa_batch_size,
                                               recursion_depth=w.lissa_depth, damping=lissa.damping,
                                               scaling=lissa.scale)
                test_batch = w.lissa_test_batch
            elif kind == "exact":
                attributor = IFAttributorExplicit(task, layer_name=names, regularization=w.exact_lambda)
            elif kind == "cg":
                # dattri's CG runs all max_iter steps (its tol is unused): see cg_steps in configs/bench/default.yaml
                attributor = IFAttributorCG(task, layer_name=names, regularization=w.exact_lambda,
                                            max_iter=w.cg_steps)
                # it vmaps the solve over a test batch, each over the whole training set: the killer took it at
                # 1000 test vectors (24 GiB); batches of lissa_test_batch, as its LiSSA
                test_batch = w.lissa_test_batch
            elif kind == "arnoldi_exact":  # every Krylov dimension (max_iter counts the start vector)
                attributor = IFAttributorArnoldi(task, layer_name=names, regularization=w.exact_lambda,
                                                 proj_dim=w.exact_arnoldi_rank, max_iter=n_params + 1,
                                                 tol=ARNOLDI_TOL, seed=w.seed)
            else:  # the workload's Arnoldi: the paper's damping * scale as the regularisation
                attributor = IFAttributorArnoldi(task, layer_name=names, regularization=lissa.damping * lissa.scale,
                                                 proj_dim=w.arnoldi_rank, max_iter=w.arnoldi_iterations,
                                                 tol=ARNOLDI_TOL, seed=w.seed)
            with _quiet():
                attributor.cache(_loader(s.train_x, len(s.train_x)))
                return attributor.attribute(_loader(s.train_x, len(s.train_x)), _loader(s.test_x, test_batch)).T

        return run

    return build


def _captum_if(kind: str) -> Callable[[Setup, PeerWorkload], Callable[[], Tensor]]:
    def build(s: Setup, w: PeerWorkload) -> Callable[[], Tensor]:
        from captum.influence import NaiveInfluenceFunction
        # not exported by captum.influence 0.9, but documented and maintained there
        from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

        n_train = len(s.train_x)
        lissa = paper_lissa()

        def run() -> Tensor:
            module = copy.deepcopy(s.module)
            path = Path(tempfile.mkdtemp()) / "final.pt"
            torch.save(s.model.state_dict(), path)
            common = {"checkpoints_load_func": lambda m, p: (m.model.load_state_dict(torch.load(p, weights_only=True)),
                                                              m.eval(), 1.0)[-1],
                      "layers": [f"model.{s.wrt}"], "loss_fn": _PerExample(), "sample_wise_grads_per_batch": False}
            # per-example gradients from small batches (captum_batch_size), Hessian-vector products on the whole set
            loader = _loader(s.train_x, w.captum_batch_size)
            common["hessian_dataset"] = _loader(s.train_x, n_train)
            # Captum's Hessian is the sum over the training set: regularise by n * lambda, scale scores by n
            if kind == "exact":
                explainer = NaiveInfluenceFunction(module, loader, str(path), projection_dim=None,
                                                   hessian_reg=n_train * w.exact_lambda, hessian_inverse_tol=0.0,
                                                   **common)
                scale = n_train
            elif kind == "arnoldi_exact":  # every Krylov dimension (arnoldi_dim counts the start vector)
                explainer = ArnoldiInfluenceFunction(module, loader, str(path), projection_dim=w.exact_arnoldi_rank,
                                                     arnoldi_dim=s.n_params + 1, hessian_reg=n_train * w.exact_lambda,
                                                     hessian_inverse_tol=0.0, arnoldi_tol=ARNOLDI_TOL, seed=w.seed, **common)
                scale = n_train
            else:
                reg = lissa.damping * lissa.scale
                explainer = ArnoldiInfluenceFunction(module, loader, str(path), projection_dim=w.arnoldi_rank,
                                                     arnoldi_dim=w.arnoldi_iterations, hessian_reg=n_train * reg,
                                                     arnoldi_tol=ARNOLDI_TOL, seed=w.seed, **common)
                scale = n_train
            # each influence call recomputes the training gradients: test examples in chunks of captum_test_chunk
            scores = torch.cat([explainer.influence((chunk, torch.zeros(len(chunk))), k=None)
                                for chunk in s.test_x.split(w.captum_test_chunk)])
            path.unlink()
            path.parent.rmdir()
            return scores * scale

        return run

    return build


#: piece -> (what is differentiated: "encoder" or the workload's exact_wrt, its label, check, builders per package)
PIECES: dict[str, tuple[str, str, Check | None, dict[str, Callable[[Setup, PeerWorkload], Callable[[], Tensor]]]]] = {
    "tracin": ("encoder", "TracIn", close_scores(TRACIN_RTOL),
               {"labelfree": _labelfree_tracin, "captum": _captum_tracin, "dattri": _dattri_tracin}),
    "lissa": ("encoder", "Influence functions, LiSSA", ranked_alike(IF_MIN_SPEARMAN),
              {"labelfree": _labelfree_if(_lissa), "dattri": _dattri_if("lissa")}),
    "exact": ("exact", "Influence functions, exact (H + lambda I)^-1", close_scores(EXACT_RTOL),
              {"labelfree": _labelfree_if(_exact_solver), "captum": _captum_if("exact"),
               "dattri": _dattri_if("exact"), "dattri (CG)": _dattri_if("cg")}),
    "arnoldi_exact": ("exact", "Influence functions, Arnoldi truncated inverse, every Krylov dimension",
                      close_scores(EXACT_RTOL),
                      {"labelfree": _labelfree_if(_exact_arnoldi), "captum": _captum_if("arnoldi_exact"),
                       "dattri": _dattri_if("arnoldi_exact")}),
    "arnoldi": ("encoder", "Influence functions, Arnoldi truncated inverse (paper workload)", None,
                {"labelfree": _labelfree_if(_workload_arnoldi), "captum": _captum_if("arnoldi"),
                 "dattri": _dattri_if("arnoldi")}),
}


def make_setup(w: PeerWorkload, where: str) -> Setup:
    """The model, inputs and checkpoint files (in a new temporary folder) of the workload; ``where``: "encoder" or
    "exact" (the workload's ``exact_wrt``)."""
    generator = torch.Generator().manual_seed(w.seed)
    model = make_model(w.seed)
    train_x = torch.rand(w.n_train, *INPUT_SHAPE, generator=generator)
    test_x = torch.rand(w.n_test, *INPUT_SHAPE, generator=generator)
    folder = Path(tempfile.mkdtemp(prefix="labelfree_peers_"))
    checkpoints = make_checkpoints(model, train_x, w.n_checkpoints, folder, w.seed)
    # distinct learning rates, so that a package that ignored them would fail the check
    checkpoints = [Checkpoint(c.path, 1.0 / (i + 1)) for i, c in enumerate(checkpoints)]
    return Setup(model, train_x, test_x, checkpoints, "encoder" if where == "encoder" else w.exact_wrt)


def exact_series(w: PeerWorkload) -> PeerWorkload:
    """``w`` with the scale at which labelfree's LiSSA series gives ``(H + lambda I)^{-1}`` on the exact rows' model.

    The series ``sum_j a^j``, ``a = 1 - (lambda + mu) / scale``, converges to ``scale / (lambda + mu)`` when
    ``0 < (lambda + mu) / scale < 2`` for every eigenvalue mu of H. ``lambda`` is ``exact_lambda_fraction`` times
    H's largest eigenvalue, so that the curvature shapes the scores whatever the spectrum's magnitude; ``scale = lambda + 2 mu_max`` puts every ``a``
    in ``[0, 1)``, and :data:`DEEP_SERIES` terms must bring the largest ``a^(depth+1)`` under 1e-12 (checked). The
    peers need ``H + lambda I`` positive definite (Captum drops other eigenvalues, CG diverges): checked too.
    """
    setup = make_setup(w, "exact")
    probe = Exact(damping=0.5, scale=1.0, depth=1)  # only its eigenvalues are used
    values = InfluenceFunctions(Objective(setup.model, wrt=setup.wrt), probe).fit(setup.train_x).ritz_values
    _remove_checkpoints(setup)
    smallest, largest = float(values.min()), float(values.max())
    if largest <= 0:
        raise ValueError(f"the exact rows' Hessian (wrt {w.exact_wrt!r}) has no positive eigenvalue ({largest:.3g})")
    lam = w.exact_lambda_fraction * largest
    if smallest + lam <= 0:
        raise ValueError(f"peers.exact_lambda_fraction = {w.exact_lambda_fraction:g} leaves H + lambda I indefinite "
                         f"(eigenvalues of H from {smallest:.3g} to {largest:.3g}); raise it")
    scale = lam + 2 * largest
    rank = _widest_gap(values)
    slowest = 1 - (lam + min(smallest, 0.0)) / scale
    if slowest ** (DEEP_SERIES + 1) > 1e-12:
        raise ValueError(f"peers.exact_lambda_fraction = {w.exact_lambda_fraction:g} is too small for a "
                         f"{DEEP_SERIES}-term series to converge; raise it")
    log.info("exact rows: H's eigenvalues from %.3g to %.3g, lambda %.3g, series scale %.3g, Arnoldi rank %d",
             smallest, largest, lam, scale, rank)
    return dataclasses.replace(w, exact_lambda=lam, exact_scale=scale, exact_arnoldi_rank=rank)


def _widest_gap(values: Tensor) -> int:
    """The truncated-inverse Arnoldi rows keep k eigenpairs, k in [2, P / 2] where ``lambda_k / lambda_(k+1)`` is
    largest: a well-separated top-k space, so that every package finds the same one (at a narrow gap the top-k
    space itself is ill-conditioned and the check would test rounding, not the estimator)."""
    ordered = values.double().sort(descending=True).values
    best, rank = 0.0, 2
    for k in range(2, len(ordered) // 2 + 1):
        if ordered[k] > 0 and float(ordered[k - 1] / ordered[k]) > best:
            best, rank = float(ordered[k - 1] / ordered[k]), k
    return rank


def _remove_checkpoints(setup: Setup) -> None:
    for c in setup.checkpoints:
        c.path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        setup.checkpoints[0].path.parent.rmdir()


def run_piece(job: dict[str, Any]) -> dict[str, Any]:
    """One (piece, package): its median time and scores (and, in a fresh process, its peak RSS)."""
    from experiments.benchmark import median_time

    torch.set_num_threads(job["threads"])
    w = PeerWorkload(**job["workload"])
    where, _, _, builders = PIECES[job["piece"]]
    setup = make_setup(w, where)
    try:
        fn = builders[job["package"]](setup, w)
        seconds, scores = median_time(fn, w.repeats, w.fast_repeats, w.slow_piece_s)
    finally:
        _remove_checkpoints(setup)
    return {"seconds": seconds, "scores": scores.detach().double().numpy(), "peak_rss_gib": peak_rss_gib()}


def _worker(job: dict[str, Any], queue: Any) -> None:
    try:
        queue.put(run_piece(job))
    except Exception as error:  # noqa: BLE001 (reported by the parent, with the piece's name)
        queue.put({"error": f"{type(error).__name__}: {error}"})


def run_isolated(job: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """:func:`run_piece` in a fresh spawned process, so that its peak memory is its own; a process still running
    after ``timeout_s`` seconds is killed and reported as died (its row says so)."""
    done = run_in_process(_worker, job, timeout_s)
    if done.timed_out:
        return {"error": f"stopped after {timeout_s:g} s (peers.piece_timeout_s), unfinished", "died": True}
    if done.result is None:  # killed (the kernel's out-of-memory killer: exit code -9) or crashed
        return {"error": f"its process died (exit code {done.exitcode}"
                         + ("; killed, out of memory at this size)" if done.exitcode == -9 else ")"),
                "died": True}
    return done.result


@dataclass
class PeerRow:
    piece: str
    package: str
    seconds: float | None = None
    peak_rss_gib: float | None = None
    agreement: str = ""
    passed: bool | None = None


#: workload fields that change no result (left out of the journal's keys, so changing them keeps the kept pieces)
UNKEYED = ("piece_timeout_s",)


def _job_key(job: dict[str, Any]) -> str:
    """A name for one (piece, package, threads, isolation, workload) result in the journal folder."""
    keyed = {**job, "workload": {k: v for k, v in job["workload"].items() if k not in UNKEYED}}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _run_journaled(job: dict[str, Any], isolate: bool, journal: Path | None) -> dict[str, Any]:
    """:func:`run_isolated` (or :func:`run_piece`), its result kept in ``journal`` (one ``.pt`` file per job,
    written atomically) and read back from there when the same job, with the same workload, already ran: a stopped
    run resumes at the piece it was in. Errors other than a peer's process dying are not kept (they are rerun)."""
    path = None if journal is None else journal / f"{_job_key({**job, 'isolate': isolate})}.pt"
    if path is not None and path.exists():
        kept = load_torch(path)
        log.info("%s %s: kept result from %s", job["piece"], job["package"], path.name)
        if "scores" in kept:
            kept["scores"] = kept["scores"].numpy()
        return kept
    result = run_isolated(job, job["workload"]["piece_timeout_s"]) if isolate else run_piece(job)
    if path is not None and ("error" not in result or result.get("died")):
        stored = dict(result)
        if "scores" in stored:
            stored["scores"] = torch.from_numpy(stored["scores"])
        save_torch(stored, path)
    return result


def run_peers(w: PeerWorkload, threads: int, isolate: bool, journal: Path | None = None,
              on_row: Callable[[list[PeerRow]], None] | None = None) -> list[PeerRow]:
    """Every piece for labelfree and every installed peer; agreement of each peer with labelfree.

    ``journal``: a folder keeping each finished (piece, package) result, so that a stopped run resumes where it
    stopped (:func:`_run_journaled`); ``on_row(rows)`` is called after every row (the partial table is written)."""
    versions = peer_versions()
    rows: list[PeerRow] = []
    if w.exact_scale is None and any(where == "exact" for where, *_ in PIECES.values()):
        w = exact_series(w)

    def add(row: PeerRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(rows)

    for piece, (_, label, check, builders) in PIECES.items():
        reference = None
        for package in ("labelfree", *PEERS):
            if package not in builders:
                add(PeerRow(label, package, agreement=WHY_NOT.get((piece, package), "no matching method")))
                continue
            base = package.split(" ")[0]
            if base != "labelfree" and versions.get(base) is None:
                add(PeerRow(label, package, agreement=f"{base} is not installed (pip install -e '.[bench]')"))
                continue
            for name in [package, *(k for k in builders if k.startswith(package + " "))]:
                if name in OPT_IN and not getattr(w, OPT_IN[name][0]):
                    add(PeerRow(label, name, agreement=OPT_IN[name][1]))
                    continue
                job = {"piece": piece, "package": name, "threads": threads, "workload": dataclasses.asdict(w)}
                result = _run_journaled(job, isolate, journal)
                if "error" in result:
                    if name == "labelfree" or not result.get("died"):
                        add(PeerRow(label, name, agreement=f"failed: {result['error'][:300]}", passed=False))
                    else:  # a peer that cannot run the task at this size: the row says why, no check to fail
                        add(PeerRow(label, name, agreement=f"could not run: {result['error']}"))
                    log.info("%-45s %-12s %s", label, name, rows[-1].agreement)
                    continue
                row = PeerRow(label, name, result["seconds"], result["peak_rss_gib"] if isolate else None)
                scores = torch.from_numpy(result["scores"])
                if name == "labelfree":
                    reference = scores
                elif reference is not None:
                    if check is not None:
                        row.passed, row.agreement = check(reference, scores)
                    else:
                        row.agreement = f"information only: Spearman with labelfree = {spearman(reference, scores):.3f}"
                log.info("%-45s %-12s %8.3f s %s", label, name, row.seconds, row.agreement)
                add(row)
    add(PeerRow("(any)", "pydvl", agreement=PYDVL_WHY))
    return rows


def render_peers(rows: list[PeerRow], w: PeerWorkload) -> str:
    versions = ", ".join(f"{name} {version or 'not installed'}" for name, version in peer_versions().items())
    lissa = paper_lissa()
    n_small = sum(p.numel() for n, p in make_model(w.seed).named_parameters() if n.startswith(w.exact_wrt + "."))
    lines = [
        f"Workload: n_train = {w.n_train}, n_test = {w.n_test}; encoder P = "
        f"{sum(p.numel() for p in make_model(w.seed).encoder.parameters()):,}; TracIn over {w.n_checkpoints} "
        f"checkpoints (learning rates 1, 1/2, ...); LiSSA depth {w.lissa_depth}, batch {w.lissa_batch_size} "
        f"(damping {lissa.damping:g}, scale {lissa.scale:g}); exact rows on `{w.exact_wrt}` "
        f"only (P = {n_small}) with lambda = {w.exact_lambda_fraction:g} x H's largest eigenvalue = {w.exact_lambda:.3g} "
        f"(their Arnoldi: {n_small} steps, rank {w.exact_arnoldi_rank}, the spectrum's widest gap; dattri's CG: "
        f"{w.cg_steps} steps{'' if w.run_cg else ', not run'}); workload Arnoldi {w.arnoldi_iterations} steps, "
        f"rank {w.arnoldi_rank}; median of {w.repeats} runs"
        + (f" (pieces under 1 s: a warm-up call, then the median of {w.fast_repeats})" if w.fast_repeats else "")
        + f", a piece whose first run takes over {w.slow_piece_s:g} s: that run. Captum: batches of "
        f"{w.captum_batch_size} for per-example gradients, test chunks of {w.captum_test_chunk} for influence "
        "functions (configs/bench/default.yaml says why).",
        f"Versions: {versions}. Machine: {machine()}",
        "",
        "| method | package | seconds | peak RSS (GiB) | package / labelfree | agreement with labelfree |",
        "|---|---|---|---|---|---|",
    ]
    reference: dict[str, float] = {}
    for row in rows:
        if row.package == "labelfree" and row.seconds is not None:
            reference[row.piece] = row.seconds
        seconds = "-" if row.seconds is None else f"{row.seconds:.4g}"
        peak = "-" if row.peak_rss_gib is None else f"{row.peak_rss_gib:.2f}"
        ratio = "-"
        if row.seconds is not None and row.package != "labelfree" and row.piece in reference:
            ratio = f"{row.seconds / reference[row.piece]:.2f}x"
        check = row.agreement + ("" if row.passed is None else (" - pass" if row.passed else " - FAIL"))
        lines.append(f"| {row.piece} | {row.package} | {seconds} | {peak} | {ratio} | {check} |")
    return "\n".join([*lines, "", *render_targets(rows)])


def render_targets(rows: list[PeerRow]) -> list[str]:
    """One line per piece of the paper workload (the encoder): labelfree against the fastest peer that ran it, the
    speed target :data:`SPEED_TARGET` and the peak-memory target, met or not (the small-model rows check agreement,
    their times are information)."""
    lines = [f"Targets (issue 18), paper workload: labelfree at least {SPEED_TARGET:g}x faster than the fastest peer "
             "at equal agreement, peak RSS no higher than that peer's."]
    encoder_labels = {label for where, label, *_ in PIECES.values() if where == "encoder"}
    for label in dict.fromkeys(row.piece for row in rows if row.piece in encoder_labels):
        ours = next((r for r in rows if r.piece == label and r.package == "labelfree" and r.seconds is not None), None)
        peers = [r for r in rows if r.piece == label and r.package != "labelfree" and r.seconds is not None
                 and r.passed is not False]
        if ours is None or not peers:
            lines.append(f"- {label}: no peer ran it, no target.")
            continue
        fastest = min(peers, key=lambda r: r.seconds or 0.0)
        assert fastest.seconds is not None and ours.seconds is not None
        ratio = fastest.seconds / ours.seconds
        speed = "met" if ratio >= SPEED_TARGET else "NOT met"
        memory = ""
        if ours.peak_rss_gib is not None and fastest.peak_rss_gib is not None:
            met = ours.peak_rss_gib <= fastest.peak_rss_gib
            memory = (f"; peak {ours.peak_rss_gib:.2f} GiB against {fastest.peak_rss_gib:.2f} GiB: "
                      + ("met" if met else "NOT met"))
        lines.append(f"- {label}: fastest peer {fastest.package}, {ratio:.2f}x slower than labelfree: speed {speed}"
                     f"{memory}.")
    return lines


def write_peers(w: PeerWorkload, threads: int, isolate: bool = True, out: Path | None = None,
                resume: bool = False) -> list[str]:
    """Run :func:`run_peers`, print the table and write it to ``out``; the failed rows' names.

    With ``out``, the table so far is rewritten after every row (marked partial until the run ends) and each
    finished piece is kept in ``<out>.parts/``; ``resume`` reads the pieces kept there by an earlier run of the same
    workload instead of starting afresh (the folder is emptied otherwise)."""
    torch.set_num_threads(threads)
    w = exact_series(w)
    journal = None
    if out is not None:
        journal = out.with_name(out.name + ".parts")
        if journal.exists() and not resume:
            shutil.rmtree(journal)
        journal.mkdir(parents=True, exist_ok=True)

    def partial(rows: list[PeerRow]) -> None:
        if out is not None:
            save_text(f"**Partial table: the run is still going or stopped after {len(rows)} rows "
                      f"(`--resume` continues it).**\n\n{render_peers(rows, w)}\n", out)

    rows = run_peers(w, threads, isolate, journal, on_row=partial)
    table = render_peers(rows, w)
    print(table)
    if out is not None:
        save_text(table + "\n", out)
    failed = [f"{r.piece} ({r.package})" for r in rows if r.passed is False]
    if failed:
        log.error("peer agreement checks failed: %s", ", ".join(failed))
    return failed
