"""Experiment trackers: ``csv`` (the run directory's files only) and ``wandb``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)
TRACKERS = ("csv", "wandb")


class CSVTracker:
    """The default: results already live as tidy CSVs in the run directory; nothing else to send."""

    def log_table(self, name: str, frame: pd.DataFrame) -> None:
        """Tables are written by the runner; nothing to do."""

    def log_figure(self, name: str, path: Path) -> None:
        """Figures are written by the runner; nothing to do."""

    def log_history(self, history: pd.DataFrame) -> None:
        """The per-epoch history is written by the runner (``training_history.csv``); nothing to do."""

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """The summary is written by the runner; nothing to do."""

    def finish(self) -> None:
        """Nothing to close."""


class WandbTracker(CSVTracker):
    """Logs the config, tidy tables (as W&B tables and scalar metrics), figures and the summary.

    Honours ``WANDB_MODE`` (``offline`` writes under the run directory and needs no network).
    """

    def __init__(self, settings: Mapping[str, Any], config: Mapping[str, Any], run_dir: Path, name: str) -> None:
        import wandb

        self._wandb = wandb
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        self.run = wandb.init(
            project=settings.get("project"),
            entity=settings.get("entity"),
            group=settings.get("group"),
            tags=list(settings.get("tags") or []),
            name=name,
            config=dict(config),
            dir=str(run_dir),
            reinit="finish_previous",
        )

    def log_table(self, name: str, frame: pd.DataFrame) -> None:
        self.run.log({name: self._wandb.Table(dataframe=frame)})
        scalars = {
            f"{name}/{row.method}/{row.metric}@{row.level:g}": row.value for row in frame.itertuples(index=False)
        }
        self.run.summary.update(scalars)

    def log_figure(self, name: str, path: Path) -> None:
        self.run.log({name: self._wandb.Image(str(path))})

    def log_history(self, history: pd.DataFrame) -> None:
        """Loss curves: one W&B line per model and loss against the epoch."""
        for model, part in history.groupby("model", sort=False):
            for row in part.itertuples(index=False):
                self.run.log({f"train/{model}/{k}": getattr(row, k) for k in ("train_loss", "val_loss", "lr")
                              if hasattr(row, k)} | {f"train/{model}/epoch": row.epoch})

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        flat = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
        self.run.summary.update(flat)

    def finish(self) -> None:
        self.run.finish()


def make_tracker(settings: Mapping[str, Any], config: Mapping[str, Any], run_dir: Path, name: str) -> CSVTracker:
    """The tracker named ``settings['name']`` (one of :data:`TRACKERS`)."""
    kind = settings.get("name", "csv")
    if kind == "csv":
        return CSVTracker()
    if kind == "wandb":
        return WandbTracker(settings, config, run_dir, name)
    raise ValueError(f"Unknown logger {kind!r}; accepted: {list(TRACKERS)}")
