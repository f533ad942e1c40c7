"""MNIST, read offline from torchvision's on-disk layout.

The loader reads ``data_dir/MNIST/raw/<file>`` or ``data_dir/MNIST/raw/<file>.gz`` (the four
original IDX files, gzipped or not) and parses the IDX format with NumPy. Reading never writes into
``data_dir`` (the shared data folder is read-only). Only when the files are absent and
``download=True`` is torchvision's downloader called.

Shapes: images ``float32 [n, 1, 28, 28]`` in ``[0, 1]``; labels ``int64 [n]`` in ``0..9``;
``n = 60000`` (train) or ``10000`` (test).
"""

from __future__ import annotations

import functools
import gzip
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from labelfree.data.errors import DATA_FIX_HINT, DataNotFoundError

__all__ = [
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "MNIST_CLASSES",
    "MNIST_FILES",
    "MNIST_IMAGE_SHAPE",
    "MNIST_N",
    "MNIST_SUBDIR",
    "load_mnist",
    "mnist_files",
    "mnist_raw_dir",
    "read_idx",
]

logger = logging.getLogger(__name__)

#: Folder, relative to ``data_dir``, where torchvision keeps the raw MNIST files.
MNIST_SUBDIR = Path("MNIST") / "raw"
#: ``train -> (images file, labels file)``; each may also be present with a ``.gz`` suffix.
MNIST_FILES: dict[bool, tuple[str, str]] = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Number of examples of the official splits (``train -> n``).
MNIST_N: dict[bool, int] = {True: 60000, False: 10000}
MNIST_CLASSES = 10
#: Shape of one image as returned by :func:`load_mnist` (channels first).
MNIST_IMAGE_SHAPE = (1, 28, 28)
#: IDX magic numbers: 0x08 = unsigned byte, last byte = number of dimensions.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def mnist_raw_dir(data_dir: str | Path) -> Path:
    """The folder ``data_dir/MNIST/raw`` where the IDX files are looked for."""
    return Path(data_dir).expanduser() / MNIST_SUBDIR


def _locate(raw_dir: Path, name: str) -> Path | None:
    """Path of ``name`` (uncompressed, preferred) or ``name.gz`` in ``raw_dir``; None if neither."""
    for candidate in (raw_dir / name, raw_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def mnist_files(data_dir: str | Path, train: bool) -> list[Path]:
    """The files :func:`load_mnist` reads from ``data_dir`` for one split (images, then labels; those present)."""
    raw_dir = mnist_raw_dir(data_dir)
    return [path for path in (_locate(raw_dir, name) for name in MNIST_FILES[bool(train)]) if path is not None]


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Parse one IDX file (gzipped when its name ends in ``.gz``) into a uint8 array.

    The header is a big-endian 4-byte magic (``0x0000`` + dtype code ``0x08`` + ndim) followed by
    ``ndim`` big-endian uint32 sizes; the payload is ``prod(sizes)`` unsigned bytes.

    Raises:
        ValueError: wrong magic, truncated header, or payload size different from the header's.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"Corrupted IDX file {path}: cannot decompress/read it ({exc}).") from exc

    if len(raw) < 4:
        raise ValueError(f"Corrupted IDX file {path}: {len(raw)} bytes, too short for a header.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"Corrupted IDX file {path}: magic number {magic:#010x}, expected {expected_magic:#010x}."
        )
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"Corrupted IDX file {path}: header truncated ({len(raw)} bytes).")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header_len
    if payload != expected:
        raise ValueError(
            f"Corrupted IDX file {path}: header says shape {dims} ({expected} bytes) "
            f"but the payload has {payload} bytes."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


@functools.lru_cache(maxsize=8)
def _read_split(
    images_path: str, labels_path: str, _stamp: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Parsed (uint8 images ``[n, 28, 28]``, uint8 labels ``[n]``), cached in memory.

    ``_stamp`` (sizes and mtimes of both files) is part of the key so a rewritten file is re-read.
    The arrays are read-only and shared between calls: never hand them out directly.
    """
    start = time.perf_counter()
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != MNIST_IMAGE_SHAPE[1:]:
        raise ValueError(
            f"Corrupted IDX file {images_path}: image shape {images.shape}, expected [n, 28, 28]."
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"MNIST files disagree: {images_path} has {images.shape[0]} images but "
            f"{labels_path} has {labels.shape[0]} labels."
        )
    if labels.size and int(labels.max()) >= MNIST_CLASSES:
        raise ValueError(
            f"Corrupted IDX file {labels_path}: label {int(labels.max())} outside 0..{MNIST_CLASSES - 1}."
        )
    logger.info(
        "Parsed MNIST %s (%d images) in %.2fs", images_path, images.shape[0], time.perf_counter() - start
    )
    return images, labels


def _missing_message(raw_dir: Path, missing: list[str], extra: str = "") -> str:
    names = ", ".join(f"{name}[.gz]" for name in missing)
    return f"MNIST files not found in {raw_dir}: {names}.{extra} {DATA_FIX_HINT}"


def load_mnist(data_dir: str | Path, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """Load one MNIST split from ``data_dir/MNIST/raw`` (torchvision's layout).

    Args:
        data_dir: the data root (the folder that contains ``MNIST/``).
        train: the 60000-example training split if True, else the 10000-example test split.
        download: if the files are absent, let torchvision download them into ``data_dir``.

    Returns:
        ``(images, labels)``: float32 ``[n, 1, 28, 28]`` in ``[0, 1]`` and int64 ``[n]``. Both are
        fresh tensors (the parsed files are cached in memory; callers may mutate what they get).

    Raises:
        DataNotFoundError: files absent and ``download=False``, or the download failed.
        ValueError: a file is not a valid MNIST IDX file.
    """
    raw_dir = mnist_raw_dir(data_dir)
    names = MNIST_FILES[bool(train)]
    paths = [_locate(raw_dir, name) for name in names]
    missing = [name for name, path in zip(names, paths) if path is None]

    if missing:
        if not download:
            raise DataNotFoundError(_missing_message(raw_dir, missing, " (download=False)"))
        logger.info("MNIST files %s missing from %s; downloading with torchvision", missing, raw_dir)
        try:
            import torchvision.datasets

            torchvision.datasets.MNIST(str(Path(data_dir).expanduser()), train=bool(train), download=True)
        except Exception as exc:  # network errors come in many types (URLError, RuntimeError, ...)
            raise DataNotFoundError(
                _missing_message(raw_dir, missing, f" Download failed: {type(exc).__name__}: {exc}.")
            ) from exc
        paths = [_locate(raw_dir, name) for name in names]
        missing = [name for name, path in zip(names, paths) if path is None]
        if missing:
            raise DataNotFoundError(
                _missing_message(raw_dir, missing, " torchvision's download did not produce them.")
            )

    images_path, labels_path = (Path(p) for p in paths)  # type: ignore[arg-type]
    stats = [images_path.stat(), labels_path.stat()]
    stamp = (stats[0].st_size, stats[0].st_mtime_ns, stats[1].st_size, stats[1].st_mtime_ns)
    images_u8, labels_u8 = _read_split(str(images_path.resolve()), str(labels_path.resolve()), stamp)

    # Fresh tensors every call: the conversions below copy, the cached arrays stay untouched.
    # (astype copies into writable arrays, so torch does not warn about read-only buffers.)
    images = torch.from_numpy(images_u8.astype(np.float32)).div_(255.0).unsqueeze(1)
    labels = torch.from_numpy(labels_u8.astype(np.int64))
    return images, labels
