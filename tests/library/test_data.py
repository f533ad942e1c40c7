"""Tests for labelfree.data: the MNIST loader and seeded index subsets."""

from __future__ import annotations

import gzip
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from labelfree.data import DataNotFoundError, balanced_subset, load_mnist, train_val_split
from labelfree.data.mnist import MNIST_FILES, MNIST_N, read_idx
from tests.fixtures.mnist import make_mnist_like, mnist_prototypes, write_idx, write_mnist_idx

ALL_FILES = [name for pair in MNIST_FILES.values() for name in pair]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ----------------------------------------------------------------------------- loading fixtures


@pytest.mark.parametrize("compressed", [True, False])
def test_load_fixture(tmp_path: Path, compressed: bool) -> None:
    root = write_mnist_idx(tmp_path, n_train=50, n_test=30, seed=3, gzip=compressed)
    suffix = ".gz" if compressed else ""
    assert all((root / "MNIST" / "raw" / f"{name}{suffix}").is_file() for name in ALL_FILES)
    before = _snapshot(root)

    protos = mnist_prototypes(3)
    for train, n, stream in ((True, 50, 1), (False, 30, 2)):
        x, y = load_mnist(root, train=train)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.5
        images, labels = make_mnist_like(n, protos, np.random.default_rng([3, stream]))
        assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
        assert torch.equal(x, torch.from_numpy(images).float().div(255).unsqueeze(1))
        assert torch.equal(y[:10], torch.arange(10))
    assert _snapshot(root) == before, "loading must not write into data_dir"


def test_fixture_is_deterministic_and_class_dependent(tmp_path: Path) -> None:
    a = write_mnist_idx(tmp_path / "a", n_train=40, n_test=20, seed=0)
    b = write_mnist_idx(tmp_path / "b", n_train=40, n_test=20, seed=0)
    c = write_mnist_idx(tmp_path / "c", n_train=40, n_test=20, seed=1)
    xa, ya = load_mnist(a, train=True)
    xb, _ = load_mnist(b, train=True)
    xc, _ = load_mnist(c, train=True)
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    # Same-class images are closer to their class mean than to any other class mean.
    flat = xa.flatten(1)
    means = torch.stack([flat[ya == k].mean(0) for k in range(10)])
    assert torch.equal(torch.cdist(flat, means).argmin(1), ya)


def test_loader_returns_fresh_tensors_from_cache(tmp_path: Path) -> None:
    root = write_mnist_idx(tmp_path, n_train=20, n_test=10)
    x1, y1 = load_mnist(root, train=True)
    x1.zero_()
    y1.fill_(7)
    x2, y2 = load_mnist(root, train=True)
    assert float(x2.max()) > 0 and torch.equal(y2[:10], torch.arange(10))


def test_rewritten_file_is_reread(tmp_path: Path) -> None:
    root = write_mnist_idx(tmp_path, n_train=20, n_test=10, seed=0)
    x1, _ = load_mnist(root, train=False)
    write_mnist_idx(root, n_train=20, n_test=12, seed=5)
    x2, _ = load_mnist(root, train=False)
    assert x2.shape[0] == 12 and not torch.equal(x1, x2[:10])


# ----------------------------------------------------------------------------- missing data


def test_missing_files_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_mnist(tmp_path, train=True, download=False)
    msg = str(info.value)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "LABELFREE_DATA_DIR" in msg and "paths.data_dir" in msg and "dataset.download=true" in msg
    assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "MNIST").exists(), "download=False must not create anything"


def test_only_one_file_missing_is_named(tmp_path: Path) -> None:
    root = write_mnist_idx(tmp_path, n_train=20, n_test=10)
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    load_mnist(root, train=True)  # the train split is still complete
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte") as info:
        load_mnist(root, train=False)
    assert "t10k-images" not in str(info.value)


@pytest.mark.parametrize(
    "exc", [urllib.error.URLError("no network"), RuntimeError("Error downloading train-images")]
)
def test_download_failure_gives_clear_error(tmp_path: Path, monkeypatch, exc: Exception) -> None:
    import torchvision.datasets

    calls = []

    def failing_mnist(root, train=True, download=False, **kwargs):
        calls.append((root, train, download))
        raise exc

    monkeypatch.setattr(torchvision.datasets, "MNIST", failing_mnist)
    with pytest.raises(DataNotFoundError) as info:
        load_mnist(tmp_path, train=False, download=True)
    msg = str(info.value)
    assert calls == [(str(tmp_path), False, True)]
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert "Download failed" in msg and "LABELFREE_DATA_DIR" in msg
    assert info.value.__cause__ is exc


def test_download_true_reads_what_torchvision_leaves(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    def fake_mnist(root, train=True, download=False, **kwargs):
        write_mnist_idx(Path(root), n_train=20, n_test=10, gzip=False)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    x, y = load_mnist(tmp_path, train=True, download=True)
    assert x.shape == (20, 1, 28, 28) and y.shape == (20,)


def test_download_not_called_when_files_present(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    root = write_mnist_idx(tmp_path, n_train=20, n_test=10)
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *a, **k: pytest.fail("downloaded"))
    load_mnist(root, train=True, download=True)


# ----------------------------------------------------------------------------- corrupted files


def _raw(root: Path) -> Path:
    return root / "MNIST" / "raw"


def test_corrupted_magic(tmp_path: Path) -> None:
    root = write_mnist_idx(tmp_path, n_train=20, n_test=10, gzip=False)
    path = _raw(root) / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[2:4] = b"\x08\x01"  # claims a 1-D labels file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic"):
        load_mnist(root, train=True)


def test_header_payload_mismatch(tmp_path: Path) -> None:
    root = write_mnist_idx(tmp_path, n_train=20, n_test=10, gzip=True)
    path = _raw(root) / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as fh:
        data = bytearray(fh.read())
    data[4:8] = (11).to_bytes(4, "big")  # header says 11 images, payload holds 10
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(data))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz.*payload"):
        load_mnist(root, train=False)


def test_truncated_and_non_gzip_files(tmp_path: Path) -> None:
    root = write_mnist_idx(tmp_path, n_train=20, n_test=10, gzip=False)
    (_raw(root) / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        load_mnist(root, train=True)
    bad = tmp_path / "junk.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="junk.gz"):
        read_idx(bad, 0x801)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    root = write_mnist_idx(tmp_path, n_train=20, n_test=10)
    write_idx(_raw(root) / "train-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8), gzip=True)
    with pytest.raises(ValueError, match="20 images.*19 labels"):
        load_mnist(root, train=True)


# ----------------------------------------------------------------------------- subsets


def test_balanced_subset_counts_and_determinism() -> None:
    labels = torch.arange(1000) % 10
    idx = balanced_subset(labels, n_per_class=7, seed=0)
    assert idx.dtype == torch.int64 and idx.shape == (70,)
    assert len(set(idx.tolist())) == 70
    assert torch.equal(torch.bincount(labels[idx], minlength=10), torch.full((10,), 7))
    assert torch.equal(idx, balanced_subset(labels, n_per_class=7, seed=0))
    assert not torch.equal(idx, balanced_subset(labels, n_per_class=7, seed=1))
    assert torch.equal(idx, torch.sort(idx).values)


def test_balanced_subset_classes_argument() -> None:
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 2, 1, 0, 3])
    idx = balanced_subset(labels, n_per_class=2, seed=4, classes=[2, 0])
    assert sorted(labels[idx].tolist()) == [0, 0, 2, 2]


def test_balanced_subset_too_small_class() -> None:
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 10)
    with pytest.raises(ValueError, match=r"Class 1 has only 3 examples.*n_per_class=5"):
        balanced_subset(labels, n_per_class=5, seed=0)
    with pytest.raises(ValueError, match=r"Class 7 has only 0"):
        balanced_subset(labels, n_per_class=1, seed=0, classes=[0, 7])
    with pytest.raises(ValueError, match="n_per_class"):
        balanced_subset(labels, n_per_class=0, seed=0)


@pytest.mark.parametrize("n,frac,n_val", [(100, 0.1, 10), (10, 0.01, 1), (7, 0.0, 0), (60000, 0.2, 12000)])
def test_train_val_split(n: int, frac: float, n_val: int) -> None:
    train, val = train_val_split(n, frac, seed=0)
    assert train.dtype == torch.int64 and val.dtype == torch.int64
    assert val.numel() == n_val and train.numel() == n - n_val
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(n))
    train2, val2 = train_val_split(n, frac, seed=0)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    if 0 < n_val < n - 1:
        _, val3 = train_val_split(n, frac, seed=1)
        assert not torch.equal(val, val3)


@pytest.mark.parametrize("frac", [-0.1, 1.0, 1.5])
def test_train_val_split_bad_fraction(frac: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(10, frac, seed=0)


def test_train_val_split_nothing_left_for_training() -> None:
    with pytest.raises(ValueError, match="no training"):
        train_val_split(1, 0.5, seed=0)


# ----------------------------------------------------------------------------- real MNIST

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.realdata
@pytest.mark.parametrize("train,counts", [(True, TRAIN_COUNTS), (False, TEST_COUNTS)])
def test_real_mnist(train: bool, counts: list[int]) -> None:
    data_dir = os.environ.get("LABELFREE_DATA_DIR")
    if not data_dir:
        pytest.skip("LABELFREE_DATA_DIR is not set")
    raw = Path(data_dir) / "MNIST" / "raw"
    if not all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in MNIST_FILES[train]):
        pytest.skip(f"MNIST files absent from {raw}")
    x, y = load_mnist(data_dir, train=train)
    n = MNIST_N[train]
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y, minlength=10).tolist() == counts
    assert sum(counts) == n
