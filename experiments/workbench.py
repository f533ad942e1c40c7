"""The workbench hands each study its data splits and trained models, loading or training each once per run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from experiments.cache import train_or_load
from labelfree.data.splits import DataSplits, build_dataset
from labelfree.models.base import PretextModel
from labelfree.training import Checkpoint, seed_everything


@dataclass
class Trained:
    """A data split and the model trained on it (with its TracIn checkpoints and training summary)."""

    data: DataSplits
    model: PretextModel
    checkpoints: list[Checkpoint]
    info: dict[str, Any]


class Workbench:
    """Hands each check its data and trained model; checks that share a split share one model."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self._data: dict[str, DataSplits] = {}
        self._trained: dict[str, Trained] = {}

    def reseed(self) -> None:
        """Seed every generator with the run's seed: the runner does it before anything else, and a study
        before each stage that draws random numbers after models were trained or loaded, so that those draws
        are the same whether the models came from the cache or not."""
        seed_everything(int(self.cfg.seed))

    def data(self, purpose: str) -> DataSplits:
        """The split for ``purpose`` (``features`` or ``examples``), loaded once."""
        if purpose not in self._data:
            cfg = self.cfg
            self._data[purpose] = build_dataset(
                cfg.dataset, Path(cfg.paths.data_dir).expanduser(), seed=int(cfg.seed), purpose=purpose
            )
        return self._data[purpose]

    def get(self, purpose: str, model_cfg: DictConfig | None = None, trainer_cfg: DictConfig | None = None) -> Trained:
        """The split for ``purpose`` and its model (``cfg.model`` unless ``model_cfg``), trained or loaded once."""
        data = self.data(purpose)
        name = f"{data.variant}" if model_cfg is None else f"{data.variant}/{model_cfg.get('pretext') or model_cfg.name}"
        if name not in self._trained:
            model, checkpoints, info = train_or_load(self.cfg, data, model_cfg, trainer_cfg)
            self._trained[name] = Trained(data, model, checkpoints, info)
        return self._trained[name]

    def training_history(self) -> "pd.DataFrame":
        """Every model's per-epoch history (epoch, lr, train_loss, val_loss), one ``model`` column per split variant."""
        frames = [pd.DataFrame(t.info["history"]).assign(model=variant) for variant, t in self._trained.items()
                  if t.info.get("history")]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def training_summary(self) -> dict[str, Any]:
        """Per split variant: whether the model came from the cache, epochs, best epoch and loss, seconds."""
        return {
            variant: {
                "model_cached": t.info["cached"],
                "train_seconds": t.info.get("train_seconds"),
                "resumed_from_epoch": t.info.get("resumed_from_epoch", 0),
                "epochs_trained": len(t.info["history"]),
                "best_epoch": t.info["best_epoch"],
                "best_val_loss": t.info["best_val_loss"],
                "n_train": len(t.data.train_x),
                "n_val": len(t.data.val_x),
            }
            for variant, t in self._trained.items()
        }
