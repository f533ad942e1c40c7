"""The paper's MNIST convolutional autoencoder (Crabbé & van der Schaar, 2022) and its pretext variants."""

from __future__ import annotations

from torch import Tensor, nn

from labelfree.models.base import PretextModel


class MNISTEncoder(nn.Module):
    """Conv(1->8,s2,p1)-ReLU-Conv(8->16,s2,p1)-BN-ReLU-Conv(16->32,s2,p0)-ReLU-Linear(288->128)-ReLU-Linear(128->d).

    Maps ``[n, 1, 28, 28]`` images to ``[n, d]`` representations.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=0),
            nn.ReLU(),
        )
        self.linear = nn.Sequential(nn.Flatten(), nn.Linear(288, 128), nn.ReLU(), nn.Linear(128, latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.conv(x))


class MNISTDecoder(nn.Module):
    """Mirror of :class:`MNISTEncoder` with transposed convolutions and a sigmoid: ``[n, d] -> [n, 1, 28, 28]``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.linear = nn.Sequential(
            nn.Linear(latent_dim, 128), nn.ReLU(), nn.Linear(128, 288), nn.ReLU(), nn.Unflatten(1, (32, 3, 3))
        )
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, stride=2, output_padding=0),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.conv(self.linear(z))


class AutoEncoder(PretextModel):
    """An encoder/decoder pair trained to reconstruct ``x`` from ``perturbation(x)``.

    Loss per example: mean squared error over the input features, ``mean_i (dec(enc(x~))_i - x_i)^2``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, perturbation: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.perturbation = perturbation

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def perturb(self, x: Tensor) -> Tensor:
        return self.perturbation(x)

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        inputs = self.perturb(x) if perturb else x
        return (self(inputs) - x).pow(2).flatten(1).mean(dim=1)
