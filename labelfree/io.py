"""Atomic writes: a run never leaves a half-written results or checkpoint file.

Every writer goes to a temporary file in the destination folder, then ``os.replace``s it onto the
final name (atomic on POSIX file systems).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _write_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically."""
    return _write_with(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors, numbers, strings, lists and dicts only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def save_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame as CSV (no index) atomically."""
    return _write_with(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_json(data: Any, path: str | Path) -> Path:
    """Write JSON (indented, keys sorted) atomically."""
    return _write_with(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))


def save_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    return _write_with(path, lambda tmp: tmp.write_text(text))
