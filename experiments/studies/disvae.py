"""Study: do the latent units of disentangled VAEs attend to distinct features? (Crabbé & van der Schaar, 2022,
"VAEs"; ``protocol=disvae``, experiments ``mnist_disvae`` and ``dsprites_disvae``).

Aggregated outputs under ``<results>/disvae/<scale>/`` (both data sets together):

* ``disvae_runs.csv``: every run's rows; ``disvae_stats.csv``: mean, std (across seeds) and number of seeds per
  (dataset, loss, beta, metric); ``disvae_runs.json``: the runs read and those skipped;
* ``disvae_mean_std.{csv,md,tex}``: one row per (dataset, loss, beta), one ``mean +/- std`` column per metric;
* ``disvae_trend.{csv,md,tex}``: per (dataset, loss, metric) the mean at each beta, the least-squares slope of
  the runs' values against beta, ``falls``: whether the mean decreases at every step of beta, and ``seeds``: how
  many seeds these rest on (those that have run every beta, while a sweep is partial);
* ``disvae_<dataset>_boxplots.{png,pdf}``: each metric against beta, one colour per loss;
* ``disvae_units_<dataset>_<loss>_beta<b>_seed<s>.png``: the unit-map figure of the lowest seed of each model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from omegaconf import DictConfig, OmegaConf

from experiments.aggregation import (
    check_one_config,
    collect,
    copy_file,
    expected_seeds,
    format_mean_std,
    mean_std,
    remove_stale,
    write_table,
)
from experiments.claims import Claim, claim_from, figure_link, fmt, paired, read_table
from experiments.explainers import build_feature_explainers
from experiments.study import Study, StudyResult, identify
from experiments.workbench import Workbench
from labelfree.data.splits import DataSplits
from labelfree.data.subsets import random_subset
from labelfree.io import save_csv, save_json
from labelfree.plots import dataset_label, plot_metric_boxes, plot_unit_saliency, save_figure
from labelfree.protocols.disvae import METRICS, TABLE, disvae_unit_maps

log = logging.getLogger(__name__)

FOLDER = "disvae"  # results/<FOLDER>/<scale>: every VAE experiment aggregates into one folder
PREFIX = "disvae_"
KEYS = ["dataset", "loss", "beta", "metric"]
DIGITS = 3  # decimals of the mean +/- std cells
LABELS = {
    "beta_vae": r"$\beta$-VAE",
    "tc_vae": r"$\beta$-TCVAE",
    "pearson": "Pearson (per image)",
    "spearman": "Spearman (per image)",
    "pearson_pooled": "Pearson (pooled)",
    "spearman_pooled": "Spearman (pooled)",
    "cosine": "cosine",
    "entropy": "entropy (nats)",
    "active_units": "active units per pixel",
    "collapsed_units": "collapsed units",
    "gradient_shap": "Gradient Shap",
}


def model_config(cfg: DictConfig, data: DataSplits) -> DictConfig:
    """``cfg.model`` with ``dataset_size`` (N of the TC-VAE estimator) set to the training split's size when it is null."""
    if "dataset_size" in cfg.model and cfg.model.dataset_size is None:
        return OmegaConf.merge(cfg.model, {"dataset_size": len(data.train_x)})
    return cfg.model


def run(cfg: DictConfig, bench: Workbench) -> StudyResult:
    """Train or load the VAE of ``cfg.model`` and explain each latent unit of its mean on test images.

    ``protocol.flush_denormal`` is applied by the runner before any torch work (see
    :func:`experiments.runner.flush_denormals`)."""
    protocol, seed = cfg.protocol, int(cfg.seed)
    start = time.perf_counter()
    data = bench.data("features")
    model_cfg = model_config(cfg, data)
    if "beta" not in model_cfg:
        raise ValueError(f"protocol disvae explains the latent units of a VAE (model=beta_vae or tc_vae), "
                         f"got model {model_cfg.name!r}")
    trained = bench.get("features", model_cfg)
    encoder = trained.model.encoder
    summary: dict[str, Any] = {"model_seconds": time.perf_counter() - start}

    start = time.perf_counter()
    bench.reseed()
    test_x = data.test_x[random_subset(len(data.test_x), protocol.n_test, seed)]
    name = str(protocol.explainer)
    explainers, kwargs = build_feature_explainers(cfg, [name], encoder)
    pooled_max = protocol.get("pooled_max_images")
    frame, kl, shown = disvae_unit_maps(
        explainers[name], encoder, test_x, data.baseline, kwargs[name], int(protocol.batch_size),
        float(protocol.collapse_kl), data.channel_dim, None if pooled_max is None else int(pooled_max),
        n_show=min(int(protocol.figures.n_images), len(test_x)),
    )
    loss, beta = str(model_cfg.get("pretext") or model_cfg.name), float(model_cfg.beta)
    frame.insert(0, "method", name)
    frame.insert(1, "loss", loss)
    frame.insert(2, "beta", beta)
    frame.insert(3, "latent_dim", int(model_cfg.latent_dim))
    frame.insert(4, "level", beta)
    frame = identify(cfg, data, frame)
    title = (f"{dataset_label(data.name)}, {LABELS.get(loss, loss)} with beta = {beta:g} (seed {seed}): the saliency of "
             f"each latent unit, |mu_j(x) a_j(x)| by {LABELS.get(name, name)}")
    figure = plot_unit_saliency(test_x[: len(shown)], shown, title, unit_kl=kl.tolist())
    summary.update({f"{row.metric}": row.value for row in frame.itertuples(index=False)})
    summary.update({"explain_seconds": time.perf_counter() - start, "n_test": len(test_x), "loss": loss, "beta": beta,
                    "kl_per_unit": kl.tolist()})
    log.info("%s beta=%g seed %d: pearson %.3f, spearman %.3f, cosine %.3f, entropy %.3f, active units %.2f", loss, beta,
             seed, *(summary[m] for m in ("pearson", "spearman", "cosine", "entropy", "active_units")))
    return StudyResult(tables={TABLE: frame}, figures={TABLE: figure}, summary=summary)


# -------------------------------------------------------------------------------------- aggregation
def _metric_order(frame: pd.DataFrame) -> list[str]:
    present = set(frame["metric"])
    return [m for m in METRICS if m in present] + sorted(present - set(METRICS))


def metric_limits(frame: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Each metric's natural range, drawn whole: correlations and cosines of non-negative maps 0 to 1 (-1 to 1
    when a value is negative), entropy 0 to log d, unit counts 0 to d."""
    d = int(frame["latent_dim"].max())
    limits: dict[str, tuple[float, float]] = {"entropy": (0.0, math.log(d)), "active_units": (0.0, float(d)),
                                              "collapsed_units": (0.0, float(d))}
    for metric in ("pearson", "spearman", "pearson_pooled", "spearman_pooled", "cosine"):
        values = frame.loc[frame["metric"] == metric, "value"]
        limits[metric] = (-1.0 if (values < 0).any() else 0.0, 1.0)
    return limits


def mean_std_table(stats: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (dataset, loss, beta); a ``mean +/- std`` column per metric; the number of seeds last."""
    cells = stats.assign(cell=[format_mean_std(m, s, DIGITS) for m, s in zip(stats["mean"], stats["std"])])
    wide = cells.pivot(index=["dataset", "loss", "beta"], columns="metric", values="cell")
    wide = wide.reindex(columns=list(metrics))
    wide["seeds"] = stats.groupby(["dataset", "loss", "beta"])["n"].max()
    return wide.rename_axis(columns=None).reset_index()


def trend_table(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per (dataset, loss, metric): the mean at each beta, the slope of the runs' values against beta (least
    squares), whether the mean falls at every step of beta (``falls``) and the seeds these rest on (``seeds``).

    Only the seeds that have run every beta of their (dataset, loss) count, so that a sweep still running does
    not set one beta's mean over some seeds against another's over others; if no seed has every beta, all do.
    """
    rows = []
    for (dataset, loss), part in frame.groupby(["dataset", "loss"], sort=True):
        part = part[part["value"].notna()]
        betas = sorted(set(part["beta"].astype(float)))
        per_seed = part.groupby("seed")["beta"].agg(lambda b: set(b.astype(float)))
        complete = [s for s, found in per_seed.items() if set(betas) <= found]
        if complete:
            part = part[part["seed"].isin(complete)]
        for metric in metrics:
            runs = part[part["metric"] == metric]
            if runs.empty:
                continue
            means = runs.groupby("beta")["value"].mean().sort_index()
            beta, values = runs["beta"].to_numpy(float), runs["value"].to_numpy(float)
            slope = float(np.polyfit(beta, values, 1)[0]) if len(set(beta)) > 1 else float("nan")
            steps = np.diff(means.to_numpy(float))
            row = {"dataset": dataset, "loss": loss, "metric": metric}
            row.update({f"beta={b:g}": m for b, m in means.items()})
            row.update({"slope": slope, "falls": bool(len(steps) > 0 and (steps < 0).all()),
                        "seeds": int(runs["seed"].nunique())})
            rows.append(row)
    return pd.DataFrame(rows)


def write_tables(frame: pd.DataFrame, out: Path) -> list[Path]:
    """From the stacked rows of every VAE run: the statistics, the mean/std and trend tables and the figures."""
    metrics = _metric_order(frame)
    stats = mean_std(frame, KEYS)
    written = [save_csv(stats, out / f"{PREFIX}stats.csv")]
    written += write_table(stats, out / f"{PREFIX}mean_std", display=mean_std_table(stats, metrics))
    written += write_table(trend_table(frame, metrics), out / f"{PREFIX}trend")
    for dataset, part in frame.groupby("dataset", sort=True):
        seeds = sorted(part["seed"].unique())
        title = (f"{dataset_label(dataset)}: how the latent units' saliency maps relate, against beta "
                 f"({len(seeds)} seed{'s' * (len(seeds) > 1)} per model)")
        written += save_figure(plot_metric_boxes(part, metrics, title, LABELS, limits=metric_limits(part)),
                               out / f"{PREFIX}{dataset}_boxplots")
    return written


def redraw(results: Path, scale: str) -> list[Path]:
    """The tables and figures drawn again from the kept ``disvae_runs.csv``."""
    path = results / FOLDER / scale / f"{PREFIX}runs.csv"
    return write_tables(pd.read_csv(path), path.parent) if path.exists() else []


def aggregate(runs: Sequence[Path], results: Path, scale: str) -> list[Path]:
    """Every table and figure of the VAE study from the finished runs (both data sets in one folder)."""
    found = collect(runs, TABLE, scale=scale, study="disvae")
    frame = found.frame
    if frame.empty:
        return []
    check_one_config(found, ["experiment", "loss", "beta"], TABLE)
    out = results / FOLDER / scale
    written = [save_csv(frame, out / f"{PREFIX}runs.csv"), *write_tables(frame, out)]
    for (dataset, loss, beta), part in frame.groupby(["dataset", "loss", "beta"], sort=True):
        seed = int(part["seed"].min())
        source = Path(part.loc[part["seed"] == seed, "run_dir"].iloc[0]) / f"{TABLE}.png"
        if source.exists():
            written.append(copy_file(source, out / f"{PREFIX}units_{dataset}_{loss}_beta{beta:g}_seed{seed}.png"))
    written.append(save_json(found.record(expected_seeds(runs, scale)), out / f"{PREFIX}runs.json"))
    remove_stale(out, PREFIX, written)
    log.info("disvae: %d runs, %d skipped", len(found.runs), len(found.skipped))
    return written


# ------------------------------------------------------------------------------------------- claims
def slope_interval(beta: np.ndarray, value: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Least-squares slope of ``value`` against ``beta`` over runs and its two-sided ``confidence`` interval."""
    if len(set(beta.tolist())) < 2 or len(beta) < 3:
        return float("nan"), float("nan"), float("nan")
    slope, intercept = np.polyfit(beta, value, 1)
    residual = value - (slope * beta + intercept)
    se = math.sqrt(float(residual @ residual) / (len(beta) - 2) / float(((beta - beta.mean()) ** 2).sum()))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(beta) - 2)) * se
    return float(slope), float(slope - half), float(slope + half)


def _complete_seeds(rows: pd.DataFrame, per_image: pd.DataFrame,
                    betas: Sequence[float]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """``rows`` and ``per_image`` restricted to the seeds with a row at every one of ``betas``, and a note naming
    the seeds left out ("" when none is, or when no seed has every beta: then every row is kept)."""
    present = rows.groupby("seed")["beta"].agg(lambda b: set(b.tolist()))
    complete = sorted(int(s) for s, found in present.items() if set(betas) <= found)
    left_out = sorted(int(s) for s in present.index if int(s) not in complete)
    if not complete or not left_out:
        return rows, per_image, ""
    def seeds(found: list[int]) -> str:
        return ("seeds " if len(found) > 1 else "seed ") + ", ".join(map(str, found))

    note = f" [over {seeds(complete)}, with every beta; {seeds(left_out)} not yet]"
    return rows[rows["seed"].isin(complete)], per_image[per_image["seed"].isin(complete)], note


def vae_claim(frame: pd.DataFrame | None, dataset: str, rules: Mapping[str, Any]) -> Claim:
    """The correlation between latent units' saliency maps does not fall as beta grows: for each loss, the
    authors' pooled metric at the largest beta is not below its value at the smallest beta by more than
    ``rules.tolerance`` (paired by seed); the slope against beta with its interval and the per-image metric
    are reported beside it.

    ``frame``: ``disvae_runs.csv`` (one row per run and metric: dataset, loss, beta, seed, metric, value).
    """
    metric, losses, betas = rules["metric"], list(rules["losses"]), [float(b) for b in rules["betas"]]
    low, high, tolerance = min(betas), max(betas), float(rules["tolerance"])
    name = f"Disentangled VAEs, {rules['datasets'][dataset]}"
    paper = (f"the correlation between latent units' saliency maps does not fall as beta grows ({', '.join(losses)}): "
             f"{metric} at beta = {high:g} not below beta = {low:g} by more than {tolerance:g}")
    if frame is None or frame.empty or dataset not in set(frame["dataset"]):
        return Claim(name, paper, "-")
    frame = frame[frame["dataset"] == dataset]
    inequalities, missing, parts = [], [], []
    for loss in losses:
        rows = frame[(frame["loss"] == loss) & (frame["metric"] == metric)]
        q = paired(rows, {"beta": high}, {"beta": low}, f"{loss}: beta {high:g} vs {low:g}")
        if q is None or not q.differences:
            missing.append(f"{loss} at beta {low:g} and {high:g}")
            continue
        q.differences = {s: d + tolerance for s, d in q.differences.items()}
        inequalities.append(q)
        per_image = frame[(frame["loss"] == loss) & (frame["metric"] == rules["per_image_metric"])]
        # means and slope over the seeds that have every beta, so that a partial sweep does not compare a
        # beta's mean over some seeds with another's over others (the verdict is paired by seed anyway)
        rows, per_image, partial = _complete_seeds(rows, per_image, betas)
        means = rows.groupby("beta")["value"].mean()
        per_image = per_image.groupby("beta")["value"].mean()
        slope, lo, hi = slope_interval(rows["beta"].to_numpy(float), rows["value"].to_numpy(float),
                                       float(rules["confidence"]))
        parts.append(f"{loss}: " + ", ".join(f"beta={b:g} {fmt(v)}" for b, v in means.items())
                     + f" (slope {slope:+.2g} per unit beta, {float(rules['confidence']):.0%} CI [{lo:+.2g}, {hi:+.2g}]; "
                     + f"{rules['per_image_metric']}: " + ", ".join(fmt(v) for v in per_image.to_numpy()) + ")"
                     + partial)
        missing += [f"{loss} at beta {b:g}" for b in betas if b not in set(rows["beta"])]
    return claim_from(name, paper, f"{metric}: " + "; ".join(parts), inequalities, rules, missing)


def claims(results: Path, scale: str, rules: Mapping[str, Any]) -> list[Claim]:
    folder = results / FOLDER / scale
    runs = read_table(folder / f"{PREFIX}runs.csv")
    out = []
    for dataset in rules["datasets"]:
        claim = vae_claim(runs, dataset, rules)
        claim.figure = figure_link(folder / f"{PREFIX}{dataset}_boxplots.png", results)
        out.append(claim)
    return out


STUDY = Study("disvae", "Disentangled VAEs: unit saliency maps against beta", (TABLE,), run, aggregate, claims,
              redraw=redraw)
