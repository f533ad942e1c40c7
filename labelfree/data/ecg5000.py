"""ECG5000 heartbeats (UCR Time Series Classification Archive), read offline, and the paper's two splits.

Files: ``data_dir/ECG5000/ECG5000_TRAIN.<ext>`` and ``data_dir/ECG5000/ECG5000_TEST.<ext>``, each in
the first of these formats found (in this order of preference):

* ``.tsv``: the UCR 2018 archive format; tab-separated, no header, column 0 the class label.
* ``.txt``: the older UCR format; whitespace-separated, label first (often written as ``1.0000000e+00``).
* ``.arff``: Weka ARFF (timeseriesclassification.com); ``@attribute`` lines, then ``@data`` with one
  comma-separated beat per line and the class label *last*, possibly quoted (``'1'``).

Every row is a label in 1..5 followed by 140 z-normalised time steps. The UCR archive has no stable
download URL, so nothing is downloaded: missing files stop with a :class:`DataNotFoundError` that
says where to put them.

Shapes: beats ``float32 [n, 140, 1]`` (time steps, one channel; :data:`ECG_SHAPE`), labels
``int64 [n]`` in 1..5 (class 1 = normal, :data:`NORMAL_CLASS`). All 5000 beats: the 500 rows of the
TRAIN file first, then the 4500 rows of the TEST file (the paper re-splits them, see
:func:`feature_split` and :func:`example_split`).
"""

from __future__ import annotations

import functools
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from labelfree.data.errors import DataNotFoundError
from labelfree.data.subsets import train_val_split

__all__ = [
    "ECG_CLASSES",
    "ECG_CLASS_COUNTS",
    "ECG_FORMATS",
    "ECG_LENGTH",
    "ECG_N",
    "ECG_SHAPE",
    "ECG_SPLITS",
    "ECG_SUBDIR",
    "NORMAL_CLASS",
    "binary_labels",
    "ecg5000_dir",
    "ecg5000_files",
    "example_split",
    "feature_split",
    "load_ecg5000",
    "read_ucr_file",
]

logger = logging.getLogger(__name__)

#: Folder, relative to ``data_dir``, that holds the files.
ECG_SUBDIR = Path("ECG5000")
#: File stems, in the order their rows are concatenated.
ECG_SPLITS = ("ECG5000_TRAIN", "ECG5000_TEST")
#: Accepted file formats (extensions), in order of preference.
ECG_FORMATS = ("tsv", "txt", "arff")
#: Time steps per beat, and the shape of one beat as returned by :func:`load_ecg5000`.
ECG_LENGTH = 140
ECG_SHAPE = (ECG_LENGTH, 1)
ECG_CLASSES = (1, 2, 3, 4, 5)
#: Class 1 is the normal heartbeat; classes 2..5 are abnormal.
NORMAL_CLASS = 1
#: Size and class counts (1..5) of the whole archive (TRAIN + TEST).
ECG_N = 5000
ECG_CLASS_COUNTS = {1: 2919, 2: 1767, 3: 96, 4: 194, 5: 24}

_UCR_URL = "https://www.cs.ucr.edu/~eamonn/time_series_data_2018/"


def ecg5000_dir(data_dir: str | Path) -> Path:
    """The folder ``data_dir/ECG5000`` where the files are looked for."""
    return Path(data_dir).expanduser() / ECG_SUBDIR


def _locate(folder: Path, stem: str) -> Path | None:
    """The first existing ``folder/stem.<ext>`` in :data:`ECG_FORMATS` order; None if none."""
    for ext in ECG_FORMATS:
        candidate = folder / f"{stem}.{ext}"
        if candidate.is_file():
            return candidate
    return None


def ecg5000_files(data_dir: str | Path) -> list[Path]:
    """The files :func:`load_ecg5000` reads from ``data_dir`` (the TRAIN file, then the TEST file; those present)."""
    folder = ecg5000_dir(data_dir)
    return [path for path in (_locate(folder, stem) for stem in ECG_SPLITS) if path is not None]


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


def _arff_data_text(path: Path, text: str) -> str:
    """The ``@data`` section of an ARFF file as CSV text with the label moved to the first column."""
    lines = text.splitlines()
    start = None
    for number, line in enumerate(lines):
        if line.strip().lower().startswith("@data"):
            start = number + 1
            break
    if start is None:
        raise ValueError(f"Malformed ARFF file {path}: no @data section.")
    rows = []
    for line in lines[start:]:
        line = line.strip()
        if not line or line.startswith("%"):
            continue
        if line.startswith("{"):
            raise ValueError(f"Malformed ARFF file {path}: sparse ARFF rows are not supported.")
        fields = [field.strip().strip("'\"") for field in line.split(",")]
        rows.append(",".join([fields[-1], *fields[:-1]]))
    return "\n".join(rows)


def read_ucr_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one UCR file (format from its extension: tsv, txt or arff) and validate it.

    Returns:
        ``(values, labels)``: float32 ``[n, 140]`` and int64 ``[n]`` in 1..5.

    Raises:
        ValueError: the file cannot be parsed, rows differ in length, a row does not have
            141 columns (label + 140 time steps), a value is NaN or infinite, or a label is not in 1..5.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ECG_FORMATS:
        raise ValueError(f"Unknown ECG5000 file format {path.suffix!r} ({path}); accepted: {list(ECG_FORMATS)}")
    try:
        if fmt == "arff":
            source = io.StringIO(_arff_data_text(path, path.read_text()))
            table = np.loadtxt(source, delimiter=",", dtype=np.float64, ndmin=2)
        else:
            table = np.loadtxt(path, delimiter="\t" if fmt == "tsv" else None, dtype=np.float64, ndmin=2)
    except ValueError as exc:  # unparsable value or a row of a different length
        raise ValueError(f"Malformed ECG5000 file {path}: {exc}") from exc

    expected = ECG_LENGTH + 1
    if table.shape[0] == 0:
        raise ValueError(f"Malformed ECG5000 file {path}: no rows.")
    if table.shape[1] != expected:
        raise ValueError(
            f"Malformed ECG5000 file {path}: rows have {table.shape[1]} columns, expected {expected} "
            f"(the label and {ECG_LENGTH} time steps)."
        )
    if not np.isfinite(table).all():
        bad = ~np.isfinite(table)
        rows = np.flatnonzero(bad.any(axis=1))
        kinds = " and ".join(kind for kind, mask in (("NaN", np.isnan(table)), ("infinite", np.isinf(table))) if mask.any())
        raise ValueError(f"Malformed ECG5000 file {path}: {kinds} values in rows {rows[:5].tolist()} (0-based).")
    labels = table[:, 0]
    bad = ~np.isin(labels, ECG_CLASSES)
    if bad.any():
        raise ValueError(
            f"Malformed ECG5000 file {path}: labels {np.unique(labels[bad])[:5].tolist()} are not in "
            f"{list(ECG_CLASSES)}."
        )
    return table[:, 1:].astype(np.float32), labels.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, _stamp: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_ucr_file`, cached; ``_stamp`` (size, mtime) makes a rewritten file be re-read.

    The arrays are shared between calls and marked read-only: never hand them out directly.
    """
    start = time.perf_counter()
    values, labels = read_ucr_file(path)
    values.setflags(write=False)
    labels.setflags(write=False)
    logger.info("Parsed %s (%d beats) in %.2fs", path, len(labels), time.perf_counter() - start)
    return values, labels


def load_ecg5000(data_dir: str | Path, *, download: bool = False) -> tuple[Tensor, Tensor]:
    """All ECG5000 beats: the TRAIN file's rows, then the TEST file's.

    Args:
        data_dir: the data root (the folder that contains ``ECG5000/``).
        download: accepted for a uniform loader signature; ECG5000 cannot be downloaded (the UCR
            archive has no stable URL), so missing files are an error either way.

    Returns:
        ``(beats, labels)``: float32 ``[n, 140, 1]`` and int64 ``[n]`` in 1..5 (n = 5000 for the real
        archive). Fresh tensors each call (parsed files are cached in memory).

    Raises:
        DataNotFoundError: a file is absent (names the files looked for and the folder).
        ValueError: a file is malformed (names the file).
    """
    folder = ecg5000_dir(data_dir)
    paths = [_locate(folder, stem) for stem in ECG_SPLITS]
    missing = [stem for stem, path in zip(ECG_SPLITS, paths) if path is None]
    if missing:
        looked_for = ", ".join(f"{stem}.{{{','.join(ECG_FORMATS)}}}" for stem in missing)
        reason = " (download=true was requested, but" if download else " ("
        raise DataNotFoundError(
            f"ECG5000 files not found in {folder}: looked for {looked_for}.{reason}"
            f"the UCR archive has no stable download URL, so nothing is downloaded.) To fix: get "
            f"ECG5000_TRAIN.tsv and ECG5000_TEST.tsv from the UCR Time Series Classification Archive "
            f"({_UCR_URL}, 2018 release) and put them in {folder}, or point the data directory at a "
            f"folder whose ECG5000/ subfolder holds them (environment variable "
            f"LABELFREE_DATA_DIR=/path/to/data or the Hydra override paths.data_dir=/path/to/data)."
        )

    values, labels = [], []
    for path in paths:
        assert path is not None
        stat = path.stat()
        v, y = _read_cached(str(path.resolve()), (stat.st_size, stat.st_mtime_ns))
        values.append(v)
        labels.append(y)
    # np.concatenate copies, so the cached arrays stay untouched whatever callers do
    beats = torch.from_numpy(np.concatenate(values)).unsqueeze(-1)
    return beats, torch.from_numpy(np.concatenate(labels))


# ----------------------------------------------------------------------------------------------
# Labels and the paper's splits
# ----------------------------------------------------------------------------------------------


def binary_labels(labels: Tensor) -> Tensor:
    """Normal (class 1) -> 0, abnormal (classes 2..5) -> 1; int64, shaped like ``labels``.

    Raises:
        ValueError: a label is not in 1..5 (e.g. labels that are already binary).
    """
    labels = torch.as_tensor(labels)
    valid = torch.isin(labels, torch.tensor(ECG_CLASSES, dtype=labels.dtype, device=labels.device))
    if not bool(valid.all()):
        raise ValueError(
            f"ECG5000 labels must be classes {list(ECG_CLASSES)}, got values "
            f"{torch.unique(labels[~valid])[:5].tolist()} (already binary?)"
        )
    return (labels != NORMAL_CLASS).long()


def _check_xy(x: Tensor, y: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be beats [n, T, C], got shape {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"y must be labels [n] with n = {len(x)}, got shape {tuple(y.shape)}")


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def _part(x: Tensor, y: Tensor, idx: Tensor, name: str) -> dict[str, Tensor]:
    return {f"{name}_x": x[idx], f"{name}_y": binary_labels(y[idx]), f"{name}_class": y[idx], f"{name}_idx": idx}


def feature_split(x: Tensor, y: Tensor, val_fraction: float = 0.2, seed: int = 0) -> dict[str, Tensor]:
    """The paper's split for the consistency of feature importance on ECG5000.

    The model is trained on normal beats only (``val_fraction`` of them held out for early
    stopping; the paper: 0.2), the abnormal beats are explained, and the masking baseline is the
    mean normal *training* beat.

    Args:
        x: beats ``[n, T, C]``; y: class labels ``[n]`` in 1..5 (from :func:`load_ecg5000`).
        val_fraction: share of the normal beats held out for validation, in [0, 1).
        seed: seeds a ``torch.Generator``; the same inputs and seed give the same split.

    Returns:
        A dict of tensors: for each part ``p`` in ``train``, ``val`` (random disjoint parts of the
        normal beats) and ``test`` (every abnormal beat): ``p_x [n_p, T, C]``, ``p_y`` the binary
        label (0 normal, 1 abnormal), ``p_class`` the class 1..5, ``p_idx`` the rows of ``x`` (sorted);
        and ``baseline [T, C]``, the mean of ``train_x``.
    """
    _check_xy(x, y)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    is_normal = binary_labels(y) == 0
    normal = torch.nonzero(is_normal, as_tuple=True)[0]
    abnormal = torch.nonzero(~is_normal, as_tuple=True)[0]
    if len(normal) < 2 or len(abnormal) < 1:
        raise ValueError(
            f"feature_split needs at least 2 normal and 1 abnormal beat, got {len(normal)} and {len(abnormal)}"
        )
    train_pos, val_pos = train_val_split(len(normal), val_fraction, seed)
    train_idx, val_idx = normal[train_pos], normal[val_pos]
    split = {**_part(x, y, train_idx, "train"), **_part(x, y, val_idx, "val"), **_part(x, y, abnormal, "test")}
    split["baseline"] = x[train_idx].mean(dim=0)
    return split


def example_split(
    x: Tensor, y: Tensor, test_fraction: float = 0.2, seed: int = 0, val_fraction: float = 0.0
) -> dict[str, Tensor]:
    """The paper's split for the consistency of example importance on ECG5000.

    A random split of all beats: ``test_fraction`` of them (the paper: 0.2) for testing, the rest
    for training; optionally ``val_fraction`` of the training part is held out for early stopping
    (the authors early-stopped on the test set; the project does not). Labels are binary (0 normal,
    1 abnormal): the example check scores whether important training beats share the test beat's
    normal/abnormal label. The 1000 + 1000 class-balanced subsets of the paper are drawn afterwards
    with :func:`labelfree.data.balanced_subset` on ``train_y`` and ``test_y``.

    Args:
        x: beats ``[n, T, C]``; y: class labels ``[n]`` in 1..5.
        test_fraction: share of all beats in the test part (``round(test_fraction * n)``), in [0, 1).
        seed: seeds a ``torch.Generator``; the same inputs and seed give the same split.
        val_fraction: share of the remaining beats held out for validation, in [0, 1).

    Returns:
        A dict of tensors: for each part ``p`` in ``train``, ``val`` (empty when ``val_fraction``
        is 0), ``test``: ``p_x [n_p, T, C]``, ``p_y`` the binary label, ``p_class`` the class 1..5 and
        ``p_idx`` the rows of ``x`` (sorted). The parts partition ``range(n)``.
    """
    _check_xy(x, y)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    n = len(x)
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * (n - n_test))
    if n - n_test - n_val < 1:
        raise ValueError(f"example_split of {n} beats leaves no training beats ({n_test} test, {n_val} validation)")
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    part = torch.zeros(n, dtype=torch.int64)  # 0 train, 1 validation, 2 test
    part[perm[:n_test]] = 2
    part[perm[n_test : n_test + n_val]] = 1
    split: dict[str, Tensor] = {}
    for code, name in enumerate(("train", "val", "test")):
        split.update(_part(x, y, torch.nonzero(part == code, as_tuple=True)[0], name))
    return split
