"""CIFAR-10: the loader (both on-disk forms), the blur baseline, SimCLR augmentations, NT-Xent, SimCLR."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients

from labelfree.attribution.examples import Objective
from labelfree.attribution.features import LabelFreeAttribution
from labelfree.baselines import gaussian_blur, gaussian_kernel1d
from labelfree.data.cifar10 import load_cifar10
from labelfree.data.errors import DataNotFoundError
from labelfree.models.augment import SimCLRAugment, adjust_hue, rgb_to_grayscale
from labelfree.models.simclr import CIFARResNet18, SimCLR, make_simclr, nt_xent
from labelfree.training import TrainConfig, evaluate, train
from tests.fixtures.cifar10 import make_cifar_like, write_cifar_batches, write_cifar_npz

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def as_chw_float(images_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_hwc.transpose(0, 3, 1, 2).astype(np.float32)) / 255.0


# ----------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------


def test_batches_load_to_the_stored_images_and_labels(tmp_path: Path) -> None:
    root = write_cifar_batches(tmp_path, n_per_batch=6, seed=1)
    x, y = load_cifar10(root, train=True)
    parts = [make_cifar_like(6, 1, name) for name in TRAIN_BATCHES]
    assert x.shape == (30, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (30,) and y.dtype == torch.int64
    torch.testing.assert_close(x, as_chw_float(np.concatenate([p[0] for p in parts])), rtol=0, atol=0)
    assert y.tolist() == np.concatenate([p[1] for p in parts]).tolist()

    xt, yt = load_cifar10(root, train=False)
    images, labels = make_cifar_like(6, 1, "test_batch")
    torch.testing.assert_close(xt, as_chw_float(images), rtol=0, atol=0)
    assert yt.tolist() == labels.tolist()
    assert 0.0 <= float(xt.min()) and float(xt.max()) <= 1.0


def test_batch_pixel_order_is_red_green_blue_planes_row_major(tmp_path: Path) -> None:
    root = write_cifar_batches(tmp_path, n_per_batch=3, seed=2)
    with (root / "cifar-10-batches-py" / "test_batch").open("rb") as fh:
        raw = pickle.load(fh, encoding="bytes")[b"data"]  # our own fixture file
    x, _ = load_cifar10(root, train=False)
    for i, c, row, col in [(0, 0, 0, 1), (1, 1, 5, 30), (2, 2, 31, 0), (0, 2, 17, 9)]:
        assert round(float(x[i, c, row, col]) * 255) == int(raw[i, c * 1024 + row * 32 + col])


def test_npz_loads_to_the_stored_images_and_labels(tmp_path: Path) -> None:
    root = write_cifar_npz(tmp_path, n_train=12, n_test=7, seed=3)
    for train, n, split in [(True, 12, "npz_train"), (False, 7, "npz_test")]:
        x, y = load_cifar10(root, train=train)
        images, labels = make_cifar_like(n, 3, split)
        torch.testing.assert_close(x, as_chw_float(images), rtol=0, atol=0)
        assert y.dtype == torch.int64 and y.tolist() == labels.tolist()


def test_python_layout_is_preferred_and_an_incomplete_one_is_skipped(tmp_path: Path) -> None:
    root = write_cifar_npz(write_cifar_batches(tmp_path, n_per_batch=4), n_train=9, n_test=5)
    assert len(load_cifar10(root, train=True)[0]) == 20  # 5 batches of 4, not the npz's 9
    assert len(load_cifar10(root, train=False)[0]) == 4
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    assert len(load_cifar10(root, train=True)[0]) == 9  # incomplete folder: the npz
    assert len(load_cifar10(root, train=False)[0]) == 4  # the test batch is still complete


def test_missing_data_names_what_was_looked_for_and_where(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10(tmp_path, train=True)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for name in TRAIN_BATCHES + [str(tmp_path / "cifar-10-batches-py"), str(tmp_path / "cifar10" / "cifar10_train.npz")]:
        assert name in msg
    assert "download=False" in msg and "LABELFREE_DATA_DIR" in msg
    with pytest.raises(DataNotFoundError, match="test_batch"):
        load_cifar10(tmp_path, train=False)


def test_download_failure_and_success_go_through_torchvision(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    calls = []

    def failing(root, train=True, download=False, **kwargs):
        calls.append((root, train, download))
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", failing)
    with pytest.raises(DataNotFoundError, match="Download failed: RuntimeError: no network"):
        load_cifar10(tmp_path, train=False, download=True)
    assert calls == [(str(tmp_path), False, True)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda root, train, download: write_cifar_batches(root, 2))
    x, y = load_cifar10(tmp_path, train=True, download=True)
    assert x.shape == (10, 3, 32, 32) and y.shape == (10,)


def _write_batch(path: Path, obj: object) -> None:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=2)


@pytest.mark.parametrize(
    "broken, match",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:500]), "cannot unpickle"),
        (lambda p: _write_batch(p, [1, 2, 3]), "expected a dict"),
        (lambda p: _write_batch(p, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"uint8 \[n, 3072\]"),
        (lambda p: _write_batch(p, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "labels span"),
        (lambda p: _write_batch(p, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "labels for 2 images"),
        (lambda p: _write_batch(p, {b"data": os.getcwd, b"labels": []}), "not allowed"),
    ],
)
def test_malformed_batch_is_a_value_error_naming_the_file(tmp_path: Path, broken, match: str) -> None:
    root = write_cifar_batches(tmp_path, n_per_batch=2)
    path = root / "cifar-10-batches-py" / "test_batch"
    broken(path)
    with pytest.raises(ValueError, match=match) as info:
        load_cifar10(root, train=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"images": np.zeros((2, 3, 32, 32), np.uint8), "labels": np.zeros(2, np.int64)}, r"\[n, 32, 32, 3\]"),
        ({"images": np.zeros((2, 32, 32, 3), np.float32), "labels": np.zeros(2, np.int64)}, "uint8"),
        ({"images": np.zeros((2, 32, 32, 3), np.uint8)}, "missing"),
        ({"images": np.zeros((2, 32, 32, 3), np.uint8), "labels": np.array([0, -1])}, "labels span"),
        (None, "cannot read it as npz"),
    ],
)
def test_malformed_npz_is_a_value_error_naming_the_file(tmp_path: Path, arrays, match: str) -> None:
    path = tmp_path / "cifar10" / "cifar10_test.npz"
    path.parent.mkdir()
    if arrays is None:
        path.write_bytes(b"not a zip file")
    else:
        np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match) as info:
        load_cifar10(tmp_path, train=False)
    assert str(path) in str(info.value)


def test_loads_are_fresh_tensors_and_a_rewritten_file_is_reread(tmp_path: Path) -> None:
    root = write_cifar_npz(tmp_path, n_train=4, n_test=4, seed=0)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    x, y = load_cifar10(root, train=False)
    x.zero_(), y.zero_()
    x2, y2 = load_cifar10(root, train=False)
    assert float(x2.abs().sum()) > 0 and y2.tolist() == make_cifar_like(4, 0, "npz_test")[1].tolist()
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written
    write_cifar_npz(tmp_path, n_train=4, n_test=6, seed=1)
    assert len(load_cifar10(root, train=False)[0]) == 6


@pytest.mark.realdata
def test_real_cifar10_npz() -> None:
    data_dir = os.environ.get("LABELFREE_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "cifar10" / "cifar10_test.npz").is_file():
        pytest.skip("LABELFREE_DATA_DIR with cifar10/cifar10_test.npz is not set")
    x, y = load_cifar10(data_dir, train=False)
    assert x.shape == (10000, 3, 32, 32) and y.shape == (10000,)
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    assert y[:6].tolist() == [3, 8, 8, 0, 6, 6]  # the official test_batch order


# ----------------------------------------------------------------------------------------------
# Blur baseline
# ----------------------------------------------------------------------------------------------


def test_gaussian_kernel_is_normalised_gaussian() -> None:
    k = gaussian_kernel1d(21, 5.0, dtype=torch.float64)
    assert k.shape == (21,) and float(k.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(k[10] / k[15]) == pytest.approx(math.exp(25 / 50))
    torch.testing.assert_close(k, k.flip(0))


def test_blur_keeps_a_constant_image_and_the_shape() -> None:
    images = torch.full((2, 3, 32, 32), 0.37)
    images[1] = 0.8
    blurred = gaussian_blur(images)
    assert blurred.shape == images.shape and blurred.dtype == images.dtype
    torch.testing.assert_close(blurred, images)


def test_blur_is_the_2d_convolution_with_the_outer_product_kernel() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    blurred = gaussian_blur(images, kernel_size=21, sigma=5.0)
    k = gaussian_kernel1d(21, 5.0, dtype=torch.float64)
    kernel2d = torch.outer(k, k)
    assert float(kernel2d.sum()) == pytest.approx(1.0)
    row, col = 15, 12  # interior: the 21x21 window stays inside the 32x32 image
    for n, c in [(0, 0), (1, 2)]:
        window = images[n, c, row - 10 : row + 11, col - 10 : col + 11]
        assert float(blurred[n, c, row, col]) == pytest.approx(float((window * kernel2d).sum()), abs=1e-12)
    # Everywhere (reflect padding at the borders too), the same as torchvision's Gaussian blur.
    import torchvision.transforms.functional as TF

    torch.testing.assert_close(blurred, TF.gaussian_blur(images, [21, 21], [5.0, 5.0]))


@pytest.mark.parametrize(
    "kwargs, shape, match",
    [
        ({"kernel_size": 20}, (1, 3, 32, 32), "odd"),
        ({"sigma": 0.0}, (1, 3, 32, 32), "sigma"),
        ({"sigma": -1.0}, (1, 3, 32, 32), "sigma"),
        ({}, (3, 32, 32), r"\[n, C, H, W\]"),
        ({}, (1, 3, 8, 8), "smaller kernel_size"),
    ],
)
def test_blur_rejects_bad_arguments(kwargs, shape, match) -> None:
    with pytest.raises(ValueError, match=match):
        gaussian_blur(torch.rand(shape), **kwargs)


# ----------------------------------------------------------------------------------------------
# Augmentations
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def single_thread():
    """One intra-op thread for tiny networks: on a shared 2-core machine the OpenMP barriers of
    two threads can make small convolutions tens of times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar_images() -> torch.Tensor:
    return as_chw_float(make_cifar_like(32, 0, "npz_train")[0])


def test_augment_shapes_range_and_seeded_determinism(cifar_images: torch.Tensor, single_thread: None) -> None:
    augment = SimCLRAugment()
    torch.manual_seed(0)
    first, second = augment(cifar_images), augment(cifar_images)
    torch.manual_seed(0)
    again = augment(cifar_images)
    assert first.shape == cifar_images.shape
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    per_image_change = (first - second).flatten(1).abs().amax(dim=1)
    assert bool((per_image_change > 1e-3).all())  # two views of every image differ
    assert SimCLRAugment(size=16)(cifar_images).shape == (32, 3, 16, 16)
    assert cifar_images.equal(as_chw_float(make_cifar_like(32, 0, "npz_train")[0]))  # input untouched


def test_augment_identity_flip_and_forced_grayscale(cifar_images: torch.Tensor, single_thread: None) -> None:
    fixed = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0}
    torch.testing.assert_close(SimCLRAugment(flip_p=0.0, **fixed)(cifar_images), cifar_images)
    torch.testing.assert_close(SimCLRAugment(flip_p=1.0, **fixed)(cifar_images), cifar_images.flip(-1))
    gray = SimCLRAugment(grayscale_p=1.0)(cifar_images)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    forced = SimCLRAugment(flip_p=0.0, **{**fixed, "grayscale_p": 1.0})(cifar_images)
    torch.testing.assert_close(forced, rgb_to_grayscale(cifar_images).expand_as(cifar_images))


def test_random_resized_crop_is_a_crop(single_thread: None) -> None:
    # A horizontal ramp cropped to a quarter of the area (half of each side) and resized back to
    # 32 pixels: still a ramp along x with half the slope per output pixel, constant along y.
    ramp = torch.linspace(0.0, 1.0, 32).view(1, 1, 1, 32).expand(6, 3, 32, 32).contiguous()
    crop = SimCLRAugment(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    views = crop(ramp)
    torch.testing.assert_close(views, views[:, :, :1].expand_as(views))
    # Output pixels are half an input pixel apart; the outermost column may fall beyond the last
    # input pixel centre (border value), so the slope is checked on the inner columns.
    torch.testing.assert_close(views[..., 1:31].diff(dim=-1), torch.full((6, 3, 32, 29), 0.5 / 31))
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0


def test_colour_jitter_factors_and_exact_hue(cifar_images: torch.Tensor, single_thread: None) -> None:
    import torchvision.transforms.functional as TF

    fixed = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip_p": 0.0, "grayscale_p": 0.0, "jitter_p": 1.0}
    grey = torch.full((64, 3, 32, 32), 0.5)
    dimmed = SimCLRAugment(brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0, **fixed)(grey)
    factors = dimmed.flatten(1) / 0.5
    assert torch.equal(factors, factors[:, :1].expand_as(factors))  # one brightness factor per image
    assert float(factors.min()) >= 0.6 - 1e-6 and float(factors.max()) <= 1.4 + 1e-6
    assert float(factors[:, 0].std()) > 0.1  # drawn per image
    # Saturation 0 of the factor range keeps a grey image grey; contrast keeps its mean.
    assert torch.equal(SimCLRAugment(brightness=0.0, hue=0.0, **fixed)(grey), grey)
    for shift in (-0.4, 0.1, 0.25):
        torch.testing.assert_close(
            adjust_hue(cifar_images, torch.full((32,), shift)), TF.adjust_hue(cifar_images, shift), atol=1e-5, rtol=0
        )


def test_augment_rejects_bad_settings_and_inputs() -> None:
    with pytest.raises(ValueError, match="jitter_p"):
        SimCLRAugment(jitter_p=1.5)
    with pytest.raises(ValueError, match="crop_scale"):
        SimCLRAugment(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="hue"):
        SimCLRAugment(hue=0.7)
    with pytest.raises(ValueError, match="RGB"):
        SimCLRAugment()(torch.rand(2, 1, 32, 32))


# ----------------------------------------------------------------------------------------------
# NT-Xent
# ----------------------------------------------------------------------------------------------


def test_nt_xent_matches_a_hand_computation() -> None:
    # Pair 0: (1, 0) and (1, 1); pair 1: (0, 1) and (1, -1). Unit vectors u0, u1 (view 1), u2, u3 (view 2).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    tau, r = 0.5, 1 / math.sqrt(2)
    s = {(0, 1): 0.0, (0, 2): r, (0, 3): r, (1, 2): r, (1, 3): -r, (2, 3): 0.0}
    sim = lambda a, b: s[(min(a, b), max(a, b))]  # noqa: E731
    positive = {0: 2, 1: 3, 2: 0, 3: 1}
    terms = []
    for a in range(4):
        denominator = sum(math.exp(sim(a, b) / tau) for b in range(4) if b != a)
        terms.append(-math.log(math.exp(sim(a, positive[a]) / tau) / denominator))
    expected = [(terms[0] + terms[2]) / 2, (terms[1] + terms[3]) / 2]
    # ... and in closed form: exp(r / tau) = exp(sqrt 2).
    e = math.exp(math.sqrt(2))
    assert expected[0] == pytest.approx(math.log(1 + 2 * e) - math.sqrt(2))
    assert expected[1] == pytest.approx(math.log(1 + e + 1 / e) + math.sqrt(2))
    loss = nt_xent(z1, z2, tau)
    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx(expected, abs=1e-12)


def test_nt_xent_symmetry_scale_invariance_and_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(z2, z1))
    torch.testing.assert_close(nt_xent(3.0 * z1, 0.5 * z2), nt_xent(z1, z2))  # cosine similarity
    perm = torch.randperm(6, generator=g)
    torch.testing.assert_close(nt_xent(z1[perm], z2[perm]), nt_xent(z1, z2)[perm])
    # Identical views, mutually orthogonal pairs: l = log(1 + (2n - 2) exp(-1 / tau)) for every pair.
    eye = torch.eye(4, dtype=torch.float64)
    for tau in (0.1, 0.5, 1.0, 2.0):
        expected = math.log(1 + 6 * math.exp(-1 / tau))
        assert nt_xent(eye, eye, tau).tolist() == pytest.approx([expected] * 4)
    assert float(nt_xent(eye[:1], eye[:1])) == 0.0  # one pair: no negatives
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z1, z2, 0.0)


# ----------------------------------------------------------------------------------------------
# SimCLR
# ----------------------------------------------------------------------------------------------


def test_encoder_representation_sizes(single_thread: None) -> None:
    torch.manual_seed(0)
    encoder = CIFARResNet18(width=64).eval()
    with torch.no_grad():
        assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    assert sum(p.numel() for p in encoder.parameters()) == 11_168_832  # the CIFAR ResNet-18
    small = make_simclr(width=8, hidden_dim=32, projection_dim=16).eval()
    with torch.no_grad():
        assert small.encoder(torch.rand(3, 3, 32, 32)).shape == (3, 64)
        assert small(torch.rand(3, 3, 32, 32)).shape == (3, 16)


def test_simclr_loss_contract_and_no_loss_based_explainers(single_thread: None) -> None:
    torch.manual_seed(0)
    model = make_simclr(width=4, hidden_dim=16, projection_dim=8)
    assert isinstance(model, SimCLR) and model.per_example_loss is False
    x = torch.rand(5, 3, 32, 32)
    loss = model.pretext_loss(x)
    assert loss.shape == (5,) and bool(torch.isfinite(loss).all())
    assert model.pretext_loss(x, perturb=False).shape == (5,)
    with pytest.raises(ValueError, match="contrastive.*not defined"):
        Objective(model)


def test_label_free_integrated_gradients_on_the_encoder(cifar_images: torch.Tensor, single_thread: None) -> None:
    torch.manual_seed(0)
    model = make_simclr(width=4, hidden_dim=16, projection_dim=8).eval()
    x = cifar_images[:3]
    baseline = gaussian_blur(x)
    explainer = LabelFreeAttribution(IntegratedGradients(model.encoder))
    attributions = explainer.attribute(x, baselines=baseline, n_steps=64)
    assert attributions.shape == x.shape
    with torch.no_grad():
        h = model.encoder(x)
        gap = (h * h).sum(1) - (h * model.encoder(baseline)).sum(1)
    # Completeness: the attributions add up to g_x(x) - g_x(baseline).
    torch.testing.assert_close(attributions.flatten(1).sum(1), gap, rtol=0.05, atol=0.05 * float(gap.abs().max()))


def test_trainer_lowers_the_simclr_loss(cifar_images: torch.Tensor, single_thread: None) -> None:
    torch.manual_seed(0)
    # Milder views than SimCLR's (no colour jitter) so that a few steps on 24 images visibly learn.
    mild = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0}
    model = make_simclr(width=8, hidden_dim=32, projection_dim=16, augmentation=mild)
    train_x, val_x = cifar_images[:24], cifar_images[24:]

    def loss_on_fixed_views() -> float:
        torch.manual_seed(123)  # the same augmented views before and after training
        return evaluate(model, train_x, None, batch_size=24, perturb=True)

    before = loss_on_fixed_views()
    config = TrainConfig(epochs=10, batch_size=12, lr=3e-3, weight_decay=1e-6, patience=100, device="cpu")
    result = train(model, train_x, val_x, config, seed=0)
    assert len(result.history) == 10 and all(math.isfinite(h["train_loss"]) for h in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert loss_on_fixed_views() < before - 0.1


def test_trainer_runs_simclr_with_the_papers_optimizer(cifar_images: torch.Tensor, single_thread: None) -> None:
    torch.manual_seed(0)
    model = make_simclr(width=4, hidden_dim=16, projection_dim=8)
    config = TrainConfig(
        epochs=2, batch_size=8, optimizer="sgd", lr=0.6, momentum=0.9, nesterov=True,
        scheduler="cosine", weight_decay=1e-6, device="cpu",
    )
    result = train(model, cifar_images[:16], cifar_images[16:], config, seed=0)
    assert [h["lr"] for h in result.history] == pytest.approx([0.6, 0.3])
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in result.history)
