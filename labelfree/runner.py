"""The runner: build objects from a composed config, train or load the model, run the protocol,
write results, figures, the resolved config and a summary into the run directory.

Hydra is only used by ``run.py``; :func:`run` takes a plain ``DictConfig`` (tests use Hydra's
compose API) and a run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Sequence
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
from labelfree.data.subsets import balanced_subset
from labelfree.io import load_torch, save_csv, save_json, save_text, save_torch
from labelfree.models.base import PretextModel
from labelfree.models.registry import build_model
from labelfree.plots import plot_representation_shift, plot_similarity_rates, save_figure
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


def model_cache_key(cfg: DictConfig, variant: str = "default") -> str:
    """A hash of everything that determines the trained weights: data (and split variant), model, trainer, seed, device."""
    dataset = {k: v for k, v in _container(cfg.dataset).items() if k != "download"}
    payload = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "variant": variant,
        "model": _container(cfg.model),
        "trainer": _container(cfg.trainer),
        "seed": int(cfg.seed),
        "device": resolve_device(cfg.device).type,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_config(cfg: DictConfig) -> TrainConfig:
    return TrainConfig(**_container(cfg.trainer), device=str(cfg.device))


# ------------------------------------------------------------------------------------------ model
def train_or_load(cfg: DictConfig, data: DataSplits) -> tuple[PretextModel, list[Checkpoint], dict[str, Any]]:
    """The trained model for ``cfg``: loaded from the cache when its key exists, else trained and cached.

    An interrupted training resumes from the cache folder's ``checkpoints/last.pt``.
    """
    model = build_model(cfg.model)
    key = model_cache_key(cfg, data.variant)
    folder = Path(cfg.paths.cache_dir).expanduser().resolve() / "models" / f"{data.name}-{data.variant}-{cfg.model.pretext}-seed{cfg.seed}-{key}"
    weights, info_path = folder / "model.pt", folder / "train.json"
    device = resolve_device(cfg.device)
    if weights.exists() and info_path.exists():
        log.info("loading cached model %s", folder)
        model.load_state_dict(load_torch(weights))
        info = json.loads(info_path.read_text())
        info["cached"] = True
    else:
        config = train_config(cfg)
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
    objective = Objective(model)
    for name in names:
        settings = _explainer_settings(cfg, name, "example")
        method = settings.pop("method")
        settings.pop("kind")
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
        self._trained: dict[str, Trained] = {}

    def get(self, purpose: str) -> Trained:
        """The split for ``purpose`` (``features`` or ``examples``) and its model, trained or loaded once."""
        cfg = self.cfg
        data = build_dataset(cfg.dataset, Path(cfg.paths.data_dir).expanduser(), seed=int(cfg.seed), purpose=purpose)
        if data.variant not in self._trained:
            model, checkpoints, info = train_or_load(cfg, data)
            self._trained[data.variant] = Trained(data, model, checkpoints, info)
        return self._trained[data.variant]

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


def _identify(cfg: DictConfig, data: DataSplits, frame: pd.DataFrame) -> pd.DataFrame:
    ident = {
        "experiment": cfg.get("experiment") or "adhoc",
        "dataset": data.name,
        "model": f"{cfg.model.name}:{cfg.model.get('pretext', '')}",
        "seed": int(cfg.seed),
    }
    return pd.DataFrame([{**ident, **row} for row in frame.to_dict("records")])


def _write_check(name: str, frame: pd.DataFrame, figure: Any, run_dir: Path, tracker: CSVTracker) -> None:
    save_csv(frame, run_dir / f"{name}.csv")
    png = save_figure(figure, run_dir / name)[0]
    tracker.log_table(name, frame)
    tracker.log_figure(name, png)


def run_consistency(cfg: DictConfig, bench: Workbench, run_dir: Path, tracker: CSVTracker) -> dict[str, Any]:
    """Both consistency checks (PAPER.md section 2); writes CSVs and figures; returns summary entries."""
    from experiments.consistency_examples import consistency_examples
    from experiments.consistency_features import consistency_features

    protocol, summary, seed = cfg.protocol, {}, int(cfg.seed)
    if protocol.features.enabled:
        start = time.perf_counter()
        trained = bench.get("features")
        seed_everything(seed)  # the same draws whether the model was trained now or loaded
        data, encoder = trained.data, trained.model.encoder
        test_x = data.test_x
        if protocol.features.n_test is not None:
            order = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(seed))
            test_x = test_x[order[: int(protocol.features.n_test)]]
        explainers, kwargs = build_feature_explainers(cfg, list(protocol.features.explainers), encoder)
        frame = consistency_features(
            encoder, test_x, data.baseline, explainers, kwargs, list(protocol.features.percents),
            channel_dim=data.channel_dim, batch_size=int(protocol.features.batch_size),
        )
        frame = _identify(cfg, data, frame)
        title = f"{data.name}: feature importance (seed {seed})"
        _write_check("consistency_features", frame, plot_representation_shift(frame, title), run_dir, tracker)
        summary["features_seconds"] = time.perf_counter() - start
    if protocol.examples.enabled:
        start = time.perf_counter()
        trained = bench.get("examples")
        seed_everything(seed)
        data, model = trained.data, trained.model
        train_idx = balanced_subset(data.train_y, int(protocol.examples.train_per_class), seed=seed)
        test_idx = balanced_subset(data.test_y, int(protocol.examples.test_per_class), seed=seed)
        explainers = build_example_explainers(cfg, list(protocol.examples.explainers), model, trained.checkpoints)
        frame, seconds = consistency_examples(
            explainers, data.train_x[train_idx], data.train_y[train_idx], data.test_x[test_idx], data.test_y[test_idx],
            list(protocol.examples.percents), fit_labels=model.uses_labels,
        )
        frame = _identify(cfg, data, frame)
        title = f"{data.name}: example importance (seed {seed})"
        _write_check("consistency_examples", frame, plot_similarity_rates(frame, title), run_dir, tracker)
        summary["examples_seconds"] = time.perf_counter() - start
        summary["example_explainer_seconds"] = seconds
    return summary


PROTOCOLS = {"consistency": run_consistency}


# ------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run one experiment described by ``cfg`` into ``run_dir``; return the summary (also ``summary.json``)."""
    start = time.perf_counter()
    validate_config(cfg)
    protocol = cfg.protocol.name
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; accepted: {sorted(PROTOCOLS)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_text(OmegaConf.to_yaml(cfg, resolve=True), run_dir / "config.yaml")
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
        summary.update(PROTOCOLS[protocol](cfg, bench, run_dir, tracker))
        summary["training"] = bench.training_summary()
        summary["model_cached"] = all(t["model_cached"] for t in summary["training"].values())
        summary["wall_seconds"] = time.perf_counter() - start
        save_json(summary, run_dir / "summary.json")
        tracker.log_summary(summary)
    finally:
        tracker.finish()
    log.info("run finished in %.1f s: %s", summary["wall_seconds"], run_dir)
    return summary
