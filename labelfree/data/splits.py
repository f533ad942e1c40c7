"""Build the train/validation/test tensors of an experiment from its dataset config node."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from labelfree.data.mnist import load_mnist
from labelfree.data.subsets import balanced_subset, train_val_split

log = logging.getLogger(__name__)

DATASETS = ("mnist",)
PURPOSES = ("features", "examples")


@dataclass
class DataSplits:
    """In-memory splits ``x [n, *input_shape]``, ``y [n]`` and the masking ``baseline``.

    ``baseline`` is a scalar, a tensor broadcastable to one input, or a function of a batch that
    returns one baseline per input (a blurred copy); ``channel_dim`` is the dim of a batch summed
    over when features are ranked (1 for images). ``variant`` names the split, so that two checks
    that need differently trained models (ECG5000) never share a cached model.
    """

    name: str
    variant: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    baseline: float | Tensor | Callable[[Tensor], Tensor]
    channel_dim: int | None


def _subset(x: Tensor, y: Tensor, per_class: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if per_class is None:
        return x, y
    idx = balanced_subset(y, int(per_class), seed=seed)
    return x[idx], y[idx]


def build_dataset(config: Mapping[str, Any], data_dir: str | Path, seed: int, purpose: str = "features") -> DataSplits:
    """Load the dataset named ``config['name']`` from ``data_dir`` and split it (deterministic for ``seed``).

    ``purpose`` is the check the data serves (``features`` or ``examples``); datasets whose paper
    protocol trains a different model per check (ECG5000) return a different split for each.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"Unknown data purpose {purpose!r}; accepted: {list(PURPOSES)}")
    name = config.get("name")
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; accepted: {list(DATASETS)}")
    download = bool(config.get("download", False))
    train_x, train_y = load_mnist(data_dir, train=True, download=download)
    test_x, test_y = load_mnist(data_dir, train=False, download=download)
    train_x, train_y = _subset(train_x, train_y, config.get("train_per_class"), seed)
    test_x, test_y = _subset(test_x, test_y, config.get("test_per_class"), seed)
    fit_idx, val_idx = train_val_split(len(train_x), float(config["val_fraction"]), seed=seed)
    log.info("%s: %d train, %d validation, %d test examples", name, len(fit_idx), len(val_idx), len(test_x))
    return DataSplits(
        name=str(name),
        variant="default",
        train_x=train_x[fit_idx],
        train_y=train_y[fit_idx],
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x,
        test_y=test_y,
        baseline=float(config["baseline"]),
        channel_dim=config.get("channel_dim"),
    )


def baseline_like(baseline: float | Tensor | Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
    """The baseline as a tensor shaped like ``inputs`` ``[n, *input_shape]``."""
    if callable(baseline) and not isinstance(baseline, Tensor):
        return baseline(inputs)
    if isinstance(baseline, Tensor):
        return baseline.to(inputs).expand_as(inputs).clone()
    return torch.full_like(inputs, float(baseline))
