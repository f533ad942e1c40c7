"""dSprites (Matthey et al., 2017), read offline from NumPy ``.npz`` files.

Files, looked for in ``data_dir/dsprites/`` in this order (the first one present is read):

* ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``: the official file (737,280 images). Besides
  the arrays below it holds a pickled ``metadata`` object, which is never loaded (``allow_pickle``
  stays off).
* ``dsprites_subset.npz``: a subset of the official images with the same array names (the shared
  data folder holds 64,834 of them, see its README), plus bookkeeping arrays that are ignored.

Arrays used: ``imgs`` uint8 ``[n, 64, 64]`` (binary 0/1), ``latents_classes`` int ``[n, 6]`` and
``latents_values`` float ``[n, 6]``, the six factors being color, shape, scale, orientation, posX,
posY (:data:`LATENT_NAMES`). Reading never writes into ``data_dir``. Only when no file is present
and ``download=True`` is the official file fetched from ``url`` (no published checksum exists, so
the download is checked by its array names and shapes).

Shapes returned by :func:`load_dsprites`: images ``float32 [n, 1, 64, 64]`` in ``{0, 1}``; latent
classes ``int64 [n, 6]``; latent values ``float64 [n, 6]``. The official file is large
(737,280 x 64 x 64 float32 = 12 GB), so ``n_examples`` draws a seeded random subset *before*
the images are converted to float.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from labelfree.data.errors import DATA_FIX_HINT, DataNotFoundError
from labelfree.data.subsets import random_subset
from labelfree.io import atomic_path

__all__ = [
    "DSPRITES_FILES",
    "DSPRITES_IMAGE_SIZE",
    "DSPRITES_OFFICIAL",
    "DSPRITES_SUBDIR",
    "DSPRITES_SUBSET",
    "DSPRITES_URL",
    "DSprites",
    "LATENT_NAMES",
    "SHAPE_FACTOR",
    "dsprites_dir",
    "load_dsprites",
]

logger = logging.getLogger(__name__)

#: Folder, relative to ``data_dir``, that holds the files.
DSPRITES_SUBDIR = Path("dsprites")
DSPRITES_OFFICIAL = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_SUBSET = "dsprites_subset.npz"
#: Accepted files, in order of preference.
DSPRITES_FILES = (DSPRITES_OFFICIAL, DSPRITES_SUBSET)
#: Where the official file is published (used only with ``download=True``).
DSPRITES_URL = f"https://github.com/deepmind/dsprites-dataset/raw/master/{DSPRITES_OFFICIAL}"
DSPRITES_IMAGE_SIZE = 64
#: The six latent factors, in the column order of ``latents_classes`` / ``latents_values``.
LATENT_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
#: Column of the shape factor (0 square, 1 ellipse, 2 heart in ``latents_classes``).
SHAPE_FACTOR = LATENT_NAMES.index("shape")
_ARRAYS = ("imgs", "latents_classes", "latents_values")


@dataclass
class DSprites:
    """dSprites images and their latent factors (row i of each array describes image i)."""

    images: Tensor  # float32 [n, 1, 64, 64] in {0, 1}
    latents_classes: Tensor  # int64 [n, 6]
    latents_values: Tensor  # float64 [n, 6]
    source: Path  # the file read

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shapes(self) -> Tensor:
        """The shape class of every image, ``int64 [n]`` (0 square, 1 ellipse, 2 heart)."""
        return self.latents_classes[:, SHAPE_FACTOR].clone()


def dsprites_dir(data_dir: str | Path) -> Path:
    """The folder ``data_dir/dsprites`` where the files are looked for."""
    return Path(data_dir).expanduser() / DSPRITES_SUBDIR


def _locate(folder: Path) -> Path | None:
    for name in DSPRITES_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _missing_message(folder: Path, extra: str = "") -> str:
    names = " or ".join(DSPRITES_FILES)
    return (
        f"dSprites not found in {folder}: expected {names} (arrays imgs, latents_classes, latents_values). "
        f"The official file is published at {DSPRITES_URL}.{extra} {DATA_FIX_HINT}"
    )


def _parse(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parsed and checked (imgs uint8 ``[n, 64, 64]``, classes ``[n, 6]``, values ``[n, 6]``) of one file."""
    start = time.perf_counter()
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:  # truncated, or not an .npz (a pickle?)
        raise ValueError(f"Corrupted dSprites file {path}: cannot read it as .npz ({exc}).") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"Corrupted dSprites file {path}: a single .npy array, not an .npz archive.")
    with archive:
        missing = [name for name in _ARRAYS if name not in archive.files]
        if missing:
            raise ValueError(f"Corrupted dSprites file {path}: arrays {missing} missing (found {archive.files}).")
        try:  # members are read lazily: a truncated archive fails here, not at np.load
            imgs, classes, values = (archive[name] for name in _ARRAYS)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"Corrupted dSprites file {path}: cannot read its arrays ({exc}).") from exc
    size = DSPRITES_IMAGE_SIZE
    if imgs.ndim != 3 or imgs.shape[1:] != (size, size):
        raise ValueError(f"Corrupted dSprites file {path}: imgs has shape {imgs.shape}, expected [n, {size}, {size}].")
    n_factors = len(LATENT_NAMES)
    for name, array in (("latents_classes", classes), ("latents_values", values)):
        if array.shape != (len(imgs), n_factors):
            raise ValueError(
                f"Corrupted dSprites file {path}: {name} has shape {array.shape}, expected ({len(imgs)}, {n_factors})."
            )
    for name, array in (("imgs", imgs), ("latents_values", values)):
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            rows = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
            raise ValueError(
                f"Corrupted dSprites file {path}: {name} holds NaN or infinite values (rows {rows[:5].tolist()}, 0-based)."
            )
    logger.info("read dSprites %s (%d images) in %.2fs", path, len(imgs), time.perf_counter() - start)
    return imgs, classes, values


@functools.lru_cache(maxsize=2)
def _read(path: str, _stamp: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_parse`, cached in memory (a sweep reads the file once per process).

    ``_stamp`` (size and mtime) is part of the key so a rewritten file is re-read. The arrays are
    shared between calls: never hand them out without copying.
    """
    return _parse(path)


def _download(url: str, target: Path) -> None:
    """Fetch ``url`` into ``target`` atomically; the result must parse as a dSprites file."""
    logger.info("downloading dSprites from %s to %s", url, target)
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(url) as response, tmp.open("wb") as out:  # noqa: S310 (a configured URL)
            shutil.copyfileobj(response, out)
        _parse(str(tmp))


def load_dsprites(
    data_dir: str | Path,
    n_examples: int | None = None,
    seed: int = 0,
    download: bool = False,
    url: str = DSPRITES_URL,
) -> DSprites:
    """Load dSprites from ``data_dir/dsprites`` (the official file when present, else the subset file).

    Args:
        data_dir: the data root (the folder that contains ``dsprites/``).
        n_examples: ``None`` = every image of the file; an int = a random subset of that many images,
            drawn with ``seed`` (kept in file order), before the conversion to float.
        seed: seeds the subset draw.
        download: when no file is present, fetch the official file from ``url`` into ``data_dir/dsprites``.
        url: where the official file is downloaded from.

    Returns:
        :class:`DSprites` with fresh tensors (images ``float32 [n, 1, 64, 64]``).

    Raises:
        DataNotFoundError: no file present (and ``download=False`` or the download failed).
        ValueError: a file without the expected arrays or shapes, or a bad ``n_examples``.
    """
    folder = dsprites_dir(data_dir)
    path = _locate(folder)
    if path is None:
        if not download:
            raise DataNotFoundError(_missing_message(folder, " (download=False)"))
        try:
            _download(url, folder / DSPRITES_OFFICIAL)
        except Exception as exc:  # network errors come in many types (URLError, HTTPError, timeouts, ...)
            raise DataNotFoundError(_missing_message(folder, f" Download failed: {type(exc).__name__}: {exc}.")) from exc
        path = folder / DSPRITES_OFFICIAL
    stat = path.stat()
    imgs, classes, values = _read(str(path.resolve()), (stat.st_size, stat.st_mtime_ns))
    n = len(imgs)
    if n_examples is None:
        index = np.arange(n)
    else:
        if isinstance(n_examples, bool) or int(n_examples) != n_examples or not 1 <= int(n_examples) <= n:
            raise ValueError(f"n_examples must be an integer in [1, {n}] (the images of {path.name}), got {n_examples!r}")
        order = random_subset(n, int(n_examples), seed)
        index = np.sort(order.numpy())
    # fancy indexing copies, so the cached arrays stay untouched
    images = torch.from_numpy(imgs[index].astype(np.float32)).unsqueeze(1)
    return DSprites(
        images=images,
        latents_classes=torch.from_numpy(classes[index].astype(np.int64)),
        latents_values=torch.from_numpy(values[index].astype(np.float64)),
        source=path,
    )
