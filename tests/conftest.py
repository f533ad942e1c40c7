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

from mnist_fixture import write_mnist_idx  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A data folder holding tiny, learnable MNIST-format files (torchvision's layout)."""
    return write_mnist_idx(tmp_path_factory.mktemp("data"), n_train=400, n_test=200, seed=0)


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
