"""Tiny MNIST look-alike in the real IDX format, for tests and smoke runs.

Each class ``c`` has a fixed prototype (a few blurred strokes at class-specific positions, drawn
from the seed); an image is its class's prototype, shifted by at most one pixel, scaled in
intensity, plus Gaussian noise, stored as uint8 0..255. Classes are therefore learnable and
distinguishable, so an autoencoder smoke run on these files is meaningful. Labels cycle 0..9.
"""

from __future__ import annotations

import gzip as gzip_lib
from pathlib import Path

import numpy as np

__all__ = ["make_mnist_like", "mnist_prototypes", "write_idx", "write_mnist_idx"]

_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(path: Path, array: np.ndarray, gzip: bool = True) -> Path:
    """Write a uint8 array as an IDX file (``path`` gets a ``.gz`` suffix when ``gzip``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path = Path(path)
    if gzip:
        path = path.with_name(path.name + ".gz")
        with gzip_lib.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def mnist_prototypes(seed: int = 0, n_classes: int = 10) -> np.ndarray:
    """``float64 [n_classes, 28, 28]`` in [0, 1]: three blurred strokes per class."""
    rng = np.random.default_rng([seed, 0])
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64)
    protos = np.zeros((n_classes, 28, 28))
    for c in range(n_classes):
        for _ in range(3):
            (y0, x0), (y1, x1) = rng.uniform(5.0, 22.0, size=(2, 2))
            for t in np.linspace(0.0, 1.0, 12):
                cy, cx = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
                protos[c] = np.maximum(
                    protos[c], np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.3**2))
                )
    return protos / protos.max(axis=(1, 2), keepdims=True)


def make_mnist_like(
    n: int, prototypes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 images [n, 28, 28], uint8 labels [n])``; labels cycle through the classes."""
    n_classes = prototypes.shape[0]
    labels = (np.arange(n) % n_classes).astype(np.uint8)
    images = np.empty((n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        dy, dx = rng.integers(-1, 2, size=2)
        img = np.roll(prototypes[c], shift=(int(dy), int(dx)), axis=(0, 1))
        img = img * rng.uniform(0.7, 1.0) + rng.normal(0.0, 0.08, size=img.shape)
        images[i] = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    return images, labels


def write_mnist_idx(
    root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0, gzip: bool = True
) -> Path:
    """Write the four MNIST IDX files into ``root/MNIST/raw/`` (deterministic given ``seed``).

    Returns ``root``, ready for ``load_mnist(root, train=...)``.
    """
    root = Path(root)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    protos = mnist_prototypes(seed)
    for train, n, stream in ((True, n_train, 1), (False, n_test, 2)):
        images, labels = make_mnist_like(n, protos, np.random.default_rng([seed, stream]))
        images_name, labels_name = _FILES[train]
        write_idx(raw / images_name, images, gzip=gzip)
        write_idx(raw / labels_name, labels, gzip=gzip)
    return root
