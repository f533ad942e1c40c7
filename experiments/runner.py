"""The runner: build objects from a composed config, train or load the model, run the protocol,
write results, figures, the resolved config and a summary into the run directory.

Hydra is only used by ``run.py``; :func:`run` takes a plain ``DictConfig`` (tests use Hydra's
compose API) and a run directory.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from captum.attr import Attribution
from omegaconf import DictConfig, OmegaConf

from labelfree.attribution.examples import (
    DKNN,
    InfluenceFunctions,
    Objective,
    RandomExampleImportance,
    SimplEx,
    TracIn,
    ExampleImportance,
)
from labelfree.attribution.features import make_feature_explainer
from labelfree.data.splits import DataSplits, build_dataset
from labelfree.io import load_torch, save_csv, save_json, save_text, save_torch
from labelfree.models.base import PretextModel
from labelfree.models.registry import build_model
from labelfree.plots import save_figure
from labelfree.tracking import CSVTracker, make_tracker
from labelfree.training import Checkpoint, TrainConfig, resolve_device, seed_everything, train

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached model format changes
SCALES = ("paper", "quick", "smoke")


# ----------------------------------------------------------------------------------------- config
def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def validate_config(cfg: DictConfig) -> None:
    """Fail early, with one clear message, on a scale an experiment does not define."""
    scale = cfg.scale.name
    if scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}; accepted: {list(SCALES)}")
    experiment = cfg.get("experiment")
    if experiment is not None and cfg.get("scale_preset") != f"{experiment}/{scale}":
        raise ValueError(
            f"experiment={experiment} has no preset for scale={scale} "
            f"(expected configs/preset/{experiment}/{scale}.yaml)"
        )


def model_cache_key(cfg: DictConfig, variant: str = "default", model_cfg: DictConfig | None = None,
                    trainer_cfg: DictConfig | None = None) -> str:
    """A hash of everything that determines the trained weights: data (and split variant), model, trainer, seed, device."""
    dataset = {k: v for k, v in _container(cfg.dataset).items() if k != "download"}
    payload = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "variant": variant,
        "model": _container(cfg.model if model_cfg is None else model_cfg),
        "trainer": _container(cfg.trainer if trainer_cfg is None else trainer_cfg),
        "seed": int(cfg.seed),
        "device": resolve_device(cfg.device).type,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_config(cfg: DictConfig, trainer_cfg: DictConfig | None = None) -> TrainConfig:
    return TrainConfig(**_container(cfg.trainer if trainer_cfg is None else trainer_cfg), device=str(cfg.device))


# ------------------------------------------------------------------------------------------ model
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


# ------------------------------------------------------------------------------------- explainers
def _explainer_settings(cfg: DictConfig, name: str, kind: str) -> dict[str, Any]:
    available = sorted(k for k, v in cfg.explainers.items() if v.kind == kind)
    if name not in cfg.explainers or cfg.explainers[name].kind != kind:
        raise ValueError(f"Unknown {kind} explainer {name!r}; accepted: {available}")
    return dict(_container(cfg.explainers[name]))


def build_feature_explainers(
    cfg: DictConfig, names: Sequence[str], encoder: torch.nn.Module
) -> tuple[dict[str, Attribution], dict[str, dict[str, Any]]]:
    """Label-free feature explainers named in ``names`` and the keyword arguments of their ``attribute``."""
    explainers, kwargs = {}, {}
    for name in names:
        settings = _explainer_settings(cfg, name, "feature")
        explainers[name] = make_feature_explainer(settings["method"], encoder, seed=int(cfg.seed))
        kwargs[name] = dict(settings.get("attribute") or {})
    return explainers, kwargs


def build_example_explainers(
    cfg: DictConfig, names: Sequence[str], model: PretextModel, checkpoints: Sequence[Checkpoint]
) -> dict[str, ExampleImportance]:
    """Label-free example explainers named in ``names``; loss-based ones differentiate the model's pretext loss."""
    explainers: dict[str, ExampleImportance] = {}
    objective: Objective | None = None
    for name in names:
        settings = _explainer_settings(cfg, name, "example")
        method = settings.pop("method")
        settings.pop("kind")
        if method in ("influence_functions", "tracin") and objective is None:
            objective = Objective(model)  # refuses, with the reason, a model whose loss couples a batch
        if method == "influence_functions":
            explainers[name] = InfluenceFunctions(objective, seed=int(cfg.seed), **settings)
        elif method == "tracin":
            if not checkpoints:
                raise ValueError(
                    "TracIn needs training checkpoints, but none were saved: lower trainer.checkpoint_every "
                    f"(now {cfg.trainer.checkpoint_every}) below the number of epochs trained"
                )
            explainers[name] = TracIn(objective, checkpoints, **settings)
        elif method == "simplex":
            if settings.get("lr") is None:
                settings.pop("lr", None)
            explainers[name] = SimplEx(model.encoder, **settings)
        elif method == "dknn":
            explainers[name] = DKNN(model.encoder, **settings)
        elif method == "random":
            explainers[name] = RandomExampleImportance(seed=int(cfg.seed))
        else:
            raise ValueError(f"Unknown example method {method!r} for explainer {name!r}")
    return explainers


# -------------------------------------------------------------------------------------- protocols
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

    def training_summary(self) -> dict[str, Any]:
        """Per split variant: whether the model came from the cache, epochs, best epoch and loss, seconds."""
        return {
            variant: {
                "model_cached": t.info["cached"],
                "train_seconds": t.info.get("train_seconds"),
                "epochs_trained": len(t.info["history"]),
                "best_epoch": t.info["best_epoch"],
                "best_val_loss": t.info["best_val_loss"],
                "n_train": len(t.data.train_x),
                "n_val": len(t.data.val_x),
            }
            for variant, t in self._trained.items()
        }


def identify(cfg: DictConfig, data: DataSplits, frame: pd.DataFrame) -> pd.DataFrame:
    """Prefix every row of a protocol's tidy frame with experiment, dataset, model and seed."""
    ident = {
        "experiment": cfg.get("experiment") or "adhoc",
        "dataset": data.name,
        "model": f"{cfg.model.name}:{cfg.model.get('pretext', '')}",
        "seed": int(cfg.seed),
    }
    return pd.DataFrame([{**ident, **row} for row in frame.to_dict("records")])


def write_check(name: str, frame: pd.DataFrame, figure: Any, run_dir: Path, tracker: CSVTracker) -> None:
    """Write one result table (CSV) and its figure (PNG + PDF) into ``run_dir`` and hand both to the tracker."""
    save_csv(frame, run_dir / f"{name}.csv")
    png = save_figure(figure, run_dir / name)[0]
    tracker.log_table(name, frame)
    tracker.log_figure(name, png)


#: ``protocol.name`` -> ``"module:function"`` of a protocol runner ``(cfg, bench, run_dir, tracker) -> summary``.
#: Imported lazily, so the library floor never imports the protocols floor at import time.
PROTOCOLS: dict[str, str] = {
    "consistency": "experiments.consistency:run_consistency",
    "roar": "experiments.roar:run_roar",
    "pretext": "experiments.pretext:run_pretext",
    "disvae": "experiments.disvae:run_disvae",
}


def protocol_runner(name: str) -> Callable[..., dict[str, Any]]:
    """The runner function of the protocol ``name`` (see :data:`PROTOCOLS`)."""
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {name!r}; accepted: {sorted(PROTOCOLS)}")
    module, function = PROTOCOLS[name].split(":")
    return getattr(importlib.import_module(module), function)



# ------------------------------------------------------------------------------------------- run
def _finished_summary(run_dir: Path, resolved_config: str) -> dict[str, Any] | None:
    """The summary of a run that already finished in ``run_dir`` with exactly this config, else None."""
    summary, config = run_dir / "summary.json", run_dir / "config.yaml"
    if not (summary.exists() and config.exists()) or config.read_text() != resolved_config:
        return None
    try:
        return json.loads(summary.read_text())
    except json.JSONDecodeError:
        return None


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run one experiment described by ``cfg`` into ``run_dir``; return the summary (also ``summary.json``)."""
    start = time.perf_counter()
    validate_config(cfg)
    protocol = protocol_runner(cfg.protocol.name)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    finished = _finished_summary(run_dir, resolved)
    if finished is not None and cfg.get("skip_finished", False):
        log.info("already finished with the same config, skipped: %s", run_dir)
        return finished
    (run_dir / "summary.json").unlink(missing_ok=True)  # a rerun is unfinished until it writes a new one
    save_text(resolved, run_dir / "config.yaml")
    seed_everything(int(cfg.seed))
    bench = Workbench(cfg)
    name = f"{cfg.get('experiment') or 'adhoc'}-{cfg.scale.name}-seed{cfg.seed}"
    tracker = make_tracker(_container(cfg.logger), _container(cfg), run_dir, name)
    try:
        summary: dict[str, Any] = {
            "experiment": cfg.get("experiment"),
            "scale": cfg.scale.name,
            "seed": int(cfg.seed),
            "device": resolve_device(cfg.device).type,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        summary.update(protocol(cfg, bench, run_dir, tracker))
        summary["training"] = bench.training_summary()
        summary["model_cached"] = all(t["model_cached"] for t in summary["training"].values())
        summary["wall_seconds"] = time.perf_counter() - start
        save_json(summary, run_dir / "summary.json")
        tracker.log_summary(summary)
    finally:
        tracker.finish()
    log.info("run finished in %.1f s: %s", summary["wall_seconds"], run_dir)
    return summary
