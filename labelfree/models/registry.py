"""Build a model of the project from its config node (``configs/model/*.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from labelfree.models.autoencoder import AutoEncoder, MNISTDecoder, MNISTEncoder
from labelfree.models.base import PretextModel
from labelfree.models.pretext import make_perturbation

ARCHITECTURES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {"mnist_conv": (MNISTEncoder, MNISTDecoder)}
MODELS = ("autoencoder",)


def build_model(config: Mapping[str, Any]) -> PretextModel:
    """The model described by ``config`` (keys: name, architecture, latent_dim, pretext, perturbation)."""
    name = config.get("name")
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; accepted: {list(MODELS)}")
    architecture = config.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {architecture!r} for model {name!r}; accepted: {sorted(ARCHITECTURES)}")
    encoder_cls, decoder_cls = ARCHITECTURES[architecture]
    latent_dim = int(config["latent_dim"])
    perturbation = make_perturbation(str(config["pretext"]), **dict(config.get("perturbation") or {}))
    return AutoEncoder(encoder_cls(latent_dim), decoder_cls(latent_dim), perturbation)
