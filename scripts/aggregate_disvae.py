"""Aggregate the disentangled-VAE runs (experiment=mnist_disvae and dsprites_disvae) across seeds.

    python scripts/aggregate_disvae.py --runs outputs/mnist_disvae/quick/sweep outputs/dsprites_disvae/quick/sweep \
        --scale quick --out results/disvae/quick

Stacks ``disvae.csv`` of every finished run under ``--runs`` (unfinished or broken runs are reported and skipped,
and listed in ``disvae_runs.json``) and writes under ``--out``:

* ``disvae_runs.csv``: every run's rows; ``disvae_stats.csv``: mean, std (across seeds) and number of seeds per
  (dataset, loss, beta, metric);
* ``disvae_mean_std.{csv,md,tex}``: one row per (dataset, loss, beta), one ``mean +/- std`` column per metric;
* ``disvae_trend.{csv,md,tex}``: per (dataset, loss, metric) the mean at each beta, the least-squares slope of
  the runs' values against beta, and ``falls``: whether the mean decreases at every step of beta;
* ``disvae_<dataset>_boxplots.{png,pdf}``: box plots of each metric against beta, one colour per loss;
* ``disvae_units_<dataset>_<loss>_beta<b>_seed<s>.png``: the unit-map figure of the lowest seed of each model.

Every file is rewritten whole (atomically) from the runs found, and ``disvae_*`` files of an earlier aggregation
that this one does not write are removed, so rerunning never mixes stale rows or tables.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.disvae import METRICS, TABLE
from labelfree.aggregation import collect, format_mean_std, mean_std, write_table
from labelfree.io import atomic_path, save_csv, save_json
from labelfree.plots import plot_metric_boxes, save_figure

log = logging.getLogger("aggregate_disvae")

EXPERIMENTS = ("mnist_disvae", "dsprites_disvae")
PREFIX = "disvae_"
OUTPUT_SUFFIXES = (".csv", ".md", ".tex", ".png", ".pdf", ".json")
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
}


def _metric_order(frame: pd.DataFrame) -> list[str]:
    present = set(frame["metric"])
    return [m for m in METRICS if m in present] + sorted(present - set(METRICS))


def mean_std_table(stats: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (dataset, loss, beta); a ``mean +/- std`` column per metric; the number of seeds last."""
    cells = stats.assign(cell=[format_mean_std(m, s, DIGITS) for m, s in zip(stats["mean"], stats["std"])])
    wide = cells.pivot(index=["dataset", "loss", "beta"], columns="metric", values="cell")
    wide = wide.reindex(columns=list(metrics))
    wide["seeds"] = stats.groupby(["dataset", "loss", "beta"])["n"].max()
    return wide.rename_axis(columns=None).reset_index()


def trend_table(frame: pd.DataFrame, stats: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per (dataset, loss, metric): the mean at each beta, the slope of the runs' values against beta (least
    squares) and whether the mean falls at every step of beta (``falls``)."""
    rows = []
    for (dataset, loss), part in frame.groupby(["dataset", "loss"], sort=True):
        for metric in metrics:
            runs = part[(part["metric"] == metric) & part["value"].notna()]
            means = stats[(stats["dataset"] == dataset) & (stats["loss"] == loss) & (stats["metric"] == metric)]
            means = means.sort_values("beta")
            if runs.empty or means.empty:
                continue
            betas, values = runs["beta"].to_numpy(float), runs["value"].to_numpy(float)
            slope = float(np.polyfit(betas, values, 1)[0]) if len(set(betas)) > 1 else float("nan")
            steps = np.diff(means["mean"].to_numpy(float))
            row = {"dataset": dataset, "loss": loss, "metric": metric}
            row.update({f"beta={b:g}": m for b, m in zip(means["beta"], means["mean"])})
            row.update({"slope": slope, "falls": bool(len(steps) > 0 and (steps < 0).all())})
            rows.append(row)
    return pd.DataFrame(rows)


def _copy(source: Path, target: Path) -> Path:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def _remove_stale(out: Path, written: Sequence[Path]) -> list[Path]:
    """Delete ``disvae_*`` outputs in ``out`` that this aggregation did not write (an earlier one did)."""
    keep = {p.resolve() for p in written}
    stale = [p for p in out.glob(f"{PREFIX}*") if p.suffix in OUTPUT_SUFFIXES and p.resolve() not in keep]
    for path in stale:
        log.info("removing stale %s", path)
        path.unlink()
    return stale


def aggregate(runs: Sequence[str | Path], out: str | Path, scale: str | None) -> list[Path]:
    """Write every table and figure of the VAE study from the finished runs under ``runs``; return the files.

    Raises ``ValueError`` when no finished disvae run at ``scale`` is found.
    """
    out = Path(out)
    found = collect(runs, TABLE, scale=scale)
    frame = found.frame
    if not frame.empty:
        frame = frame[frame["experiment"].isin(EXPERIMENTS)]
    if frame.empty:
        raise ValueError(
            f"no finished disvae run (scale {scale}) with {TABLE}.csv under {[str(r) for r in runs]}; "
            f"skipped: {[(str(p), why) for p, why in found.skipped]}"
        )
    metrics = _metric_order(frame)
    stats = mean_std(frame, KEYS)
    written = [save_csv(frame.drop(columns=["run_dir"]), out / f"{PREFIX}runs.csv"), save_csv(stats, out / f"{PREFIX}stats.csv")]
    written += write_table(mean_std_table(stats, metrics), out / f"{PREFIX}mean_std")
    trend = trend_table(frame, stats, metrics)
    written += write_table(trend, out / f"{PREFIX}trend")
    for dataset, part in frame.groupby("dataset", sort=True):
        seeds = sorted(part["seed"].unique())
        title = f"{dataset}: unit saliency maps against beta ({len(seeds)} seed{'s' * (len(seeds) > 1)} per model)"
        written += save_figure(plot_metric_boxes(part, metrics, title, LABELS), out / f"{PREFIX}{dataset}_boxplots")
    for (dataset, loss, beta), part in frame.groupby(["dataset", "loss", "beta"], sort=True):
        seed = int(part["seed"].min())
        source = Path(part.loc[part["seed"] == seed, "run_dir"].iloc[0]) / f"{TABLE}.png"
        if source.exists():
            written.append(_copy(source, out / f"{PREFIX}units_{dataset}_{loss}_beta{beta:g}_seed{seed}.png"))
    written.append(save_json({"runs": [str(r) for r in found.runs],
                              "skipped": [{"run_dir": str(p), "reason": why} for p, why in found.skipped]},
                             out / f"{PREFIX}runs.json"))
    _remove_stale(out, written)
    for row in trend[trend["metric"] == "pearson"].to_dict("records"):
        means = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("beta="))
        log.info("%s %s pearson: %s; slope %.4f per unit beta -> %s", row["dataset"], row["loss"], means, row["slope"],
                 "falls with beta" if row["falls"] else "does NOT fall at every step of beta")
    log.info("%d runs, %d skipped", len(found.runs), len(found.skipped))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["outputs"], help="run directories or folders of runs")
    parser.add_argument("--scale", default="quick", choices=["paper", "quick", "smoke"])
    parser.add_argument("--out", default=None, help="output folder (default: results/disvae/<scale>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out) if args.out else Path("results") / "disvae" / args.scale
    written = aggregate(args.runs, out, args.scale)
    log.info("wrote %d files under %s", len(written), out)


if __name__ == "__main__":
    main()
