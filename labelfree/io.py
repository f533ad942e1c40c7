"""Atomic writes: a run never leaves a half-written results or checkpoint file.

Every writer goes to a temporary file in the destination folder, then ``os.replace``s it onto the
final name (atomic on POSIX file systems). The temporary file is created with mode ``0o666`` and
``O_EXCL``, so the kernel applies the process's umask when it is created: the final file gets the
permissions any other file the user writes gets (``tempfile.mkstemp`` would make it private, 0600),
and the umask is never read or changed (``os.umask`` is process-wide: toggling it races with threads).
A write killed before the rename leaves a ``.<name>.<random>.tmp`` file: :func:`remove_stale_tmp`
clears them from a folder nothing else writes into.

Also here: :func:`fingerprint_files`, a content fingerprint (size and SHA-256) of data files, remembered
by path, size and modification time so that a large file is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd
import torch

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def _create_tmp(path: Path) -> Path:
    """Create an empty ``.<name>.<random>.tmp`` next to ``path`` (mode 0o666 less the umask); return its path."""
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"could not create a temporary file next to {path}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_tmp(path)
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


def remove_stale_tmp(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files (``.*.tmp``) that killed :func:`atomic_path` writes left in ``folder``.

    Only call it on a folder no live process is writing into (e.g. while holding the folder's lock): a
    temporary file being written is indistinguishable from a stale one. Returns the files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".*{TMP_SUFFIX}"
    removed = []
    for tmp in folder.rglob(pattern) if recursive else folder.glob(pattern):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.info("removed %d stale temporary file(s) in %s: %s", len(removed), folder, [p.name for p in removed])
    return removed


def move_aside(path: str | Path, reason: str = "corrupt") -> Path:
    """Rename a file or folder to ``<name>.<reason>-<UTC time>`` next to it (kept for inspection); return the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.{reason}-{stamp}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.{reason}-{stamp}-{n}"), n + 1
    path.rename(target)
    return target


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_files(paths: Iterable[str | Path], memo: str | Path | None = None) -> list[dict[str, Any]]:
    """``[{"name", "size", "sha256"}]`` of each file, in the given order (``name``: the file name only, so
    the same data in another folder has the same fingerprint).

    With ``memo`` (a JSON file), a digest is remembered under the file's resolved path with its size and
    modification time, and reused while both are unchanged: a large data file is hashed once, not every
    run. A memo that cannot be read is ignored (and rewritten); concurrent writers at worst lose entries.
    """
    memo_path = Path(memo) if memo is not None else None
    known: dict[str, Any] = {}
    if memo_path is not None and memo_path.is_file():
        try:
            known = json.loads(memo_path.read_text())
            if not isinstance(known, dict):
                known = {}
        except (OSError, ValueError):
            log.warning("ignoring an unreadable fingerprint memo %s", memo_path)
            known = {}
    out, changed = [], False
    for path in map(Path, paths):
        resolved = str(path.resolve())
        stat = path.stat()
        entry = known.get(resolved)
        if not (isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
                and isinstance(entry.get("sha256"), str)):
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(path)}
            known[resolved], changed = entry, True
        out.append({"name": path.name, "size": stat.st_size, "sha256": entry["sha256"]})
    if changed and memo_path is not None:
        try:
            save_json(known, memo_path)
        except OSError as exc:  # a read-only cache folder: fingerprints are recomputed next time
            log.warning("could not write the fingerprint memo %s: %s", memo_path, exc)
    return out
