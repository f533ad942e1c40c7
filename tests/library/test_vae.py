"""The Burgess et al. VAEs: shapes, the beta-VAE KL against its closed form, the beta-TCVAE minibatch terms
against an explicit loop, the model contract (encoder = posterior mean), builders and the one trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from labelfree.attribution.examples import Objective
from labelfree.models.registry import build_model
from labelfree.models.vae import (
    BetaTCVAE,
    BetaVAE,
    BurgessDecoder,
    BurgessEncoder,
    gaussian_kl,
    log_aggregate_posterior,
    tc_decomposition,
)
from labelfree.training import TrainConfig, train
from tests import ROOT


def _pair(latent_dim: int = 3, image_size: int = 32) -> tuple[BurgessEncoder, BurgessDecoder]:
    torch.manual_seed(0)
    return BurgessEncoder(latent_dim, image_size), BurgessDecoder(latent_dim, image_size)


@pytest.mark.parametrize(("image_size", "n_convs"), [(32, 3), (64, 4)])
def test_burgess_shapes(image_size, n_convs):
    encoder, decoder = _pair(latent_dim=5, image_size=image_size)
    x = torch.rand(7, 1, image_size, image_size)
    mu, logvar = encoder.posterior(x)
    assert mu.shape == logvar.shape == (7, 5)
    assert torch.equal(encoder(x), mu)
    assert decoder(mu).shape == x.shape
    convs = [m for m in encoder.conv if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == n_convs and all(c.out_channels == 32 and c.kernel_size == (4, 4) for c in convs)
    linears = [m for m in encoder.linear if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(512, 256), (256, 256), (256, 10)]


@pytest.mark.parametrize("image_size", [28, 4, 48])
def test_bad_image_size_gives_one_clear_error(image_size):
    with pytest.raises(ValueError, match="image_size must be base_size"):
        BurgessEncoder(3, image_size)


def test_gaussian_kl_matches_closed_form_of_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(dim=1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert torch.allclose(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_beta_vae_loss_is_bernoulli_reconstruction_plus_beta_kl():
    encoder, decoder = _pair()
    model = BetaVAE(encoder, decoder, beta=4.0).eval()
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        mu, logvar = encoder.posterior(x)
        p = torch.sigmoid(decoder(mu))
        rec = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(dim=1)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=1)
        loss = model.pretext_loss(x, perturb=False)
    assert loss.shape == (5,)
    torch.testing.assert_close(loss, rec + 4.0 * kl, rtol=1e-5, atol=1e-3)
    # per example: the loss of a batch is the loss of each example alone
    with torch.no_grad():
        alone = torch.cat([model.pretext_loss(x[i : i + 1], perturb=False) for i in range(5)])
    torch.testing.assert_close(loss, alone, rtol=1e-5, atol=1e-3)


def _explicit_terms(z, mu, logvar, n_data, estimator):
    """MI, TC and dimension-wise KL by explicit loops over i (sample), j (batch example), k (unit)."""
    m, d = z.shape

    def log_normal(v, mean, lv):
        return -0.5 * (math.log(2 * math.pi) + lv + (v - mean) ** 2 / math.exp(lv))

    def weight(i, j):
        if estimator == "mws":
            return 1.0 / (n_data * m)
        if i == j:
            return 1.0 / n_data
        if j == (i + 1) % m:
            return (n_data - m + 1) / (n_data * (m - 1))
        return 1.0 / (m - 1)

    out = []
    for i in range(m):
        zi = [float(v) for v in z[i]]
        log_qz_x = sum(log_normal(zi[k], float(mu[i, k]), float(logvar[i, k])) for k in range(d))
        log_pz = sum(log_normal(zi[k], 0.0, 0.0) for k in range(d))
        q_joint = sum(weight(i, j) * math.exp(sum(log_normal(zi[k], float(mu[j, k]), float(logvar[j, k])) for k in range(d)))
                      for j in range(m))
        log_prod = sum(math.log(sum(weight(i, j) * math.exp(log_normal(zi[k], float(mu[j, k]), float(logvar[j, k])))
                                    for j in range(m))) for k in range(d))
        log_qz = math.log(q_joint)
        out.append((log_qz_x - log_qz, log_qz - log_prod, log_prod - log_pz))
    return torch.tensor(out, dtype=torch.float64).T


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_tc_terms_match_an_explicit_loop(estimator):
    torch.manual_seed(1)
    m, d, n_data = 5, 3, 50
    mu, logvar = 0.7 * torch.randn(m, d, dtype=torch.float64), 0.3 * torch.randn(m, d, dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * torch.randn(m, d, dtype=torch.float64)
    mi, tc, dim_kl = tc_decomposition(z, mu, logvar, n_data, estimator)
    expected = _explicit_terms(z, mu, logvar, n_data, estimator)
    torch.testing.assert_close(torch.stack([mi, tc, dim_kl]), expected)


def test_mss_weights_sum_to_one_and_the_terms_sum_to_the_single_sample_kl():
    torch.manual_seed(2)
    mu, logvar = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    # with every z_i equal to a point where all the batch's densities are 1 the estimate is the sum of the weights
    from labelfree.models.vae import _log_importance_weights

    weights = _log_importance_weights(8, 100, "mss", torch.device("cpu"), torch.float64).exp()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(8, dtype=torch.float64))
    mi, tc, dim_kl = tc_decomposition(z, mu, logvar, 100)
    log_qz_x = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(dim=1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(dim=1)
    torch.testing.assert_close(mi + tc + dim_kl, log_qz_x - log_pz)


def test_aggregate_posterior_of_a_single_example_batch_and_a_dataset_smaller_than_the_batch():
    mu, logvar = torch.zeros(1, 2), torch.zeros(1, 2)
    log_qz, log_prod = log_aggregate_posterior(mu, mu, logvar, dataset_size=1000)
    torch.testing.assert_close(log_qz, Normal(0.0, 1.0).log_prob(mu).sum(dim=1))
    torch.testing.assert_close(log_prod, log_qz)
    big = torch.randn(6, 2)
    assert torch.isfinite(torch.stack(log_aggregate_posterior(big, big, torch.zeros(6, 2), dataset_size=3))).all()
    with pytest.raises(ValueError, match="Unknown estimator"):
        log_aggregate_posterior(big, big, big, 10, estimator="exact")


def test_tc_vae_loss_combines_the_terms_and_couples_the_batch():
    encoder, decoder = _pair()
    model = BetaTCVAE(encoder, decoder, dataset_size=100, beta=6.0, alpha=1.0, gamma=1.0).eval()
    x = torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        terms = model.loss_terms(x, sample=False)
        loss = model.pretext_loss(x, perturb=False)
        alone = model.loss_terms(x[:3], sample=False)
    torch.testing.assert_close(loss, terms["rec"] + terms["mi"] + 6.0 * terms["tc"] + terms["dim_kl"])
    assert loss.shape == (6,)
    torch.testing.assert_close(terms["rec"][:3], alone["rec"])
    assert not torch.allclose(terms["mi"][:3], alone["mi"]), "the minibatch estimates should depend on the other examples"
    assert model.per_example_loss is False and BetaVAE(*_pair()).per_example_loss is True
    with pytest.raises(ValueError, match="couples the examples of a batch"):
        Objective(model)


@pytest.mark.parametrize("name", ["beta_vae", "tc_vae"])
def test_perturb_samples_the_latent_and_no_perturb_is_deterministic(name):
    model = build_model({"name": name, "beta": 2, "latent_dim": 3, "image_size": 32, "dataset_size": 100})
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.pretext_loss(x, perturb=False), model.pretext_loss(x, perturb=False))
        torch.manual_seed(3)
        first = model.pretext_loss(x, perturb=True)
        torch.manual_seed(3)
        again = model.pretext_loss(x, perturb=True)
        other = model.pretext_loss(x, perturb=True)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_builders_read_the_model_configs_and_refuse_a_missing_dataset_size():
    from omegaconf import OmegaConf

    configs = ROOT / "configs" / "model"
    beta = OmegaConf.load(configs / "beta_vae.yaml")
    model = build_model(beta)
    assert isinstance(model, BetaVAE) and model.beta == 1.0 and model.encoder.latent_dim == 3
    tc = OmegaConf.load(configs / "tc_vae.yaml")
    with pytest.raises(ValueError, match="dataset_size"):
        build_model(tc)
    tc.dataset_size, tc.beta, tc.image_size, tc.latent_dim = 500, 10, 64, 6
    model = build_model(tc)
    assert isinstance(model, BetaTCVAE) and model.beta == 10.0 and model.dataset_size == 500
    assert model.encoder(torch.rand(2, 1, 64, 64)).shape == (2, 6)


def test_the_one_trainer_fits_a_vae():
    torch.manual_seed(0)
    x = (torch.rand(64, 1, 32, 32) > 0.7).float()
    model = build_model({"name": "tc_vae", "beta": 1, "latent_dim": 2, "image_size": 32, "dataset_size": 48})
    config = TrainConfig(epochs=3, batch_size=16, lr=1e-3, patience=5, device="cpu")
    result = train(model, x[:48], x[48:], config, seed=0)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
