"""The model cache: a trained model is stored under a key derived from everything that determines it,
and a second run with the same key loads it instead of training.

The key covers the data's content (name, size and SHA-256 of every file the splits were read from,
remembered in ``<cache_dir>/data_fingerprints.json`` by path, size and mtime). One job at a time works on a
key: a file lock (``<folder>.lock``) is held while the entry is loaded, checked or trained, so a second job
with the same key waits and then loads what the first cached. With the lock held, temporary files that a
killed write left are removed. An entry that cannot be read (truncated ``model.pt``, ``train.json`` or TracIn
checkpoint, non-finite weights) is reported, moved aside to ``<folder>.corrupt-<time>`` and retrained; an
unreadable resume state ``checkpoints/last.pt`` is handled by the trainer likewise. A model is written to the
cache only after training returned, so a run that stops (a non-finite loss, a crash) caches nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig

from experiments.config import container, without_later_defaults
from labelfree.data.splits import DataSplits
from labelfree.guards import nonfinite_entries
from labelfree.io import fingerprint_files, load_torch, move_aside, remove_stale_tmp, save_json, save_torch
from labelfree.models.base import PretextModel
from labelfree.models.registry import build_model
from labelfree.training import Checkpoint, TrainConfig, resolve_device, train

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached model format changes


def model_cache_key(cfg: DictConfig, variant: str = "default", model_cfg: DictConfig | None = None,
                    trainer_cfg: DictConfig | None = None, data_files: Sequence[Mapping[str, Any]] | None = None) -> str:
    """A hash of everything that determines the trained weights: data (its config, split variant and, with
    ``data_files``, the fingerprints of the files read: :func:`labelfree.io.fingerprint_files`), model,
    trainer, seed, device (without :data:`~experiments.config.LATER_DEFAULTS` at their defaults)."""
    dataset = {k: v for k, v in container(cfg.dataset).items() if k != "download"}
    payload: dict[str, Any] = without_later_defaults({
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "variant": variant,
        "model": container(cfg.model if model_cfg is None else model_cfg),
        "trainer": container(cfg.trainer if trainer_cfg is None else trainer_cfg),
        "seed": int(cfg.seed),
        "device": resolve_device(cfg.device).type,
    })
    if data_files is not None:
        payload["data_files"] = [dict(entry) for entry in data_files]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_config(cfg: DictConfig, trainer_cfg: DictConfig | None = None) -> TrainConfig:
    return TrainConfig(**container(cfg.trainer if trainer_cfg is None else trainer_cfg), device=str(cfg.device))


@contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """Hold ``<folder>.lock`` (next to the folder, so that moving a corrupt folder aside keeps it); a second
    holder waits, saying so in the log."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.with_name(folder.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another job working on the cached model %s", folder)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _check_checkpoint(path: Path, size: int | None) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"TracIn checkpoint {path.name} is missing")
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ValueError(f"TracIn checkpoint {path.name} has {actual} bytes, {size} were written")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive: a truncated one has no central directory
        raise ValueError(f"TracIn checkpoint {path.name} is not a complete torch file")


def _load_cached(folder: Path, model: PretextModel) -> dict[str, Any] | None:
    """The cached entry's training summary, with its weights loaded into ``model``; None when the entry is
    absent or was corrupt (then moved aside, ``model`` left as it was)."""
    weights, info_path = folder / "model.pt", folder / "train.json"
    if not (weights.exists() and info_path.exists()):
        return None
    initial = copy.deepcopy(model.state_dict())
    try:
        state = load_torch(weights)
        broken = nonfinite_entries(state)
        if broken:
            raise ValueError(f"model.pt holds non-finite weights: {broken[:5]}")
        info = json.loads(info_path.read_text())
        for name in ("history", "best_epoch", "best_val_loss", "checkpoints"):
            if name not in info:
                raise ValueError(f"train.json lacks {name!r}")
        for entry in info["checkpoints"]:
            _check_checkpoint(folder / entry["file"], entry.get("size"))
        model.load_state_dict(state)
    except Exception as exc:  # truncated or foreign files: RuntimeError, EOFError, JSONDecodeError, KeyError, ...
        model.load_state_dict(initial)
        moved = move_aside(folder)
        log.warning("cached model %s is unreadable (%s: %s); moved it to %s and training again",
                    folder, type(exc).__name__, exc, moved.name)
        return None
    log.info("loading cached model %s", folder)
    return info


def train_or_load(
    cfg: DictConfig, data: DataSplits, model_cfg: DictConfig | None = None, trainer_cfg: DictConfig | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> tuple[PretextModel, list[Checkpoint], dict[str, Any]]:
    """The trained model for ``cfg``: loaded from the cache when its key exists, else trained and cached.

    ``model_cfg``/``trainer_cfg`` replace ``cfg.model``/``cfg.trainer`` (protocols that train several
    models); ``init_state`` starts training from given weights instead of the seeded initialisation
    (it must then be part of what ``data.variant`` names). An interrupted training resumes from the
    cache folder's ``checkpoints/last.pt``. The key's folder is locked meanwhile (module docstring).
    """
    model_cfg = cfg.model if model_cfg is None else model_cfg
    model = build_model(model_cfg)
    bind_data = getattr(model, "bind_data", None)  # a graph model (VGAE) reads its graph from the splits
    if callable(bind_data):
        bind_data(data)
    cache_dir = Path(cfg.paths.cache_dir).expanduser().resolve()
    fingerprints = fingerprint_files(data.files, memo=cache_dir / "data_fingerprints.json")
    key = model_cache_key(cfg, data.variant, model_cfg, trainer_cfg, fingerprints)
    tag = model_cfg.get("pretext") or model_cfg.name
    folder = cache_dir / "models" / f"{data.name}-{data.variant}-{tag}-seed{cfg.seed}-{key}"
    weights, info_path = folder / "model.pt", folder / "train.json"
    device = resolve_device(cfg.device)
    with cache_lock(folder):
        remove_stale_tmp(folder)
        info = _load_cached(folder, model)
        if info is not None:
            info["cached"] = True
        else:
            config = train_config(cfg, trainer_cfg)
            if init_state is not None:
                model.load_state_dict(init_state)
            start = time.perf_counter()
            train_on = getattr(model, "train_on", None)  # a model with its own training loop (VGAE: full batch)
            result = train_on(data, config, int(cfg.seed), folder / "checkpoints") if callable(train_on) else train(
                model, data.train_x, data.val_x, config, seed=int(cfg.seed),
                train_y=data.train_y, val_y=data.val_y, checkpoint_dir=folder / "checkpoints",
            )
            info = {
                "key": key,
                "data_files": fingerprints,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "best_val_loss": result.best_val_loss,
                "checkpoints": [{"file": str(c.path.relative_to(folder)), "learning_rate": c.learning_rate,
                                 "size": c.path.stat().st_size} for c in result.checkpoints],
                "train_seconds": time.perf_counter() - start,
                "resumed_from_epoch": result.resumed_from,
                "device": device.type,
            }
            save_torch(model.state_dict(), weights)
            save_json(info, info_path)
            (folder / "checkpoints" / "last.pt").unlink(missing_ok=True)
            info["cached"] = False
    checkpoints = [Checkpoint(folder / c["file"], float(c["learning_rate"])) for c in info["checkpoints"]]
    model.to(device).eval()
    return model, checkpoints, info
