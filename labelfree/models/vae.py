"""Disentangled VAEs (Crabbé & van der Schaar, 2022, "VAEs"): the Burgess et al. (2018) architecture with the
beta-VAE (Higgins et al., 2017) and beta-TCVAE (Chen et al., 2018) losses.

Encoder: ``n_conv`` convolutions (4x4, stride 2, padding 1, 32 channels, ReLU) take an image of side
``image_size = base * 2^n_conv`` down to ``32 x base x base`` (base 4: three layers for 32x32 MNIST, four
for 64x64 dSprites), then Linear(512 -> 256)-ReLU-Linear(256 -> 256)-ReLU-Linear(256 -> 2d) gives the mean
``mu`` and log-variance ``logvar`` of the Gaussian posterior q(z|x) = N(mu, diag(exp(logvar))). The decoder
mirrors it with transposed convolutions and returns Bernoulli logits.

The *explained* representation is the posterior mean: ``model.encoder(x) -> mu [n, d]`` (so
:class:`~labelfree.attribution.features.LabelFreeAttribution` and its per-unit variant work unchanged);
``model.encoder.posterior(x) -> (mu, logvar)``.

Losses, per example (``pretext_loss -> Tensor[n]``), with the Bernoulli reconstruction term
``rec(x) = sum_pixels BCE(sigmoid(dec(z)), x)``:

* beta-VAE:   rec + beta * KL(q(z|x) || N(0, I)),  KL = 1/2 sum_k (mu_k^2 + exp(logvar_k) - 1 - logvar_k).
* beta-TCVAE: rec + alpha * MI + beta * TC + gamma * dimKL, the decomposition of the KL term
  E[log q(z|x) - log p(z)] into
  MI = log q(z|x) - log q(z),  TC = log q(z) - sum_k log q(z_k),  dimKL = sum_k log q(z_k) - log p(z_k),
  where the aggregate posterior q(z) = 1/N sum_n q(z|x_n) and its marginals are estimated on the minibatch
  (:func:`log_aggregate_posterior`: minibatch-stratified ``mss`` or minibatch-weighted ``mws`` sampling,
  Chen et al. 2018, Appendix C). The paper: alpha = gamma = 1.

``perturb=True`` (training and validation) samples z = mu + exp(logvar / 2) * eps (reparameterisation);
``perturb=False`` uses z = mu, so the loss is deterministic (what loss-based explainers differentiate).
The TC-VAE estimates of log q(z) couple the examples of a batch, so :attr:`BetaTCVAE.per_example_loss` is
False: its per-example values depend on the other examples in the batch and influence functions / TracIn,
which need a loss that is a sum of independent per-example terms, are not defined for it.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelfree.models.base import PretextModel

__all__ = [
    "BetaTCVAE",
    "BetaVAE",
    "BurgessDecoder",
    "BurgessEncoder",
    "ESTIMATORS",
    "VAE",
    "bernoulli_reconstruction",
    "gaussian_kl",
    "gaussian_log_density",
    "log_aggregate_posterior",
    "tc_decomposition",
]

ESTIMATORS = ("mss", "mws")
_LOG_2PI = math.log(2 * math.pi)


def _n_convs(image_size: int, base_size: int) -> int:
    """Number of stride-2 layers that take ``image_size`` down to ``base_size`` (``image_size = base * 2^k``, k >= 1)."""
    ratio = image_size / base_size
    k = round(math.log2(ratio)) if ratio >= 1 else 0
    if k < 1 or base_size * 2**k != image_size:
        raise ValueError(
            f"image_size must be base_size * 2^k with k >= 1 (base_size {base_size}: 8, 16, 32, 64, ...), got {image_size}"
        )
    return k


class BurgessEncoder(nn.Module):
    """Burgess et al.'s Gaussian encoder: ``x [n, C, S, S] -> mu [n, d]`` (``forward``) and ``posterior`` ``(mu, logvar)``.

    Args:
        latent_dim: d.
        image_size: S (32: three conv layers, 64: four).
        n_channels: C.
        hidden_channels: channels of every convolution (32).
        kernel_size: of every convolution (4; stride 2, padding 1 halve the side exactly).
        hidden_dim: units of the two hidden linear layers (256).
        base_size: side of the last feature map (4).
    """

    def __init__(self, latent_dim: int, image_size: int = 32, n_channels: int = 1, hidden_channels: int = 32,
                 kernel_size: int = 4, hidden_dim: int = 256, base_size: int = 4) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim
        padding = (kernel_size - 2) // 2  # with stride 2: output side = input side / 2
        layers: list[nn.Module] = []
        channels = n_channels
        for _ in range(_n_convs(image_size, base_size)):
            layers += [nn.Conv2d(channels, hidden_channels, kernel_size, stride=2, padding=padding), nn.ReLU()]
            channels = hidden_channels
        self.conv = nn.Sequential(*layers)
        self.linear = nn.Sequential(
            nn.Flatten(),
            nn.Linear(hidden_channels * base_size * base_size, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, 2 * latent_dim),
        )

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x), each ``[n, d]``."""
        mu, logvar = self.linear(self.conv(x)).chunk(2, dim=1)
        return mu, logvar

    def forward(self, x: Tensor) -> Tensor:
        """The explained representation: the posterior mean ``mu [n, d]``."""
        return self.posterior(x)[0]


class BurgessDecoder(nn.Module):
    """Mirror of :class:`BurgessEncoder`: ``z [n, d] -> logits [n, C, S, S]`` of a Bernoulli per pixel."""

    def __init__(self, latent_dim: int, image_size: int = 32, n_channels: int = 1, hidden_channels: int = 32,
                 kernel_size: int = 4, hidden_dim: int = 256, base_size: int = 4) -> None:
        super().__init__()
        padding = (kernel_size - 2) // 2
        n_convs = _n_convs(image_size, base_size)
        self.linear = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_channels * base_size * base_size), nn.ReLU(),
            nn.Unflatten(1, (hidden_channels, base_size, base_size)),
        )
        layers: list[nn.Module] = []
        for i in range(n_convs):
            last = i == n_convs - 1
            layers.append(nn.ConvTranspose2d(hidden_channels, n_channels if last else hidden_channels, kernel_size,
                                             stride=2, padding=padding))
            if not last:
                layers.append(nn.ReLU())
        self.conv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.conv(self.linear(z))


# ------------------------------------------------------------------------------------------ losses
def bernoulli_reconstruction(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) of a Bernoulli per pixel, summed over pixels: ``[n]`` (``x`` in [0, 1])."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) = 1/2 sum_k (mu_k^2 + exp(logvar_k) - 1 - logvar_k): ``[n]``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) elementwise (broadcasting)."""
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def _log_importance_weights(batch_size: int, dataset_size: int, estimator: str, device: torch.device,
                            dtype: torch.dtype) -> Tensor:
    """log w[i, j]: the weight of q(z_i | x_j) in the estimate of q(z_i) from a batch of M = ``batch_size``.

    ``mws`` (minibatch-weighted sampling): w = 1 / (N M) everywhere. ``mss`` (minibatch-stratified sampling,
    Chen et al. 2018, C.2): the batch is read as z_i's own example (weight 1/N), M - 2 other examples
    (weight 1/(M-1)) and one example standing for the N - M + 1 unseen ones (weight (N-M+1)/(N(M-1)));
    here that one is j = i + 1 (mod M). Every row of ``mss`` weights sums to 1. N is raised to M when a
    batch is larger than the data set (a validation batch of a tiny data set). M = 1: q(z) ~ q(z|x).
    """
    n, m = max(int(dataset_size), batch_size), batch_size
    if m == 1:
        return torch.zeros(1, 1, device=device, dtype=dtype)
    if estimator == "mws":
        return torch.full((m, m), -math.log(n * m), device=device, dtype=dtype)
    weights = torch.full((m, m), 1.0 / (m - 1), device=device, dtype=dtype)
    rows = torch.arange(m, device=device)
    weights[rows, rows] = 1.0 / n
    weights[rows, (rows + 1) % m] = (n - m + 1) / (n * (m - 1))
    return weights.log()


def log_aggregate_posterior(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int,
                            estimator: str = "mss") -> tuple[Tensor, Tensor]:
    """Minibatch estimates of log q(z_i) and of sum_k log q(z_ik), each ``[n]``.

    With ``L[i, j, k] = log q(z_ik | x_j)`` and the log-weights ``log w[i, j]`` of :func:`_log_importance_weights`:
    ``log q(z_i) = logsumexp_j (log w[i, j] + sum_k L[i, j, k])`` and
    ``log q(z_ik) = logsumexp_j (log w[i, j] + L[i, j, k])``.

    Args:
        z: samples ``[n, d]`` (z_i drawn from q(z|x_i)); mu, logvar: ``[n, d]`` of the same batch.
        dataset_size: N, the number of training examples.
        estimator: ``mss`` or ``mws``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {estimator!r}; accepted: {list(ESTIMATORS)}")
    if dataset_size is None or int(dataset_size) < 1:
        raise ValueError(f"dataset_size (N, the number of training examples) must be >= 1, got {dataset_size!r}")
    pairwise = gaussian_log_density(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # [i, j, k]
    log_w = _log_importance_weights(len(z), int(dataset_size), estimator, z.device, z.dtype)
    log_qz = torch.logsumexp(log_w + pairwise.sum(dim=2), dim=1)
    log_prod_qzk = torch.logsumexp(log_w[:, :, None] + pairwise, dim=1).sum(dim=1)
    return log_qz, log_prod_qzk


def tc_decomposition(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int,
                     estimator: str = "mss") -> tuple[Tensor, Tensor, Tensor]:
    """Per-example (MI, TC, dimension-wise KL), each ``[n]``; their sum is log q(z|x) - log p(z).

    MI = log q(z|x) - log q(z); TC = log q(z) - sum_k log q(z_k); dimKL = sum_k log q(z_k) - log p(z),
    p = N(0, I), with the minibatch estimates of :func:`log_aggregate_posterior`.
    """
    log_qz_x = gaussian_log_density(z, mu, logvar).sum(dim=1)
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(dim=1)
    log_qz, log_prod_qzk = log_aggregate_posterior(z, mu, logvar, dataset_size, estimator)
    return log_qz_x - log_qz, log_qz - log_prod_qzk, log_prod_qzk - log_pz


# ------------------------------------------------------------------------------------------ models
class VAE(PretextModel):
    """A Gaussian-encoder, Bernoulli-decoder VAE; subclasses define the regulariser of the loss."""

    def __init__(self, encoder: BurgessEncoder, decoder: BurgessDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def latent(self, mu: Tensor, logvar: Tensor, sample: bool) -> Tensor:
        """z = mu + exp(logvar / 2) * eps (reparameterisation) when ``sample``, else z = mu."""
        if not sample:
            return mu
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction probabilities sigmoid(dec(mu(x))), shaped like ``x``."""
        return torch.sigmoid(self.decoder(self.encoder(x)))

    @abstractmethod
    def loss_terms(self, x: Tensor, sample: bool) -> dict[str, Tensor]:
        """The loss's per-example terms ``[n]`` (``rec`` and the regulariser's terms); z sampled when ``sample``."""

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        """Per-example loss ``[n]``; ``perturb`` samples z (training), else z = mu (deterministic)."""
        return self.combine(self.loss_terms(x, sample=perturb))

    @abstractmethod
    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        """The per-example loss ``[n]`` from the terms of :meth:`loss_terms`."""


class BetaVAE(VAE):
    """beta-VAE: loss = rec + beta * KL(q(z|x) || N(0, I)) (closed form), per example."""

    def __init__(self, encoder: BurgessEncoder, decoder: BurgessDecoder, beta: float = 1.0) -> None:
        super().__init__(encoder, decoder)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.beta = float(beta)

    def loss_terms(self, x: Tensor, sample: bool) -> dict[str, Tensor]:
        mu, logvar = self.encoder.posterior(x)
        z = self.latent(mu, logvar, sample)
        return {"rec": bernoulli_reconstruction(self.decoder(z), x), "kl": gaussian_kl(mu, logvar)}

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        return terms["rec"] + self.beta * terms["kl"]


class BetaTCVAE(VAE):
    """beta-TCVAE: loss = rec + alpha * MI + beta * TC + gamma * dimKL (minibatch estimates), per example.

    Args:
        dataset_size: N, the number of training examples (the weights of the ``mss`` estimator).
        estimator: ``mss`` (minibatch-stratified) or ``mws`` (minibatch-weighted: the authors' code, ``is_mss=False``,
            and the choice of ``configs/model/tc_vae.yaml``).
    """

    #: The estimates of log q(z) use every example of the batch: not a sum of per-example terms.
    per_example_loss = False

    def __init__(self, encoder: BurgessEncoder, decoder: BurgessDecoder, dataset_size: int, beta: float = 1.0,
                 alpha: float = 1.0, gamma: float = 1.0, estimator: Literal["mss", "mws"] = "mss") -> None:
        super().__init__(encoder, decoder)
        for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"Unknown estimator {estimator!r}; accepted: {list(ESTIMATORS)}")
        if dataset_size is None or isinstance(dataset_size, bool) or int(dataset_size) < 1:
            raise ValueError(
                f"dataset_size (N, the number of training examples of the TC-VAE estimator) must be >= 1, got {dataset_size!r}"
            )
        self.dataset_size, self.estimator = int(dataset_size), estimator
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    def loss_terms(self, x: Tensor, sample: bool) -> dict[str, Tensor]:
        mu, logvar = self.encoder.posterior(x)
        z = self.latent(mu, logvar, sample)
        mi, tc, dim_kl = tc_decomposition(z, mu, logvar, self.dataset_size, self.estimator)
        return {"rec": bernoulli_reconstruction(self.decoder(z), x), "mi": mi, "tc": tc, "dim_kl": dim_kl}

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        return terms["rec"] + self.alpha * terms["mi"] + self.beta * terms["tc"] + self.gamma * terms["dim_kl"]
