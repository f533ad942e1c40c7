"""Shared fixtures of every floor's tests: tiny data sets on disk in the real formats and Hydra-composed
configs; no network. The repository root is on ``sys.path`` through pytest's ``pythonpath`` (pyproject.toml),
so the tests, their fixtures and the studies import by absolute name (``tests.fixtures``, ``experiments``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import ROOT
from tests.fixtures import write_tiny_data

os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A data folder holding tiny, learnable data sets in the real on-disk formats: MNIST (torchvision's
    layout), ECG5000 (UCR tsv), CIFAR-10 (the compact npz form) and dSprites (the subset npz form): the data
    of the smoke-scale reference tables."""
    return write_tiny_data(tmp_path_factory.mktemp("data"))


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
