"""CIFAR-10, read offline from one of two on-disk forms.

Looked for, in this order, under ``data_dir``:

1. torchvision's python layout ``cifar-10-batches-py/``: the official pickled batches
   ``data_batch_1`` ... ``data_batch_5`` (train) and ``test_batch`` (test). Each is a dict with
   ``b"data"`` (uint8 ``[n, 3072]``: the red plane, then green, then blue, each 32x32 row-major) and
   ``b"labels"`` (a list of ints).
2. the compact NumPy form ``cifar10/cifar10_train.npz`` / ``cifar10/cifar10_test.npz`` (the shared
   data folder's section 5): ``images`` uint8 ``[n, 32, 32, 3]`` (HWC, RGB) and ``labels`` int64
   ``[n]``; further arrays (``lossless`` of the test file, ``orig_index`` of the training subset)
   are ignored here. The shared training file is a 20,000-image class-balanced *subset* of the
   50,000 official training images; in its test file 20 of the 10,000 images are JPEG-decoded
   rather than pixel-exact (``lossless == False``).

A split counts as present in the python layout only when all of its batch files are there; a
partial folder is skipped (with a warning) in favour of the NumPy form. Reading never writes into
``data_dir``. Only when neither form is present and ``download=True`` is torchvision's downloader
called (it writes ``cifar-10-python.tar.gz`` and ``cifar-10-batches-py/`` into ``data_dir``).

About unpickling: the official batches are Python 2 pickles, read with ``encoding="bytes"`` (their
``str`` keys and pixel buffers become ``bytes``). Unpickling can run code named in the file, so
only the batch files above are ever unpickled, and through an unpickler that resolves only the
handful of globals a pickled NumPy array needs (anything else is refused with a ValueError).

Shapes: images ``float32 [n, 3, 32, 32]`` in ``[0, 1]``; labels ``int64 [n]`` in ``0..9``.
"""

from __future__ import annotations

import functools
import logging
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from labelfree.data.errors import DATA_FIX_HINT, DataNotFoundError

__all__ = [
    "CIFAR10_BATCHES",
    "CIFAR10_CLASSES",
    "CIFAR10_IMAGE_SHAPE",
    "CIFAR10_NPZ",
    "CIFAR10_NPZ_SUBDIR",
    "CIFAR10_PYTHON_SUBDIR",
    "cifar10_files",
    "load_cifar10",
    "read_cifar_batch",
    "read_cifar_npz",
]

logger = logging.getLogger(__name__)

#: torchvision's folder (relative to ``data_dir``) with the official pickled batches.
CIFAR10_PYTHON_SUBDIR = Path("cifar-10-batches-py")
#: ``train -> batch file names`` inside :data:`CIFAR10_PYTHON_SUBDIR`.
CIFAR10_BATCHES: dict[bool, tuple[str, ...]] = {
    True: tuple(f"data_batch_{i}" for i in range(1, 6)),
    False: ("test_batch",),
}
#: Folder (relative to ``data_dir``) with the compact NumPy form.
CIFAR10_NPZ_SUBDIR = Path("cifar10")
#: ``train -> npz file name`` inside :data:`CIFAR10_NPZ_SUBDIR`.
CIFAR10_NPZ: dict[bool, str] = {True: "cifar10_train.npz", False: "cifar10_test.npz"}
#: Label names in label order (as in the official ``batches.meta``).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Shape of one image as returned by :func:`load_cifar10` (channels first).
CIFAR10_IMAGE_SHAPE = (3, 32, 32)
_N_PIXELS = 3 * 32 * 32

# The globals a pickled NumPy uint8 array needs (numpy 1.x and 2.x module names), plus
# ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for ``bytes`` objects.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :data:`_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch file")
        if module == "numpy.core.multiarray":  # numpy 2 renamed numpy.core to numpy._core
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _check_labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"Malformed CIFAR-10 file {path}: {labels.shape} labels for {n} images, expected [{n}].")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Malformed CIFAR-10 file {path}: labels have dtype {labels.dtype}, expected integers.")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= len(CIFAR10_CLASSES)):
        raise ValueError(
            f"Malformed CIFAR-10 file {path}: labels span {int(labels.min())}..{int(labels.max())}, "
            f"expected 0..{len(CIFAR10_CLASSES) - 1}."
        )
    return labels.astype(np.int64)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one official pickled batch into (uint8 images ``[n, 3, 32, 32]``, int64 labels ``[n]``).

    Raises:
        ValueError: not a readable pickle of the official form (dict with ``b"data"`` uint8
            ``[n, 3072]`` and ``b"labels"`` of n integers in 0..9).
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated or foreign pickles raise many types
        raise ValueError(f"Malformed CIFAR-10 batch file {path}: cannot unpickle it ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"Malformed CIFAR-10 batch file {path}: expected a dict with b'data' and b'labels', got {keys}.")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _N_PIXELS:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"Malformed CIFAR-10 batch file {path}: b'data' is {desc}, expected uint8 [n, {_N_PIXELS}].")
    try:
        labels = np.asarray(batch[b"labels"])
    except Exception as exc:
        raise ValueError(f"Malformed CIFAR-10 batch file {path}: b'labels' is not a list of integers.") from exc
    labels = _check_labels(labels, data.shape[0], path)
    # Row layout: 1024 red, 1024 green, 1024 blue values, each plane 32x32 row-major.
    return data.reshape(-1, *CIFAR10_IMAGE_SHAPE), labels


def read_cifar_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse the compact NumPy form into (uint8 images ``[n, 3, 32, 32]``, int64 labels ``[n]``).

    Raises:
        ValueError: not a readable npz, or ``images`` is not uint8 ``[n, 32, 32, 3]``, or ``labels``
            are not ``n`` integers in 0..9.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = list(archive.files)
            arrays = {key: archive[key] for key in ("images", "labels") if key in files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError, ValueError (pickled arrays), ...
        raise ValueError(f"Malformed CIFAR-10 file {path}: cannot read it as npz ({type(exc).__name__}: {exc}).") from exc
    missing = [key for key in ("images", "labels") if key not in arrays]
    if missing:
        raise ValueError(
            f"Malformed CIFAR-10 file {path}: arrays {missing} missing (it holds {files}); "
            "expected 'images' uint8 [n, 32, 32, 3] and 'labels' int64 [n]."
        )
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(
            f"Malformed CIFAR-10 file {path}: 'images' is {images.dtype} {images.shape}, expected uint8 [n, 32, 32, 3]."
        )
    labels = _check_labels(labels, images.shape[0], path)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels


def _stamp(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """(resolved path, size, mtime) of every file: a rewritten file gives a new cache key."""
    stats = [(p, p.stat()) for p in paths]
    return tuple((str(p.resolve()), s.st_size, s.st_mtime_ns) for p, s in stats)


@functools.lru_cache(maxsize=4)
def _read_cached(kind: str, stamp: tuple[tuple[str, int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Parsed (uint8 images ``[n, 3, 32, 32]``, int64 labels ``[n]``), cached in memory.

    The arrays are shared between calls and marked read-only: never hand them out directly.
    """
    start = time.perf_counter()
    paths = [Path(entry[0]) for entry in stamp]
    if kind == "python":
        parts = [read_cifar_batch(p) for p in paths]
        images = np.concatenate([part[0] for part in parts])
        labels = np.concatenate([part[1] for part in parts])
    else:
        images, labels = read_cifar_npz(paths[0])
    images.setflags(write=False)
    labels.setflags(write=False)
    logger.info("Parsed CIFAR-10 %s (%d images) in %.2fs", [p.name for p in paths], len(images), time.perf_counter() - start)
    return images, labels


def _find_sources(data_dir: Path, train: bool) -> tuple[str, list[Path]] | None:
    """``("python", batch paths)`` or ``("npz", [npz path])`` for the first complete form; None if neither."""
    python_dir = data_dir / CIFAR10_PYTHON_SUBDIR
    batches = [python_dir / name for name in CIFAR10_BATCHES[train]]
    present = [p.is_file() for p in batches]
    if all(present):
        return "python", batches
    if any(present):
        logger.warning(
            "CIFAR-10 folder %s is incomplete (missing %s); ignoring it",
            python_dir,
            [p.name for p, ok in zip(batches, present) if not ok],
        )
    npz = data_dir / CIFAR10_NPZ_SUBDIR / CIFAR10_NPZ[train]
    if npz.is_file():
        return "npz", [npz]
    return None


def cifar10_files(data_dir: str | Path, train: bool) -> list[Path]:
    """The files :func:`load_cifar10` reads from ``data_dir`` for one split (empty when neither form is present)."""
    found = _find_sources(Path(data_dir).expanduser(), bool(train))
    return [] if found is None else list(found[1])


def _missing_message(data_dir: Path, train: bool, extra: str = "") -> str:
    batches = ", ".join(CIFAR10_BATCHES[train])
    python_dir = data_dir / CIFAR10_PYTHON_SUBDIR
    npz = data_dir / CIFAR10_NPZ_SUBDIR / CIFAR10_NPZ[train]
    return (
        f"CIFAR-10 {'training' if train else 'test'} split not found: looked for the pickled batches "
        f"{batches} in {python_dir} (torchvision's python layout) and for {npz} (NumPy form).{extra} {DATA_FIX_HINT}"
    )


def load_cifar10(data_dir: str | Path, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """Load one CIFAR-10 split from ``data_dir`` (see the module docstring for the forms looked for).

    Args:
        data_dir: the data root (the folder that contains ``cifar-10-batches-py/`` or ``cifar10/``).
        train: the training split if True (all five batches, or the npz training file, which may be
            a subset), else the 10,000-image test split.
        download: if neither form is present, let torchvision download the python layout into
            ``data_dir``.

    Returns:
        ``(images, labels)``: float32 ``[n, 3, 32, 32]`` in ``[0, 1]`` and int64 ``[n]``. Both are
        fresh tensors (the parsed files are cached in memory; callers may mutate what they get).

    Raises:
        DataNotFoundError: neither form present and ``download=False``, or the download failed.
        ValueError: a file is present but malformed (the message names it).
    """
    train = bool(train)
    root = Path(data_dir).expanduser()
    found = _find_sources(root, train)
    if found is None:
        if not download:
            raise DataNotFoundError(_missing_message(root, train, " (download=False)"))
        logger.info("CIFAR-10 missing from %s; downloading with torchvision", root)
        try:
            import torchvision.datasets

            torchvision.datasets.CIFAR10(str(root), train=train, download=True)
        except Exception as exc:  # network errors come in many types (URLError, RuntimeError, ...)
            raise DataNotFoundError(
                _missing_message(root, train, f" Download failed: {type(exc).__name__}: {exc}.")
            ) from exc
        found = _find_sources(root, train)
        if found is None:
            raise DataNotFoundError(_missing_message(root, train, " torchvision's download did not produce them."))

    kind, paths = found
    images_u8, labels = _read_cached(kind, _stamp(paths))
    # Fresh tensors every call (astype copies), so callers never touch the cached arrays.
    images = torch.from_numpy(images_u8.astype(np.float32)).div_(255.0)
    return images, torch.from_numpy(labels.astype(np.int64))
