"""Tests of the label-free example-importance explainers (labelfree/attribution/examples/)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from pathlib import Path

import hydra.utils
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from omegaconf import OmegaConf
from torch.func import functional_call

from labelfree.attribution.examples import (
    DKNN,
    EXAMPLE_EXPLAINERS,
    Arnoldi,
    Checkpoint,
    Exact,
    InfluenceFunctions,
    LiSSA,
    LiSSADivergenceError,
    Objective,
    RandomExampleImportance,
    SimplEx,
    TracIn,
    build_example_explainer,
    example_settings,
    requires_loss,
)
from labelfree.models import AutoEncoder, Identity, MNISTDecoder, MNISTEncoder, PretextModel
from tests import ROOT


# ----------------------------------------------------------------------------------------------
# Small models
# ----------------------------------------------------------------------------------------------


def mnist_autoencoder(seed: int) -> AutoEncoder:
    torch.manual_seed(seed)
    model = AutoEncoder(MNISTEncoder(4), MNISTDecoder(4), Identity())
    with torch.no_grad():  # non-trivial running statistics, so that eval mode matters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


class ConstantHessianModel(PretextModel):
    """Linear encoder; loss_n = mean_j ||encoder(c_j) - x_n||^2 with fixed probes c_j.

    Every example has the same Hessian w.r.t. the encoder parameters (it depends on the probes only),
    so LiSSA's sampled batches all give the exact Hessian of the training loss.
    """

    def __init__(self, in_dim: int = 3, out_dim: int = 2, n_probes: int = 20) -> None:
        super().__init__()
        self.encoder = nn.Linear(in_dim, out_dim)
        self.register_buffer("probes", torch.randn(n_probes, in_dim))

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        outputs = self.encoder(self.probes)  # [K, out_dim]
        return (outputs[None] - x[:, None, :]).pow(2).sum(-1).mean(-1)


class LinearAutoEncoder(PretextModel):
    """Linear encoder and decoder, squared reconstruction error: per-example Hessians differ."""

    def __init__(self, dim: int = 5, latent: int = 2) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, latent)
        self.decoder = nn.Linear(latent, dim)

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        return (self.decoder(self.encoder(x)) - x).pow(2).mean(1)


class TinyClassifier(PretextModel):
    """Supervised pretext: encoder + linear head, cross-entropy (uses labels)."""

    def __init__(self, dim: int = 5, latent: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, latent), nn.Tanh())
        self.head = nn.Linear(latent, classes)

    @property
    def uses_labels(self) -> bool:
        return True

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        return F.cross_entropy(self.head(self.encoder(x)), y, reduction="none")


# ----------------------------------------------------------------------------------------------
# Reference computations with plain autograd
# ----------------------------------------------------------------------------------------------


def loop_grads(model: PretextModel, x: Tensor, y: Tensor | None = None) -> Tensor:
    """Per-example gradients w.r.t. the encoder parameters, one torch.autograd.grad call per example."""
    model = copy.deepcopy(model).eval()
    params = list(model.encoder.parameters())
    rows = []
    for i in range(len(x)):
        loss = model.pretext_loss(x[i : i + 1], None if y is None else y[i : i + 1])[0]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


class _MeanPretextLoss(nn.Module):
    def __init__(self, model: PretextModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.pretext_loss(x).mean()


def encoder_hessian(model: PretextModel, x: Tensor) -> Tensor:
    """Exact Hessian ``[P, P]`` of the mean loss of ``x`` w.r.t. the flattened encoder parameters."""
    named = list(model.encoder.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    wrapper = _MeanPretextLoss(model)

    def mean_loss(theta: Tensor) -> Tensor:
        params, start = {}, 0
        for name, p in named:
            params[f"model.encoder.{name}"] = theta[start : start + p.numel()].view(p.shape)
            start += p.numel()
        return functional_call(wrapper, params, (x,))

    return torch.autograd.functional.hessian(mean_loss, flat)


def snapshot(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, bool], dict[str, bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    return state, modes, flags


def assert_unchanged(model: nn.Module, before: tuple) -> None:
    state, modes, flags = snapshot(model)
    assert modes == before[1]
    assert flags == before[2]
    assert state.keys() == before[0].keys()
    for key in state:
        assert torch.equal(state[key], before[0][key]), key


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def images() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 28, 28, generator=g), torch.rand(4, 1, 28, 28, generator=g)


@pytest.fixture
def checkpoints(tmp_path) -> list[Checkpoint]:  # noqa: ANN001
    result = []
    for seed, lr in [(1, 0.5), (2, 2.0)]:
        path = tmp_path / f"checkpoint_{seed}.pt"
        torch.save(mnist_autoencoder(seed).state_dict(), path)
        result.append(Checkpoint(path, lr))
    return result


# ----------------------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------------------


def test_per_example_grads_match_loop_and_chunking(images) -> None:  # noqa: ANN001
    model = mnist_autoencoder(0)
    x = torch.cat(images)
    objective = Objective(model)
    grads = objective.per_example_grads(x, chunk_size=3)
    assert grads.shape == (10, objective.n_params)
    assert objective.n_params == sum(p.numel() for p in model.encoder.parameters())
    torch.testing.assert_close(grads, loop_grads(model, x), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(objective.per_example_grads(x, chunk_size=64), grads, rtol=1e-5, atol=1e-7)


def test_hvp_matches_exact_hessian() -> None:
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    x = torch.randn(7, 5, dtype=torch.double)
    objective = Objective(model)
    hessian = encoder_hessian(model, x)
    vectors = torch.randn(objective.n_params, 4, dtype=torch.double)
    expected = hessian @ vectors
    torch.testing.assert_close(objective.hvp(x, vectors), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(objective.hvp(x, vectors, vector_chunk_size=3), expected, rtol=1e-10, atol=1e-12)


def test_objective_rejects_unknown_submodule() -> None:
    with pytest.raises(ValueError, match="not a submodule"):
        Objective(LinearAutoEncoder(), wrt="backbone")


# ----------------------------------------------------------------------------------------------
# TracIn
# ----------------------------------------------------------------------------------------------


def test_tracin_equals_explicit_gradient_loop(images, checkpoints) -> None:  # noqa: ANN001
    train_x, test_x = images
    model = mnist_autoencoder(0)
    scores = TracIn(Objective(model), checkpoints, chunk_size=4).fit(train_x).attribute(test_x)

    expected = torch.zeros(len(test_x), len(train_x))
    for checkpoint in checkpoints:
        at_checkpoint = copy.deepcopy(model)
        at_checkpoint.load_state_dict(torch.load(checkpoint.path, weights_only=True))
        expected += checkpoint.learning_rate * loop_grads(at_checkpoint, test_x) @ loop_grads(at_checkpoint, train_x).T
    assert scores.shape == (4, 6) and scores.device.type == "cpu"
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_tracin_with_labels(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = TinyClassifier()
    path = tmp_path / "c.pt"
    torch.save(model.state_dict(), path)
    x, y = torch.randn(8, 5), torch.randint(4, (8,))
    explainer = TracIn(Objective(model), [Checkpoint(str(path), 1.0)]).fit(x[:5], y[:5])
    grads_train, grads_test = loop_grads(model, x[:5], y[:5]), loop_grads(model, x[5:], y[5:])
    torch.testing.assert_close(explainer.attribute(x[5:], y[5:]), grads_test @ grads_train.T, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="test_y is required"):
        explainer.attribute(x[5:])


def test_explainers_leave_model_unchanged(images, checkpoints) -> None:  # noqa: ANN001
    train_x, test_x = images
    model = mnist_autoencoder(0).train()
    model.decoder.conv[1].eval()  # mixed modes must be restored as they were
    for p in model.decoder.parameters():
        p.requires_grad_(False)
    before = snapshot(model)
    objective = Objective(model)

    TracIn(objective, checkpoints).fit(train_x).attribute(test_x)
    assert_unchanged(model, before)
    InfluenceFunctions(objective, LiSSA(depth=2, batch_size=3)).fit(train_x).attribute(test_x)
    assert_unchanged(model, before)
    SimplEx(model.encoder, steps=5).fit(train_x).attribute(test_x)
    assert_unchanged(model, before)
    DKNN(model.encoder).fit(train_x).attribute(test_x)
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------------------------
# Influence functions
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def constant_hessian_setup() -> tuple[ConstantHessianModel, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    model = ConstantHessianModel().double()
    train_x, test_x = torch.randn(9, 2, dtype=torch.double), torch.randn(4, 2, dtype=torch.double)
    hessian = encoder_hessian(model, train_x)
    # every example has the same Hessian, so any sampled batch gives the exact one
    torch.testing.assert_close(encoder_hessian(model, train_x[:1]), hessian)
    return model, train_x, test_x, hessian


def test_influence_functions_converge_to_exact_damped_inverse(constant_hessian_setup) -> None:  # noqa: ANN001
    model, train_x, test_x, hessian = constant_hessian_setup
    eigenvalues = torch.linalg.eigvalsh(hessian)
    assert eigenvalues.min() > 0
    # contraction per step: 1 - damping - min(eigenvalue) / scale, about 0.8 here
    scale, damping = (eigenvalues.max() + eigenvalues.min()).item(), 1e-3
    explainer = InfluenceFunctions(Objective(model), LiSSA(damping=damping, scale=scale, depth=200, batch_size=4))
    scores = explainer.fit(train_x).attribute(test_x)

    # LiSSA's fixed point: h = v + (1 - damping) h - H h / scale  <=>  h / scale = (H + damping scale I)^{-1} v
    damped = hessian + damping * scale * torch.eye(len(hessian), dtype=hessian.dtype)
    grads_train, grads_test = loop_grads(model, train_x), loop_grads(model, test_x)
    expected = grads_test @ torch.linalg.solve(damped, grads_train.T)
    torch.testing.assert_close(scores, expected, rtol=1e-9, atol=1e-12)
    # H^{-1} symmetric: the orientation (rows = test) matters only through which gradients are which
    assert scores.shape == (4, 9)


def test_influence_functions_finite_depth_is_truncated_neumann_series(constant_hessian_setup) -> None:  # noqa: ANN001
    model, train_x, test_x, hessian = constant_hessian_setup
    scale, damping, depth = 10.0 * torch.linalg.eigvalsh(hessian).max().item(), 0.05, 7
    scores = InfluenceFunctions(Objective(model), LiSSA(damping=damping, scale=scale, depth=depth, batch_size=2))
    scores = scores.fit(train_x).attribute(test_x)

    identity = torch.eye(len(hessian), dtype=hessian.dtype)
    step = (1 - damping) * identity - hessian / scale  # h_j = v + step h_{j-1}
    series = sum(torch.linalg.matrix_power(step, j) for j in range(depth + 1)) / scale
    grads_train, grads_test = loop_grads(model, train_x), loop_grads(model, test_x)
    torch.testing.assert_close(scores, grads_test @ series @ grads_train.T, rtol=1e-10, atol=1e-12)


def test_arnoldi_equals_expected_lissa_with_full_rank(constant_hessian_setup) -> None:  # noqa: ANN001
    """A constant Hessian makes LiSSA deterministic; Arnoldi with rank P gives the same series exactly."""
    model, train_x, test_x, hessian = constant_hessian_setup
    scale, damping, depth = 10.0 * torch.linalg.eigvalsh(hessian).max().item(), 0.05, 7
    n_params = len(hessian)

    def run(solver: LiSSA | Arnoldi) -> Tensor:
        return InfluenceFunctions(Objective(model), solver).fit(train_x).attribute(test_x)

    lissa = run(LiSSA(damping=damping, scale=scale, depth=depth, batch_size=2))
    arnoldi = run(Arnoldi(damping=damping, scale=scale, depth=depth, iterations=n_params, rank=n_params, batch_size=2))
    torch.testing.assert_close(arnoldi, lissa, rtol=1e-8, atol=1e-12)


def test_arnoldi_applies_the_lissa_polynomial_of_the_full_hessian() -> None:
    """Per-example Hessians differ: Arnoldi's phi(H) v uses the Hessian of the mean training loss."""
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    train_x, test_x = torch.randn(20, 5, dtype=torch.double), torch.randn(3, 5, dtype=torch.double)
    hessian = encoder_hessian(model, train_x)
    scale, damping, depth = 5.0 * torch.linalg.eigvalsh(hessian).abs().max().item(), 1e-2, 30
    n_params = len(hessian)
    solver = Arnoldi(damping=damping, scale=scale, depth=depth, iterations=n_params, rank=n_params, batch_size=7)
    explainer = InfluenceFunctions(Objective(model), solver)
    scores = explainer.fit(train_x).attribute(test_x)
    identity = torch.eye(n_params, dtype=hessian.dtype)
    step = (1 - damping) * identity - hessian / scale
    series = sum(torch.linalg.matrix_power(step, j) for j in range(depth + 1)) / scale
    grads_train, grads_test = loop_grads(model, train_x), loop_grads(model, test_x)
    torch.testing.assert_close(scores, grads_test @ series @ grads_train.T, rtol=1e-7, atol=1e-12)
    # a low rank keeps the largest eigenvalues; the rest are treated as 0
    low_rank = Arnoldi(damping=damping, scale=scale, depth=depth, iterations=n_params, rank=2, batch_size=7)
    low = InfluenceFunctions(Objective(model), low_rank).fit(train_x)
    assert low.ritz_values.shape == (2,)
    assert torch.isclose(low.ritz_values.abs().max(), torch.linalg.eigvalsh(hessian).abs().max(), rtol=1e-6)


@pytest.mark.parametrize("magnitude", [1.0, 1e-4])
def test_arnoldi_truncated_inverse_is_the_damped_inverse_on_the_ritz_space(magnitude: float) -> None:
    """Schioppa et al.'s estimate (Captum's and dattri's): (H + lambda I)^-1 on the top-r eigenvectors, 0 elsewhere.
    Inputs of magnitude 1e-4 make every eigenvalue of H about 1e-8: Arnoldi must still take every step (a stopping
    rule on the absolute residual would end it after one)."""
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    train_x, test_x = torch.randn(20, 5, dtype=torch.double), torch.randn(3, 5, dtype=torch.double)
    train_x, test_x = magnitude * train_x, magnitude * test_x
    hessian = encoder_hessian(model, train_x)
    values, vectors = torch.linalg.eigh(hessian)
    damping, scale = 0.1, 2.0 * values.abs().max().item()  # lambda = damping * scale exceeds every |eigenvalue|
    grads_train, grads_test = loop_grads(model, train_x), loop_grads(model, test_x)
    n_params = len(hessian)
    for rank in (n_params, 3):
        solver = Arnoldi(damping=damping, scale=scale, iterations=n_params, rank=rank, batch_size=7,
                         estimand="truncated_inverse")
        scores = InfluenceFunctions(Objective(model), solver).fit(train_x).attribute(test_x)
        top = values.abs().argsort(descending=True)[:rank]
        u = vectors[:, top]
        inverse = u @ torch.diag(1.0 / (values[top] + damping * scale)) @ u.T
        torch.testing.assert_close(scores, grads_test @ inverse @ grads_train.T, rtol=1e-7, atol=1e-12)
    # with every eigenpair it is Koh & Liang's damped inverse
    full = torch.linalg.inv(hessian + damping * scale * torch.eye(n_params, dtype=hessian.dtype))
    every = InfluenceFunctions(Objective(model), dataclasses.replace(solver, rank=n_params)).fit(train_x)
    torch.testing.assert_close(every.attribute(test_x), grads_test @ full @ grads_train.T, rtol=1e-7, atol=1e-12)
    with pytest.raises(ValueError, match="estimand"):
        Arnoldi(estimand="inverse")
    # negative curvature beyond the damping is refused, not inverted into a negative weight
    from labelfree.attribution.examples.solvers import _TruncatedInverse

    with pytest.raises(ValueError, match="not positive"):
        _TruncatedInverse(solver, torch.tensor([1.0, -2.0 * damping * scale]), torch.eye(2))


def test_influence_functions_do_not_depend_on_test_chunking() -> None:
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    train_x, test_x = torch.randn(20, 5, dtype=torch.double), torch.randn(7, 5, dtype=torch.double)

    def run(test_chunk_size: int | None) -> Tensor:
        explainer = InfluenceFunctions(Objective(model), LiSSA(scale=50.0, depth=10, batch_size=4), seed=1,
                                       test_chunk_size=test_chunk_size)
        return explainer.fit(train_x).attribute(test_x)

    torch.testing.assert_close(run(3), run(None), rtol=1e-12, atol=1e-14)


def test_weighted_hvp_equals_hvp_of_the_repeated_batch() -> None:
    """LiSSA's deduplicated batches: weights = draw counts / batch size give the Hessian of the drawn batch."""
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    x = torch.randn(6, 5, dtype=torch.double)
    draws = torch.tensor([0, 0, 3, 5, 5, 5, 2])
    objective = Objective(model)
    vectors = torch.randn(objective.n_params, 3, dtype=torch.double)
    unique, counts = torch.unique(draws, return_counts=True)
    weighted = objective.hvp(x[unique], vectors, weights=counts.double() / len(draws))
    torch.testing.assert_close(weighted, objective.hvp(x[draws], vectors), rtol=1e-12, atol=1e-12)


def test_hvp_split_over_examples_is_exact() -> None:
    """example_chunk_size only bounds memory: the pieces' weighted Hessians add up to the batch's."""
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    x = torch.randn(7, 5, dtype=torch.double)
    objective = Objective(model)
    vectors = torch.randn(objective.n_params, 3, dtype=torch.double)
    expected = encoder_hessian(model, x) @ vectors
    for size in (1, 3, 7, 50):
        torch.testing.assert_close(objective.hvp(x, vectors, example_chunk_size=size), expected, rtol=1e-10, atol=1e-12)
    weights = torch.rand(7, dtype=torch.double)
    torch.testing.assert_close(objective.hvp(x, vectors, weights=weights, example_chunk_size=2),
                               objective.hvp(x, vectors, weights=weights), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="weights must have shape"):
        objective.hvp(x, vectors, weights=weights[:3])


class PenalisedAutoEncoder(LinearAutoEncoder):
    """Reads the encoder's weights outside its forward (a weight penalty): the split must not be used."""

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        return super().pretext_loss(x) + self.encoder.weight.pow(2).sum()


class ProximalAutoEncoder(LinearAutoEncoder):
    """A proximal penalty at its centre: its gradient vanishes at the current weights, its curvature does not."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centre", self.encoder.weight.detach().clone())

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        return super().pretext_loss(x) + 0.5 * (self.encoder.weight - self.centre).pow(2).sum()


class TiedAutoEncoder(LinearAutoEncoder):
    """The decoder reuses the encoder's weight matrix (transposed)."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder.weight = self.encoder.weight  # the same Parameter, used as z @ W in the loss

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        return (self.encoder(x) @ self.decoder.weight - x).pow(2).mean(1)


class CoupledAutoEncoder(LinearAutoEncoder):
    """Each example's loss also reads the next example's representation: the head couples the batch."""

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        z = self.encoder(x)
        return (self.decoder(z) - x).pow(2).mean(1) + (z * z.roll(1, dims=0)).sum(1)


@pytest.mark.parametrize("model_name", ["linear", "classifier", "mnist"])
def test_split_hessian_equals_the_direct_product(model_name: str) -> None:
    """Splitting at the encoder's output (surrogate with the head's gradient and Hessian) is exact."""
    torch.manual_seed(0)
    y = None
    if model_name == "linear":
        model, x, tolerance = LinearAutoEncoder().double(), torch.randn(7, 5, dtype=torch.double), 1e-10
    elif model_name == "classifier":
        model, x, tolerance = TinyClassifier().double(), torch.randn(7, 5, dtype=torch.double), 1e-10
        y = torch.randint(0, 4, (7,))
    else:
        model, x, tolerance = mnist_autoencoder(0).double(), torch.rand(5, 1, 28, 28, dtype=torch.double), 1e-9
    objective = Objective(model)
    before = snapshot(model)
    vectors = torch.randn(objective.n_params, 6, dtype=torch.double)
    weights = torch.rand(len(x), dtype=torch.double)
    for kwargs in ({}, {"weights": weights}, {"weights": weights, "example_chunk_size": 3}, {"vector_chunk_size": 4}):
        operator = objective.hessian(x, y, split=True, **{k: v for k, v in kwargs.items()})
        assert operator.split
        direct = objective.hvp(x, vectors, y, split=False, **kwargs)
        torch.testing.assert_close(operator.matmul(vectors), direct, rtol=tolerance, atol=tolerance * direct.abs().max())
    if model_name == "linear":  # and both against the exact Hessian
        torch.testing.assert_close(objective.hvp(x, vectors, split=True), encoder_hessian(model, x) @ vectors,
                                   rtol=1e-10, atol=1e-12)
    assert_unchanged(model, before)


def test_split_is_automatic_only_when_it_pays() -> None:
    """Auto splits when the columns to multiply are at least twice the output entries per example (here 2)."""
    model = LinearAutoEncoder().double()
    x = torch.randn(4, 5, dtype=torch.double)
    objective = Objective(model)
    assert objective.hessian(x, columns=4).split
    assert not objective.hessian(x, columns=3).split
    assert not objective.hessian(x).split  # columns unknown
    assert not objective.hessian(x, columns=4, split=False).split
    with pytest.raises(ValueError, match="split must be None"):
        objective.hessian(x, split="yes")


@pytest.mark.parametrize(
    ("model", "wrt", "reason"),
    [
        (PenalisedAutoEncoder(), "encoder", "depends on the parameters outside"),
        (ProximalAutoEncoder(), "encoder", "curvature in the parameters outside"),
        (TiedAutoEncoder(), "encoder", "shares its parameters"),
        (CoupledAutoEncoder(), "encoder", "couples the examples"),
        (ConstantHessianModel(in_dim=5, out_dim=5), "encoder", "batch as first dimension"),
        (LinearAutoEncoder(), "", "whole model"),
    ],
)
def test_split_refuses_what_it_cannot_do_exactly(model: PretextModel, wrt: str, reason: str) -> None:
    """split=True names the reason; auto falls back to the direct product (same numbers as split=False)."""
    model = model.double()
    torch.manual_seed(1)
    x = torch.randn(6, 5, dtype=torch.double)
    objective = Objective(model, wrt=wrt)
    with pytest.raises(ValueError, match=reason):
        objective.hessian(x, split=True)
    vectors = torch.randn(objective.n_params, 4, dtype=torch.double)
    assert not objective.hessian(x, columns=4).split
    torch.testing.assert_close(objective.hvp(x, vectors), objective.hvp(x, vectors, split=False), rtol=0, atol=0)


def test_split_refuses_a_vae_whose_loss_bypasses_forward() -> None:
    """The VAEs call ``encoder.posterior`` (not forward): no split, and the products are the direct ones."""
    from labelfree.models.vae import BetaVAE, BurgessDecoder, BurgessEncoder

    torch.manual_seed(0)
    model = BetaVAE(BurgessEncoder(3), BurgessDecoder(3), beta=2.0).double()
    x = torch.rand(3, 1, 32, 32, dtype=torch.double)
    objective = Objective(model)
    with pytest.raises(ValueError, match="0 times"):
        objective.hessian(x, split=True)
    assert not objective.hessian(x, columns=50).split


@pytest.mark.parametrize(
    "solver",
    [LiSSA(damping=0.01, scale=2.0, depth=6, batch_size=5),
     Arnoldi(damping=0.01, scale=2.0, depth=6, iterations=6, rank=6, batch_size=5)],
    ids=["lissa", "arnoldi"],
)
def test_influence_functions_do_not_depend_on_split_hessian(
    solver: LiSSA | Arnoldi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelfree.attribution.examples import hessian

    surrogate_calls = []
    original = hessian._surrogate_grad
    monkeypatch.setattr(hessian, "_surrogate_grad", lambda o, c: surrogate_calls.append(1) or original(o, c))
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    train_x, test_x = torch.randn(9, 5, dtype=torch.double), torch.randn(4, 5, dtype=torch.double)

    def run(split_hessian: bool) -> torch.Tensor:
        explainer = InfluenceFunctions(Objective(model), solver, split_hessian=split_hessian)
        return explainer.fit(train_x).attribute(test_x)

    split = run(True)
    assert surrogate_calls, "the split was not used"
    surrogate_calls.clear()
    direct = run(False)
    assert not surrogate_calls
    torch.testing.assert_close(split, direct, rtol=1e-9, atol=1e-12)
    # the curvature matters here: without it the estimate would be a multiple of the gradients' products
    objective = Objective(model)
    flat = objective.per_example_grads(test_x) @ objective.per_example_grads(train_x).T
    coefficient = float((flat * split).sum() / (flat * flat).sum())
    assert (split - coefficient * flat).norm() > 0.05 * split.norm()
    with pytest.raises(ValueError, match="split_hessian must be true or false"):
        InfluenceFunctions(Objective(model), split_hessian="auto")


def test_influence_functions_do_not_depend_on_hvp_chunk_size() -> None:
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    train_x, test_x = torch.randn(9, 5, dtype=torch.double), torch.randn(4, 5, dtype=torch.double)

    def run(hvp_chunk_size: int | None) -> torch.Tensor:
        explainer = InfluenceFunctions(Objective(model), LiSSA(damping=0.01, scale=50.0, depth=6, batch_size=5),
                                       hvp_chunk_size=hvp_chunk_size)
        return explainer.fit(train_x).attribute(test_x)

    torch.testing.assert_close(run(2), run(None), rtol=1e-10, atol=1e-12)


def test_unknown_solver_is_rejected() -> None:
    objective = Objective(LinearAutoEncoder())
    with pytest.raises(ValueError, match="solver must be a solver object"):
        InfluenceFunctions(objective, solver="arnoldi")
    with pytest.raises(ValueError, match="instantiate it first"):  # a config node that was not instantiated
        InfluenceFunctions(objective, solver={"_target_": "labelfree.attribution.examples.LiSSA", "depth": 3})


def test_influence_functions_seeded_sampling() -> None:
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    train_x, test_x = torch.randn(20, 5, dtype=torch.double), torch.randn(3, 5, dtype=torch.double)

    def run(seed: int, repeats: int = 1) -> Tensor:
        solver = LiSSA(scale=50.0, depth=20, batch_size=4, repeats=repeats)
        explainer = InfluenceFunctions(Objective(model), solver, seed=seed)
        return explainer.fit(train_x).attribute(test_x)

    first = run(3)
    torch.testing.assert_close(run(3), first, rtol=0, atol=0)
    assert not torch.allclose(run(4), first)
    assert torch.isfinite(run(3, repeats=2)).all()


def test_influence_functions_divergence_is_reported() -> None:
    torch.manual_seed(0)
    model = ConstantHessianModel().double()
    train_x = torch.randn(5, 2, dtype=torch.double)
    explainer = InfluenceFunctions(Objective(model), LiSSA(scale=1e-3, depth=2000, batch_size=2)).fit(train_x)
    with pytest.raises(RuntimeError, match="diverged"):
        explainer.attribute(train_x)


class NegativeCurvatureModel(ConstantHessianModel):
    """The same probes, the loss negated and scaled: a constant negative-definite Hessian (eigenvalues in the
    hundreds to thousands, like those of the trained ECG5000 LSTM's L1 loss)."""

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        return -1000.0 * super().pretext_loss(x, y, perturb)


@pytest.mark.parametrize("solver", [Exact(), Arnoldi(iterations=8, rank=8)])
def test_expected_lissa_refuses_negative_curvature_that_swamps_it(solver) -> None:
    """At the paper's damping 1e-3, scale 1000, depth 100, an eigenvalue far below -damping * scale makes the
    recursion grow along it beyond the float precision: a clear error naming it and what converges."""
    torch.manual_seed(0)
    model = NegativeCurvatureModel()
    train_x = torch.randn(5, 2)
    with pytest.raises(LiSSADivergenceError, match=r"eigenvalue -\d.*e\.g\. damping 1 and scale (\d+)") as caught:
        InfluenceFunctions(Objective(model), solver).fit(train_x)
    suggested = int(re.search(r"damping 1 and scale (\d+)", str(caught.value)).group(1))
    fixed = dataclasses.replace(solver, damping=1.0, scale=float(suggested))
    scores = InfluenceFunctions(Objective(model), fixed).fit(train_x).attribute(train_x)
    assert torch.isfinite(scores).all()


# ----------------------------------------------------------------------------------------------
# Representation-based explainers and the random baseline
# ----------------------------------------------------------------------------------------------


def test_dknn_ranks_by_distance() -> None:
    train = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])
    test = torch.tensor([[0.9, 0.1], [0.0, 0.0]])
    explainer = DKNN(nn.Identity(), eps=1e-6).fit(train)
    scores = explainer.attribute(test)
    expected = 1.0 / (torch.cdist(test, train).pow(2) + 1e-6)
    torch.testing.assert_close(scores, expected)
    assert scores[0].argmax() == 1 and scores[1].argmax() == 0
    assert torch.equal(scores[0].argsort(descending=True), torch.tensor([1, 0, 3, 2]))
    assert torch.isfinite(scores).all() and scores[1, 0] == pytest.approx(1e6)


def test_dknn_zero_distance_is_finite_with_many_points() -> None:
    g = torch.Generator().manual_seed(0)
    train = torch.randn(300, 16, generator=g) * 100  # large norms: the matrix-product shortcut would round off
    scores = DKNN(nn.Identity()).fit(train).attribute(train[:40])
    assert torch.isfinite(scores).all()
    assert torch.equal(scores.argmax(1), torch.arange(40))
    torch.testing.assert_close(scores[torch.arange(40), torch.arange(40)], torch.full((40,), 1e12))  # 1 / eps


def test_simplex_weights_are_convex_and_recover_training_points() -> None:
    g = torch.Generator().manual_seed(0)
    train = torch.randn(200, 4, generator=g)  # d = 4 as in the paper: convex combinations are not unique
    members = torch.randperm(200, generator=g)[:30]
    test = torch.cat([train[members], torch.randn(10, 4, generator=g) * 3])
    explainer = SimplEx(nn.Identity()).fit(train)
    weights = explainer.attribute(test)
    assert weights.shape == (40, 200)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(40))
    assert torch.equal(weights[:30].argmax(1), members)
    assert weights[torch.arange(30), members].median() > 0.9  # most of the weight, not always all of it
    assert explainer.reconstruction_error[:30].max() < 1e-3
    torch.testing.assert_close(
        explainer.reconstruction_error, (weights @ train - test).pow(2).sum(1), rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(SimplEx(nn.Identity()).fit(train).attribute(test), weights, rtol=0, atol=0)


def test_random_is_deterministic_for_a_seed() -> None:
    x_train, x_test = torch.zeros(7, 3), torch.zeros(5, 3)
    first = RandomExampleImportance(seed=1).fit(x_train).attribute(x_test)
    assert first.shape == (5, 7)
    torch.testing.assert_close(RandomExampleImportance(seed=1).fit(x_train).attribute(x_test), first, rtol=0, atol=0)
    assert not torch.equal(RandomExampleImportance(seed=2).fit(x_train).attribute(x_test), first)


# ----------------------------------------------------------------------------------------------
# Contract: errors and registry
# ----------------------------------------------------------------------------------------------


def test_attribute_before_fit_raises(checkpoints) -> None:  # noqa: ANN001
    objective = Objective(mnist_autoencoder(0))
    explainers = [
        TracIn(objective, checkpoints),
        InfluenceFunctions(objective),
        SimplEx(nn.Identity()),
        DKNN(nn.Identity()),
        RandomExampleImportance(0),
    ]
    for explainer in explainers:
        with pytest.raises(RuntimeError, match="before fit"):
            explainer.attribute(torch.zeros(2, 1, 28, 28))


@pytest.mark.parametrize(
    "build",
    [
        lambda o: LiSSA(damping=-1e-3),
        lambda o: LiSSA(scale=0.0),
        lambda o: LiSSA(scale=float("inf")),
        lambda o: LiSSA(depth=0),
        lambda o: LiSSA(batch_size=0),
        lambda o: LiSSA(repeats=0),
        lambda o: Arnoldi(damping=-1e-3),
        lambda o: Arnoldi(iterations=0),
        lambda o: Arnoldi(iterations=3, rank=4),
        lambda o: Arnoldi(batch_size=0),
        lambda o: InfluenceFunctions(o, vector_chunk_size=0),
        lambda o: InfluenceFunctions(o, chunk_size=0),
        lambda o: InfluenceFunctions(o, test_chunk_size=0),
        lambda o: InfluenceFunctions(o, hvp_chunk_size=0),
        lambda o: TracIn(o, []),
        lambda o: TracIn(o, [Checkpoint("c.pt", 1.0)], chunk_size=0),
        lambda o: Checkpoint("c.pt", -1.0),
        lambda o: SimplEx(o.model.encoder, steps=0),
        lambda o: SimplEx(o.model.encoder, lr=-1.0),
        lambda o: SimplEx(o.model.encoder, lr=None),
        lambda o: DKNN(o.model.encoder, eps=0.0),
        lambda o: o.per_example_grads(torch.zeros(2, 5), chunk_size=0),
        lambda o: o.hvp(torch.zeros(2, 5), torch.zeros(3, 1)),
    ],
)
def test_bad_arguments_raise_value_error(build) -> None:  # noqa: ANN001
    with pytest.raises(ValueError):
        build(Objective(LinearAutoEncoder()))


def test_registry() -> None:
    assert set(EXAMPLE_EXPLAINERS) == {"influence_functions", "tracin", "simplex", "dknn", "random"}
    assert requires_loss("influence_functions") and requires_loss("tracin")
    assert not any(requires_loss(name) for name in ["simplex", "dknn", "random"])
    with pytest.raises(ValueError, match="accepted"):
        requires_loss("shapley")


def test_build_example_explainer_wires_the_model(checkpoints) -> None:  # noqa: ANN001
    model = mnist_autoencoder(0)
    objective = Objective(model)
    influence = build_example_explainer("influence_functions", model, seed=3, objective=objective,
                                        solver=LiSSA(depth=2, batch_size=3), chunk_size=8)
    assert isinstance(influence, InfluenceFunctions) and influence.objective is objective
    assert influence.seed == 3 and influence.solver == LiSSA(depth=2, batch_size=3) and influence.chunk_size == 8
    tracin = build_example_explainer("tracin", model, checkpoints=checkpoints, objective=objective)
    assert isinstance(tracin, TracIn) and tracin.objective is objective and tracin.checkpoints == checkpoints
    own = build_example_explainer("tracin", model, checkpoints=checkpoints)  # no objective given: one is built
    assert own.objective.model is model and own.objective.wrt == "encoder"
    simplex = build_example_explainer("simplex", model, objective=objective, steps=5)
    assert isinstance(simplex, SimplEx) and simplex.encoder is model.encoder and simplex.steps == 5
    assert build_example_explainer("dknn", model, eps=1e-3).encoder is model.encoder
    random = build_example_explainer("random", model, seed=4)
    assert isinstance(random, RandomExampleImportance) and random.seed == 4


def test_build_example_explainer_refuses_clearly(checkpoints) -> None:  # noqa: ANN001
    model = mnist_autoencoder(0)
    with pytest.raises(ValueError, match=r"Unknown example explainer 'shapley'; accepted: \['dknn', "):
        build_example_explainer("shapley", model)
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['depth'\] .*accepted: \['chunk_size', .*'solver'"):
        build_example_explainer("influence_functions", model, depth=3)  # a solver setting: solver=LiSSA(depth=3)
    with pytest.raises(ValueError, match="arguments of build_example_explainer"):
        build_example_explainer("dknn", model, encoder=model.encoder)
    with pytest.raises(ValueError, match="needs the checkpoints saved during training"):
        build_example_explainer("tracin", model)
    with pytest.raises(ValueError, match="another model"):
        build_example_explainer("tracin", model, checkpoints=checkpoints, objective=Objective(mnist_autoencoder(1)))
    with pytest.raises(ValueError, match="instantiate it first"):
        build_example_explainer("influence_functions", model, solver={"_target_": "x.LiSSA"})


# ----------------------------------------------------------------------------------------------
# One home for every number: the configs' settings are the library defaults
# ----------------------------------------------------------------------------------------------

EXAMPLE_CONFIGS = sorted(
    path for path in (ROOT / "configs" / "explainer").glob("*.yaml") if OmegaConf.load(path).kind == "example"
)


def _signature_defaults(cls: type) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()}


def test_every_registered_explainer_has_a_config() -> None:
    methods = {OmegaConf.load(path).method for path in EXAMPLE_CONFIGS}
    assert methods == set(EXAMPLE_EXPLAINERS)


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda path: path.stem)
def test_config_settings_are_the_library_defaults(path: Path) -> None:
    """A setting named in configs/explainer/<name>.yaml (and in its solver node) has the value that the
    class's signature gives it: the library default never silently contradicts the config."""
    settings = OmegaConf.to_container(OmegaConf.load(path))
    method = settings.pop("method")
    assert settings.pop("kind") == "example"
    defaults = example_settings(method)
    assert set(settings) <= set(defaults), f"{path.name}: settings the library does not take"
    for name, value in settings.items():
        if isinstance(value, dict) and "_target_" in value:  # a nested object: the solver
            cls = hydra.utils.get_class(value["_target_"])
            own = _signature_defaults(cls)
            for key, setting in value.items():
                if key != "_target_":
                    assert key in own and setting == own[key], f"{path.name}: {name}.{key}={setting!r}, library {own.get(key)!r}"
            # a variant may pick another solver class (influence_functions_arnoldi), never other numbers
            assert hydra.utils.instantiate(value) == cls(), f"{path.name}: {name} is not {cls.__name__}'s defaults"
        else:
            assert value == defaults[name], f"{path.name}: {name}={value!r}, library default {defaults[name]!r}"


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda path: path.stem)
def test_every_config_builds_its_explainer(path: Path, checkpoints) -> None:  # noqa: ANN001
    """The shape the runner uses: instantiate the node (the solver becomes an object), then build."""
    settings = dict(hydra.utils.instantiate(OmegaConf.load(path), _convert_="all"))
    method = settings.pop("method")
    settings.pop("kind")
    explainer = build_example_explainer(method, mnist_autoencoder(0), checkpoints=checkpoints, seed=1, **settings)
    assert isinstance(explainer, EXAMPLE_EXPLAINERS[method])


def test_simplex_works_in_the_encoders_dtype() -> None:
    """A float64 encoder: SimplEx's weights live in float64 too (they were created in float32)."""
    torch.manual_seed(0)
    encoder = nn.Linear(5, 3).double()
    train_x, test_x = torch.randn(8, 5, dtype=torch.double), torch.randn(2, 5, dtype=torch.double)
    scores = SimplEx(encoder, steps=20).fit(train_x).attribute(test_x)
    assert scores.dtype == torch.double and scores.shape == (2, 8)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(2, dtype=torch.double))


def test_exact_solver_applies_the_lissa_polynomial_of_the_explicit_hessian() -> None:
    """Exact forms H and applies phi(H) with every eigenpair; with a deep series it is (H + damping*scale I)^-1."""
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    train_x, test_x = torch.randn(20, 5, dtype=torch.double), torch.randn(3, 5, dtype=torch.double)
    hessian = encoder_hessian(model, train_x)
    n_params = len(hessian)
    scale, damping, depth = 5.0 * torch.linalg.eigvalsh(hessian).abs().max().item(), 1e-2, 30
    grads_train, grads_test = loop_grads(model, train_x), loop_grads(model, test_x)
    identity = torch.eye(n_params, dtype=hessian.dtype)
    step = (1 - damping) * identity - hessian / scale
    series = sum(torch.linalg.matrix_power(step, j) for j in range(depth + 1)) / scale
    explainer = InfluenceFunctions(Objective(model), Exact(damping=damping, scale=scale, depth=depth, batch_size=7))
    scores = explainer.fit(train_x).attribute(test_x)
    torch.testing.assert_close(scores, grads_test @ series @ grads_train.T, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(explainer.ritz_values, torch.linalg.eigvalsh(hessian), rtol=1e-7, atol=1e-10)
    # a series deep enough that (1 - damping - mu/scale)^(depth+1) underflows: the damped inverse
    deep = InfluenceFunctions(Objective(model), Exact(damping=0.5, scale=scale, depth=2000)).fit(train_x)
    inverse = torch.linalg.inv(hessian + 0.5 * scale * identity)
    torch.testing.assert_close(deep.attribute(test_x), grads_test @ inverse @ grads_train.T, rtol=1e-7, atol=1e-12)
    with pytest.raises(ValueError, match="max_params"):
        InfluenceFunctions(Objective(model), Exact(max_params=n_params - 1)).fit(train_x)
