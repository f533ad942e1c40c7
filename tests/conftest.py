"""Shared fixtures: tiny MNIST-format data on disk and Hydra-composed configs; no network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WANDB_MODE", "offline")

from cifar_fixture import write_cifar_npz  # noqa: E402
from dsprites_fixture import write_dsprites_npz  # noqa: E402
from ecg_fixture import write_ecg5000  # noqa: E402
from mnist_fixture import write_mnist_idx  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A data folder holding tiny, learnable data sets in the real on-disk formats: MNIST (torchvision's
    layout), ECG5000 (UCR tsv), CIFAR-10 (the compact npz form) and dSprites (the subset npz form)."""
    root = write_mnist_idx(tmp_path_factory.mktemp("data"), n_train=400, n_test=200, seed=0)
    write_ecg5000(root, n_train=40, n_test=60, fmt="tsv", seed=0)
    write_cifar_npz(root, n_train=100, n_test=50, seed=0)
    write_dsprites_npz(root, n=160, form="subset", seed=0)
    return root


@pytest.fixture
def compose_config(tiny_data_dir, tmp_path):
    """compose_config(*overrides) -> DictConfig through Hydra's compose API, on the tiny data."""
    from hydra import compose, initialize_config_dir

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            return compose(
                "run",
                overrides=[
                    f"paths.data_dir={tiny_data_dir}",
                    f"paths.cache_dir={tmp_path / 'cache'}",
                    f"paths.output_dir={tmp_path / 'outputs'}",
                    "dataset.download=false",
                    *overrides,
                ],
            )

    return _compose
