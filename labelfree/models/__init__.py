"""Encoders, decoders, pretext perturbations and losses."""

from labelfree.models.autoencoder import AutoEncoder, MNISTDecoder, MNISTEncoder
from labelfree.models.base import PretextModel
from labelfree.models.pretext import GaussianNoise, Identity, RandomMask, make_perturbation

__all__ = [
    "AutoEncoder",
    "GaussianNoise",
    "Identity",
    "MNISTDecoder",
    "MNISTEncoder",
    "PretextModel",
    "RandomMask",
    "make_perturbation",
]
