"""Study: RemOve And Retrain on MNIST (Crabbé & van der Schaar, 2022, appendix; ``protocol=roar``)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments.aggregation import aggregate_levels, redraw_levels
from experiments.cache import train_config
from experiments.claims import Claim, claim_from, compare_methods, figure_link, fmt, mean_by, read_table, resolve_methods
from experiments.explainers import build_feature_explainers
from experiments.study import Study, StudyResult, identify
from experiments.workbench import Workbench
from labelfree.data.subsets import random_subset
from labelfree.models.registry import build_model
from labelfree.modules import module_device
from labelfree.plots import dataset_label, plot_roar
from labelfree.protocols.roar import feature_importances, roar

TABLE = "roar"


def run(cfg: DictConfig, bench: Workbench) -> StudyResult:
    """Importances of the training images by the configured feature explainers, then one retraining from
    shared initial weights per (method, k)."""
    protocol, seed = cfg.protocol, int(cfg.seed)
    start = time.perf_counter()
    trained = bench.get("features")
    data, model = trained.data, trained.model
    bench.reseed()
    train_x, val_x = data.train_x[random_subset(len(data.train_x), protocol.n_train, seed)], data.val_x
    explainers, kwargs = build_feature_explainers(cfg, list(protocol.explainers), model.encoder)
    device, batch = module_device(model), int(protocol.batch_size)
    train_imp = feature_importances(explainers, kwargs, train_x, data.baseline, batch, device)
    val_imp = feature_importances(explainers, kwargs, val_x, data.baseline, batch, device)
    importance_seconds = time.perf_counter() - start

    retrain_cfg = OmegaConf.merge(cfg.trainer, protocol.retrain)
    bench.reseed()
    init_state = build_model(cfg.model).state_dict()  # one initialisation shared by every retraining
    frame = roar(
        lambda: build_model(cfg.model), init_state, train_x, val_x, data.test_x, train_imp, val_imp,
        list(protocol.percents), train_config(cfg, retrain_cfg), seed, baseline=data.baseline,
        channel_dim=data.channel_dim, include_unmasked=bool(protocol.include_unmasked),
    )
    frame = identify(cfg, data, frame)
    return StudyResult(
        tables={TABLE: frame},
        figures={TABLE: plot_roar(frame, f"{dataset_label(data.name)}: retraining without the most important pixels (seed {seed})")},
        summary={"roar_importance_seconds": importance_seconds, "roar_seconds": time.perf_counter() - start,
                 "roar_n_train": len(train_x)},
    )


def aggregate(runs: Sequence[Path], results: Path, scale: str) -> list[Path]:
    """Every run's rows, the mean +/- std table across seeds and the figure, per ROAR experiment."""
    return aggregate_levels(runs, results, scale, "roar", {TABLE: plot_roar})


def redraw(results: Path, scale: str) -> list[Path]:
    """The table and figure drawn again from the kept ``roar_runs.csv``."""
    return redraw_levels(results, scale, {TABLE: plot_roar})


def roar_claim(frame: pd.DataFrame | None, rules: Mapping[str, Any]) -> Claim:
    """Retraining without the top-k % pixels by each named explainer gives a higher clean test loss than
    without random pixels, at every k of ``rules.levels``."""
    levels, random_name = [float(k) for k in rules["levels"]], rules["random"]
    methods = resolve_methods(frame, rules["methods"])
    name = "ROAR, MNIST"
    paper = (f"retraining without the top-k% pixels ({', '.join(methods)}) gives a higher test loss than "
             f"without random pixels, k = {', '.join(f'{k:g}' for k in levels)}")
    if frame is None or frame.empty:
        return Claim(name, paper, "-")
    frame = frame[frame["metric"] == "test_loss"]
    inequalities, missing = compare_methods(frame, "test_loss", methods, random_name, levels)
    means = mean_by(frame, ["method", "level"])
    parts = [f"{m}: " + ", ".join(fmt(means[(m, k)]) if (m, k) in means else "-" for k in levels)
             for m in [*methods, random_name]]
    return claim_from(name, paper, f"test loss at k = {', '.join(f'{k:g}' for k in levels)}: " + "; ".join(parts),
                      inequalities, rules, missing)


def claims(results: Path, scale: str, rules: Mapping[str, Any]) -> list[Claim]:
    folder = results / str(rules["experiment"]) / scale
    claim = roar_claim(read_table(folder / f"{TABLE}_runs.csv"), rules)
    claim.figure = figure_link(folder / f"{TABLE}.png", results)
    return [claim]


STUDY = Study(name="roar", title="RemOve And Retrain", tables=(TABLE,), run=run, aggregate=aggregate, claims=claims,
              redraw=redraw)
