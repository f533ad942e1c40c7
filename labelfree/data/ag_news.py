"""AG News topic classification (Zhang, Zhao & LeCun, 2015), read offline from its CSV files.

Files, in ``data_dir/ag_news/`` (:data:`AG_NEWS_FILES`): the test split ``test.csv`` and, for the training
split, the first of ``train.csv`` (the original 120,000 rows) or ``train_balanced_9808.csv`` (the shared data
folder's class-balanced subset in the same format) that is present. Each row is three double-quoted,
comma-separated fields: class index (1..4), title, description (internal quotes doubled; a newline in the
text is written as a backslash). Nothing is downloaded and nothing is written; a missing file stops with one
:class:`DataNotFoundError` naming the expected files.

A text is ``title + " " + description`` with every backslash (the files' escaped newline) replaced by a space
and runs of spaces collapsed. Labels are ``int64`` in ``0..3`` (:data:`AG_NEWS_CLASSES`: World, Sports,
Business, Sci/Tech; the file's index minus 1).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import torch
from torch import Tensor

from labelfree.data.errors import DATA_FIX_HINT, DataNotFoundError
from labelfree.data.subsets import balanced_subset

__all__ = [
    "AG_NEWS_CLASSES",
    "AG_NEWS_FILES",
    "AG_NEWS_SUBDIR",
    "ag_news_dir",
    "ag_news_file",
    "load_ag_news",
    "read_ag_news_csv",
]

AG_NEWS_SUBDIR = Path("ag_news")
#: Files accepted for each split, in order of preference.
AG_NEWS_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.csv", "train_balanced_9808.csv"),
    "test": ("test.csv",),
}
#: Class names by label (file index - 1).
AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")

_SPACES = re.compile(r"\s+")


def ag_news_dir(data_dir: str | Path) -> Path:
    """The folder ``data_dir/ag_news`` where the files are looked for."""
    return Path(data_dir).expanduser() / AG_NEWS_SUBDIR


def ag_news_file(data_dir: str | Path, split: str) -> Path:
    """The file :func:`load_ag_news` reads for ``split`` ("train" or "test").

    Raises:
        ValueError: an unknown split.
        DataNotFoundError: none of the split's accepted files is present (names them and the folder).
    """
    if split not in AG_NEWS_FILES:
        raise ValueError(f"split must be one of {sorted(AG_NEWS_FILES)}, got {split!r}")
    folder = ag_news_dir(data_dir)
    for name in AG_NEWS_FILES[split]:
        if (folder / name).is_file():
            return folder / name
    raise DataNotFoundError(
        f"AG News {split} file not found in {folder}: expected {' or '.join(AG_NEWS_FILES[split])} (CSV rows "
        f'"class index (1-4)","title","description"). Nothing is downloaded. {DATA_FIX_HINT}'
    )


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text.replace("\\", " ")).strip()


def read_ag_news_csv(path: str | Path) -> tuple[list[str], Tensor]:
    """One AG News CSV file: ``(texts, labels int64 [n] in 0..3)``.

    Raises:
        ValueError: a row without three fields, or a class index outside 1..4 (names the file and line).
    """
    path = Path(path)
    texts: list[str] = []
    labels: list[int] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if len(row) != 3 or row[0].strip() not in {"1", "2", "3", "4"}:
                raise ValueError(f"Malformed AG News file {path}, line {line}: expected "
                                 f'"class index (1-4)","title","description", got {row[:3]!r}')
            labels.append(int(row[0]) - 1)
            texts.append(_clean(f"{row[1]} {row[2]}"))
    return texts, torch.tensor(labels, dtype=torch.int64)


def load_ag_news(
    data_dir: str | Path, split: str = "train", n_per_class: int | None = None, seed: int = 0
) -> tuple[list[str], Tensor]:
    """AG News texts and labels of one split.

    Args:
        data_dir: the folder holding ``ag_news/``.
        split: ``"train"`` or ``"test"``.
        n_per_class: if given, a class-balanced subset of that many texts per class
            (:func:`labelfree.data.subsets.balanced_subset`, seeded, in file order).
        seed: seeds the subset.

    Returns:
        ``(texts: list[str] [n], labels: int64 [n] in 0..3)``.
    """
    texts, labels = read_ag_news_csv(ag_news_file(data_dir, split))
    if n_per_class is not None:
        index = balanced_subset(labels, n_per_class, seed, classes=range(len(AG_NEWS_CLASSES)))
        texts, labels = [texts[i] for i in index.tolist()], labels[index]
    return texts, labels
