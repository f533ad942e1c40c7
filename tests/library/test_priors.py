"""Attribution priors (issue 21): differentiable label-free attributions equal Captum's, a penalty on them has the
gradient its finite differences say, training with it lowers it, and weight 0 is the plain model."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients

from labelfree.attribution.differentiable import (
    expected_gradients,
    integrated_gradients,
    label_free_attributions,
    unit_attributions,
    unit_saliency_maps,
)
from labelfree.attribution.features import LabelFreeAttribution
from labelfree.models.prior import PriorRegularised
from labelfree.models.registry import build_model
from labelfree.models.vae import BetaVAE, BurgessDecoder, BurgessEncoder
from labelfree.priors import AttributionPrior, gini, step_seconds, total_variation
from labelfree.training import TrainConfig, train

SIZES = dict(image_size=8, base_size=4, hidden_channels=4, hidden_dim=16)  # one conv layer: milliseconds
TINY = {"name": "beta_vae", "beta": 1.0, "latent_dim": 3, **SIZES}


def tiny_vae(seed: int = 0, dtype: torch.dtype = torch.float32) -> BetaVAE:
    torch.manual_seed(seed)
    return BetaVAE(BurgessEncoder(3, **SIZES), BurgessDecoder(3, **SIZES)).to(dtype)


def images(n: int = 6, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ------------------------------------------------------------------------------ differentiable attributions
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_left"])
def test_integrated_gradients_equal_captums_label_free_ones(method):
    encoder, x = tiny_vae(dtype=torch.float64).encoder, images(dtype=torch.float64)
    captum = LabelFreeAttribution(IntegratedGradients(encoder))
    settings = dict(n_steps=7, method=method)
    units = unit_attributions(encoder, x, n_steps=7, integration=method)
    expected_units = captum.attribute_units(x, baselines=0.0, **settings)
    # Captum weighs the steps in float32: equal to float32 precision of the largest value
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))  # noqa: E731
    close(units.detach(), expected_units)
    scalar = label_free_attributions(encoder, x, n_steps=7, integration=method)
    close(scalar.detach(), captum.attribute(x, baselines=0.0, **settings))
    assert units.requires_grad and scalar.requires_grad  # the graph is kept: a penalty on them can be trained
    # with a tensor baseline and in float32 too
    base = torch.full_like(x[:1], 0.25)
    torch.testing.assert_close(integrated_gradients(lambda z: encoder(z)[:, 1], x, base, 5, method).detach(),
                               IntegratedGradients(encoder).attribute(x, base, target=1, n_steps=5, method=method))


def test_expected_gradients_is_the_path_gradient_at_the_drawn_point():
    encoder, x = tiny_vae(dtype=torch.float64).encoder, images(4, dtype=torch.float64)
    references = images(3, seed=5, dtype=torch.float64)
    draws = expected_gradients(encoder, x, references, n_samples=2, generator=torch.Generator().manual_seed(3))
    assert draws.shape == (4, 3, 1, 8, 8)
    again = expected_gradients(encoder, x, references, n_samples=2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(draws, again)
    # an explicit loop with the same draws (references index, then alphas)
    g = torch.Generator().manual_seed(3)
    index, alphas = torch.randint(3, (2, 4), generator=g), torch.rand(2, 4, generator=g, dtype=torch.float64)
    expected = torch.zeros_like(draws)
    for s in range(2):
        for i in range(4):
            ref = references[index[s, i]]
            point = (ref + alphas[s, i] * (x[i] - ref)).unsqueeze(0).requires_grad_(True)
            for j in range(3):
                (grad,) = torch.autograd.grad(encoder(point)[0, j], point)
                expected[i, j] += grad[0] * (x[i] - ref) / 2
    torch.testing.assert_close(draws.detach(), expected)


def test_maps_penalties_on_known_maps():
    maps = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # [1, 2, 2, 2]
    torch.testing.assert_close(total_variation(maps), torch.tensor([[2.0, 0.0]]))
    point = torch.zeros(1, 1, 4)
    point[..., 0] = 5.0
    torch.testing.assert_close(gini(point), torch.tensor([[0.75]]))  # all on one of 4 pixels: 1 - 1/4
    torch.testing.assert_close(gini(torch.ones(1, 1, 4)), torch.tensor([[0.0]]))
    assert unit_saliency_maps(torch.randn(2, 3, 1, 4, 4)).shape == (2, 3, 4, 4)


# -------------------------------------------------------------------------------------- gradient of a prior
@pytest.mark.parametrize("prior", [
    AttributionPrior("total_variation", 1.0, "integrated_gradients", n_steps=4),
    AttributionPrior("sparsity", 1.0, "integrated_gradients", n_steps=3, target="label_free"),
    AttributionPrior("total_variation", 1.0, "expected_gradients", n_steps=2),
])
def test_prior_gradient_is_nonzero_and_equals_finite_differences(prior):
    model, x = tiny_vae(dtype=torch.float64), images(3, dtype=torch.float64)
    weight = model.encoder.conv[0].weight

    def value() -> torch.Tensor:  # the same draws of expected gradients at every evaluation
        return prior(model.encoder, x, torch.Generator().manual_seed(0)).sum()

    (grad,) = torch.autograd.grad(value(), weight)
    assert grad.abs().max() > 0
    direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        weight += eps * direction
        plus = value()
        weight -= 2 * eps * direction
        minus = value()
        weight += eps * direction
    numeric = float((plus - minus) / (2 * eps))
    assert numeric == pytest.approx(float((grad * direction).sum()), rel=1e-5, abs=1e-10)


def test_prior_works_under_no_grad_and_without_a_graph():
    model, x = tiny_vae(), images(3)
    prior = AttributionPrior(weight=1.0, n_steps=3)
    with torch.no_grad():
        value = prior(model.encoder, x)
    assert value.shape == (3,) and not value.requires_grad
    torch.testing.assert_close(value, prior(model.encoder, x).detach())


# --------------------------------------------------------------------------------------------- the wrapper
def test_weight_zero_is_exactly_the_plain_model():
    plain = build_model(TINY)
    torch.manual_seed(0)
    a = build_model(TINY)
    torch.manual_seed(0)
    b = build_model({**TINY, "prior": {"kind": "total_variation", "weight": 0.0}})
    assert type(b) is type(plain) is BetaVAE
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value)
    wrapped = build_model({**TINY, "prior": {"kind": "sparsity", "weight": 0.5, "n_steps": 2}})
    assert isinstance(wrapped, PriorRegularised) and wrapped.prior.kind == "sparsity"
    with pytest.raises(ValueError, match="unknown keys"):
        build_model({**TINY, "prior": {"weight": 1.0, "steps": 3}})
    with pytest.raises(ValueError, match="prior.kind"):
        build_model({**TINY, "prior": {"weight": 1.0, "kind": "smoothness"}})


def test_wrapper_loss_is_the_model_loss_plus_the_weighted_prior_when_training():
    inner, x = tiny_vae(), images(5)
    prior = AttributionPrior("total_variation", 0.3, "integrated_gradients", n_steps=3)
    model = PriorRegularised(inner, prior)
    assert model.encoder is inner.encoder and model.decoder is inner.decoder and model.beta == inner.beta
    torch.testing.assert_close(model.pretext_loss(x, perturb=False), inner.pretext_loss(x, perturb=False))
    torch.manual_seed(4)
    with_prior = model.pretext_loss(x, perturb=True)
    torch.manual_seed(4)
    expected = inner.pretext_loss(x, perturb=True) + 0.3 * prior(inner.encoder, x)
    torch.testing.assert_close(with_prior, expected)
    # max_examples: the first examples' mean penalty added to every example
    limited = PriorRegularised(inner, AttributionPrior("total_variation", 0.3, "integrated_gradients", 3, max_examples=2))
    torch.manual_seed(4)
    got = limited.pretext_loss(x, perturb=True)
    torch.manual_seed(4)
    torch.testing.assert_close(got, inner.pretext_loss(x, perturb=True) + 0.3 * prior(inner.encoder, x[:2]).mean())
    assert set(model.state_dict()) == {f"model.{k}" for k in inner.state_dict()}


def test_training_with_the_prior_lowers_it():
    x = images(48, seed=7)
    x = (x > 0.6).float() * x  # sparse, MNIST-like images
    prior = AttributionPrior("total_variation", 1.0, "integrated_gradients", n_steps=4)
    config = TrainConfig(epochs=15, batch_size=16, lr=3e-3, patience=100, device="cpu")
    values = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        spec = {**TINY, "prior": {**prior.to_dict(), "weight": weight}}
        model = build_model(spec)
        train(model, x[:40], x[40:], config, seed=0)
        encoder = model.encoder
        values[weight] = float(prior(encoder, x, create_graph=False).mean())
    assert values[1.0] < 0.5 * values[0.0], values


def test_step_seconds_times_a_step_and_changes_nothing():
    model = PriorRegularised(tiny_vae(), AttributionPrior(weight=1.0, n_steps=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    seconds = step_seconds(model, images(4), repeats=2)
    assert seconds > 0 and not model.training
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
