"""The disentangled-VAE protocol, the library part: unit-map metrics on constructed maps and per-unit
attribution against explaining one output by hand.

The study (config composition, the runner's refusals, caching, aggregation) is tested in
tests/studies/test_disvae.py, the smoke runs of both experiments in tests/e2e/test_smoke.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import GradientShap, IntegratedGradients
from scipy.stats import entropy as scipy_entropy
from scipy.stats import spearmanr

from labelfree.protocols.disvae import METRICS, disvae_metrics, kl_per_unit, unit_saliency
from labelfree.attribution.features import LabelFreeAttribution
from labelfree.metrics import (
    active_units,
    pooled_unit_correlation,
    unit_correlation,
    unit_cosine,
    unit_entropy,
    unit_shares,
)
from labelfree.models.vae import BurgessEncoder


# ------------------------------------------------------------------------------------------ metrics
def test_identical_unit_maps_correlate_perfectly():
    torch.manual_seed(0)
    maps = torch.rand(5, 1, 1, 8, 8).expand(5, 4, 1, 8, 8)
    for method in ("pearson", "spearman"):
        torch.testing.assert_close(unit_correlation(maps, method), torch.ones(5, dtype=torch.float64))
        assert pooled_unit_correlation(maps, method) == pytest.approx(1.0)
    torch.testing.assert_close(unit_cosine(maps), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(unit_entropy(maps), torch.full((5, 64), math.log(4), dtype=torch.float64))
    assert (active_units(maps) == 0).all(), "equal shares (exactly 1/d) are not above 1/d"


def test_saliency_carried_by_one_unit_per_pixel_gives_one_active_unit_and_zero_entropy():
    torch.manual_seed(1)
    n, d, p = 3, 4, 50
    owner = torch.randint(0, d, (n, p))
    maps = torch.zeros(n, d, p).scatter_(1, owner[:, None, :], torch.rand(n, 1, p) + 0.1)
    assert (active_units(maps) == 1).all()
    assert (unit_entropy(maps) == 0).all()
    shares = unit_shares(maps)
    assert torch.equal(shares.argmax(dim=2), owner)


def test_metrics_match_numpy_and_scipy_per_image():
    torch.manual_seed(2)
    maps = torch.rand(4, 3, 1, 6, 6) ** 3
    flat = maps.reshape(4, 3, -1).numpy().astype(np.float64)
    pairs = [(j, k) for j in range(3) for k in range(3) if j != k]
    pearson = [np.mean([np.corrcoef(f[j], f[k])[0, 1] for j, k in pairs]) for f in flat]
    spearman = [np.mean([spearmanr(f[j], f[k])[0] for j, k in pairs]) for f in flat]
    cosine = [np.mean([f[j] @ f[k] / np.linalg.norm(f[j]) / np.linalg.norm(f[k]) for j, k in pairs]) for f in flat]
    np.testing.assert_allclose(unit_correlation(maps, "pearson").numpy(), pearson, rtol=1e-10)
    np.testing.assert_allclose(unit_correlation(maps, "spearman").numpy(), spearman, rtol=1e-10)
    np.testing.assert_allclose(unit_cosine(maps).numpy(), cosine, rtol=1e-10)
    np.testing.assert_allclose(unit_entropy(maps).numpy(), scipy_entropy(flat, axis=1), rtol=1e-10)
    pooled = flat.transpose(1, 0, 2).reshape(3, -1)
    expected = np.mean([np.corrcoef(pooled[j], pooled[k])[0, 1] for j, k in pairs])
    assert pooled_unit_correlation(maps) == pytest.approx(expected, rel=1e-10)
    shares = flat / flat.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(active_units(maps).numpy(), (shares > 1 / 3).sum(axis=1))


def test_pixels_without_saliency_and_constant_maps_are_left_out():
    maps = torch.zeros(2, 3, 5)
    maps[:, 0, :3] = torch.tensor([1.0, 2.0, 3.0])
    maps[:, 1, :3] = torch.tensor([2.0, 4.0, 6.5])  # unit 2 stays all-zero: a constant map
    assert torch.isnan(unit_entropy(maps)[:, 3:]).all() and torch.isnan(active_units(maps)[:, 3:]).all()
    assert not torch.isnan(unit_entropy(maps)[:, :3]).any()
    only_pair = float(np.corrcoef([1, 2, 3, 0, 0], [2, 4, 6.5, 0, 0])[0, 1])
    torch.testing.assert_close(unit_correlation(maps), torch.full((2,), only_pair, dtype=torch.float64))
    frame = disvae_metrics([maps]).set_index("metric")
    assert frame.loc["entropy", "n"] == 6 and frame.loc["pearson", "value"] == pytest.approx(only_pair)


def test_bad_maps_give_one_clear_error():
    with pytest.raises(ValueError, match="d >= 2"):
        unit_correlation(torch.rand(3, 1, 10))
    with pytest.raises(ValueError, match="non-negative"):
        unit_entropy(-torch.rand(3, 2, 10))
    with pytest.raises(ValueError, match="Unknown correlation"):
        unit_correlation(torch.rand(3, 2, 10), "kendall")


def test_streamed_metrics_equal_the_metrics_of_all_maps_at_once():
    torch.manual_seed(3)
    maps = torch.rand(10, 3, 1, 5, 5) * (torch.rand(10, 1, 1, 5, 5) > 0.3)
    whole = disvae_metrics([maps]).set_index("metric")
    streamed = disvae_metrics(maps.split(3)).set_index("metric")
    pd.testing.assert_frame_equal(whole, streamed, check_exact=False, rtol=1e-9)
    assert list(whole.index) == [m for m in METRICS if m != "collapsed_units"]
    capped = disvae_metrics(maps.split(3), pooled_max_images=4).set_index("metric")
    assert capped.loc["pearson_pooled", "value"] == pytest.approx(pooled_unit_correlation(maps[:4]))
    assert capped.loc["pearson_pooled", "n"] == 4


# ------------------------------------------------------------------------------------- attribution
@pytest.fixture
def encoder() -> BurgessEncoder:
    torch.manual_seed(4)
    return BurgessEncoder(latent_dim=3, image_size=32).eval()


def test_per_unit_gradient_shap_equals_explaining_one_output_by_hand(encoder):
    x = torch.rand(4, 1, 32, 32)
    black = torch.zeros_like(x)
    for unit in range(3):
        np.random.seed(7)
        torch.manual_seed(7)
        ours = LabelFreeAttribution(GradientShap(encoder)).attribute_units(x, units=[unit], baselines=black, n_samples=6)[:, 0]
        np.random.seed(7)
        torch.manual_seed(7)
        by_hand = GradientShap(lambda inputs, j=unit: encoder(inputs)[:, j]).attribute(x, baselines=black, n_samples=6)
        mu = encoder(x)[:, unit].detach().view(-1, 1, 1, 1)
        torch.testing.assert_close(ours, mu * by_hand)


def test_unit_saliency_stream_is_the_absolute_per_unit_map_summed_over_channels(encoder):
    x = torch.rand(5, 1, 32, 32)
    explainer = LabelFreeAttribution(IntegratedGradients(encoder))
    batches = list(unit_saliency(explainer, x, 0.0, {"n_steps": 8}, batch_size=2, channel_dim=1))
    assert [b.shape for b in batches] == [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]
    for unit in range(3):
        by_hand = IntegratedGradients(lambda inputs, j=unit: encoder(inputs)[:, j]).attribute(x, baselines=0.0, n_steps=8)
        mu = encoder(x)[:, unit].detach().view(-1, 1, 1, 1)
        torch.testing.assert_close(torch.cat(batches)[:, unit], (mu * by_hand).abs()[:, 0], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="cannot explain latent units"):
        next(unit_saliency(IntegratedGradients(encoder), x, 0.0, {}, batch_size=2))


def test_kl_per_unit_is_the_mean_kl_of_each_unit(encoder):
    x = torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        mu, logvar = encoder.posterior(x)
    expected = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean(dim=0)
    torch.testing.assert_close(kl_per_unit(encoder, x, batch_size=4), expected)
