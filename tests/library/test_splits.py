"""build_dataset: the per-dataset builders, the paper's ECG5000 splits and the masking baselines."""

from __future__ import annotations

import pytest
import torch

from labelfree.baselines import gaussian_blur
from labelfree.data.splits import baseline_like, build_dataset, make_baseline

ECG = {"name": "ecg5000", "download": False, "val_fraction": 0.2, "test_fraction": 0.2,
       "baseline": {"kind": "mean_train"}, "channel_dim": -1}
CIFAR = {"name": "cifar10", "download": False, "val_fraction": 0.1, "train_per_class": None, "test_per_class": None,
         "baseline": {"kind": "blur", "kernel_size": 5, "sigma": 1.0}, "channel_dim": 1}


def test_ecg5000_feature_split_trains_on_normal_and_explains_abnormal(tiny_data_dir):
    data = build_dataset(ECG, tiny_data_dir, seed=3, purpose="features")
    assert data.variant == "features"
    assert (data.train_y == 0).all() and (data.val_y == 0).all() and (data.test_y == 1).all()
    assert data.train_x.shape[1:] == (140, 1)
    assert torch.allclose(data.baseline, data.train_x.mean(dim=0))
    assert baseline_like(data.baseline, data.test_x[:3]).shape == (3, 140, 1)


def test_ecg5000_example_split_uses_all_beats(tiny_data_dir):
    data = build_dataset(ECG, tiny_data_dir, seed=3, purpose="examples")
    assert data.variant == "examples"
    n = len(data.train_x) + len(data.val_x) + len(data.test_x)
    assert n == 100 and len(data.test_x) == 20
    assert set(data.test_y.tolist()) == {0, 1}


def test_cifar10_blur_baseline_and_determinism(tiny_data_dir):
    a = build_dataset(CIFAR, tiny_data_dir, seed=1)
    b = build_dataset(CIFAR, tiny_data_dir, seed=1)
    assert a.train_x.shape[1:] == (3, 32, 32) and torch.equal(a.train_x, b.train_x)
    x = a.test_x[:2]
    assert torch.allclose(baseline_like(a.baseline, x), gaussian_blur(x, 5, 1.0))


def test_mnist_resized_to_32(tiny_data_dir):
    config = {"name": "mnist", "download": False, "val_fraction": 0.1, "baseline": 0.0, "channel_dim": 1,
              "image_size": 32}
    data = build_dataset(config, tiny_data_dir, seed=0)
    assert data.train_x.shape[1:] == (1, 32, 32) and data.train_x.min() >= 0 and data.train_x.max() <= 1


@pytest.mark.parametrize("spec", ["black", {"kind": "median"}, True])
def test_unknown_baseline_is_refused(spec):
    with pytest.raises(ValueError, match="Unknown masking baseline"):
        make_baseline(spec, torch.zeros(2, 3))


def test_unknown_purpose_and_dataset(tiny_data_dir):
    with pytest.raises(ValueError, match="Unknown data purpose"):
        build_dataset(ECG, tiny_data_dir, seed=0, purpose="train")
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'; accepted"):
        build_dataset({**ECG, "name": "svhn"}, tiny_data_dir, seed=0)
