"""Pretext perturbations applied to the inputs during training only (Crabbé & van der Schaar, 2022)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Identity(nn.Module):
    """Reconstruction: the input is left as it is."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class GaussianNoise(nn.Module):
    """Denoising: x + std * N(0, 1) (the paper: std = 0.3)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        if std < 0:
            raise ValueError(f"GaussianNoise std must be >= 0, got {std}")
        self.std = std

    def forward(self, x: Tensor) -> Tensor:
        return x + self.std * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"std={self.std}"


class RandomMask(nn.Module):
    """Inpainting: each input feature is set to 0 with probability ``prob`` (the paper: 0.2)."""

    def __init__(self, prob: float) -> None:
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"RandomMask prob must be in [0, 1), got {prob}")
        self.prob = prob

    def forward(self, x: Tensor) -> Tensor:
        keep = torch.rand_like(x) >= self.prob
        return x * keep

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


PERTURBATIONS = {"reconstruction": Identity, "denoising": GaussianNoise, "inpainting": RandomMask}


def make_perturbation(name: str, **kwargs: float) -> nn.Module:
    """Build the pretext perturbation called ``name`` (one of :data:`PERTURBATIONS`)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"Unknown pretext task {name!r}; accepted: {sorted(PERTURBATIONS)}")
    return PERTURBATIONS[name](**kwargs)
