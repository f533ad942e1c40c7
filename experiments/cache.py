"""The model cache: a trained model is stored under a key derived from everything that determines it,
and a second run with the same key loads it instead of training."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from experiments.config import container
from labelfree.data.splits import DataSplits
from labelfree.io import load_torch, save_json, save_torch
from labelfree.models.base import PretextModel
from labelfree.models.registry import build_model
from labelfree.training import Checkpoint, TrainConfig, resolve_device, train

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached model format changes


def model_cache_key(cfg: DictConfig, variant: str = "default", model_cfg: DictConfig | None = None,
                    trainer_cfg: DictConfig | None = None) -> str:
    """A hash of everything that determines the trained weights: data (and split variant), model, trainer, seed, device."""
    dataset = {k: v for k, v in container(cfg.dataset).items() if k != "download"}
    payload = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "variant": variant,
        "model": container(cfg.model if model_cfg is None else model_cfg),
        "trainer": container(cfg.trainer if trainer_cfg is None else trainer_cfg),
        "seed": int(cfg.seed),
        "device": resolve_device(cfg.device).type,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_config(cfg: DictConfig, trainer_cfg: DictConfig | None = None) -> TrainConfig:
    return TrainConfig(**container(cfg.trainer if trainer_cfg is None else trainer_cfg), device=str(cfg.device))


def train_or_load(
    cfg: DictConfig, data: DataSplits, model_cfg: DictConfig | None = None, trainer_cfg: DictConfig | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> tuple[PretextModel, list[Checkpoint], dict[str, Any]]:
    """The trained model for ``cfg``: loaded from the cache when its key exists, else trained and cached.

    ``model_cfg``/``trainer_cfg`` replace ``cfg.model``/``cfg.trainer`` (protocols that train several
    models); ``init_state`` starts training from given weights instead of the seeded initialisation
    (it must then be part of what ``data.variant`` names). An interrupted training resumes from the
    cache folder's ``checkpoints/last.pt``.
    """
    model_cfg = cfg.model if model_cfg is None else model_cfg
    model = build_model(model_cfg)
    key = model_cache_key(cfg, data.variant, model_cfg, trainer_cfg)
    tag = model_cfg.get("pretext") or model_cfg.name
    folder = Path(cfg.paths.cache_dir).expanduser().resolve() / "models" / f"{data.name}-{data.variant}-{tag}-seed{cfg.seed}-{key}"
    weights, info_path = folder / "model.pt", folder / "train.json"
    device = resolve_device(cfg.device)
    if weights.exists() and info_path.exists():
        log.info("loading cached model %s", folder)
        model.load_state_dict(load_torch(weights))
        info = json.loads(info_path.read_text())
        info["cached"] = True
    else:
        config = train_config(cfg, trainer_cfg)
        if init_state is not None:
            model.load_state_dict(init_state)
        start = time.perf_counter()
        result = train(
            model, data.train_x, data.val_x, config, seed=int(cfg.seed),
            train_y=data.train_y, val_y=data.val_y, checkpoint_dir=folder / "checkpoints",
        )
        info = {
            "key": key,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "checkpoints": [{"file": str(c.path.relative_to(folder)), "learning_rate": c.learning_rate} for c in result.checkpoints],
            "train_seconds": time.perf_counter() - start,
            "device": device.type,
        }
        save_torch(model.state_dict(), weights)
        save_json(info, info_path)
        (folder / "checkpoints" / "last.pt").unlink(missing_ok=True)
        info["cached"] = False
    checkpoints = [Checkpoint(folder / c["file"], float(c["learning_rate"])) for c in info["checkpoints"]]
    model.to(device).eval()
    return model, checkpoints, info
