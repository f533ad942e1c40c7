"""Aggregate the pretext-sensitivity runs (experiment=mnist_pretext) across seeds.

    python scripts/aggregate_pretext.py --runs outputs/mnist_pretext/quick/sweep --scale quick

Stacks ``pretext_correlations.csv`` of every finished run under ``--runs`` (unfinished or broken runs are
reported and skipped) and writes under ``--out`` (default ``results/mnist_pretext/<scale>``):

* ``pretext_correlations_runs.csv``: every run's rows; ``pretext_correlations_mean_std.csv``: mean, std and
  number of seeds per (kind, method, metric, task pair);
* ``pretext_<kind>_<method>_<metric>.{csv,md,tex}``: the task x task matrix of ``mean +/- std`` across seeds;
* ``pretext_pairs.{csv,md,tex}``: one row per pair of distinct tasks, the feature and the example
  correlations side by side;
* ``pretext_correlations.{png,pdf}``: the heatmaps; ``pretext_saliency`` and ``pretext_top_examples``
  figures copied from the run of the lowest seed.

Every file is rewritten whole (atomically) from the runs found, and ``pretext_*`` files of an earlier
aggregation that this one does not write are removed, so rerunning never mixes stale rows or tables.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from experiments.pretext import TABLE
from labelfree.aggregation import collect, format_mean_std, mean_std, write_table
from labelfree.io import atomic_path, save_csv
from labelfree.plots import plot_pretext_correlations, save_figure

log = logging.getLogger("aggregate_pretext")

EXPERIMENT = "mnist_pretext"
PREFIX = "pretext_"
OUTPUT_SUFFIXES = (".csv", ".md", ".tex", ".png", ".pdf")
RUN_FIGURES = ("pretext_saliency", "pretext_top_examples")
KEYS = ["kind", "method", "metric", "task_a", "task_b"]
DIGITS = 2  # decimals of the mean +/- std cells


def _tasks(frame: pd.DataFrame) -> list[str]:
    """The tasks in the order the runs list them (the protocol's order)."""
    return list(dict.fromkeys(frame["task_a"]))


def matrix_tables(stats: pd.DataFrame, tasks: Sequence[str]) -> dict[tuple[str, str, str], pd.DataFrame]:
    """(kind, method, metric) -> a task x task table of ``mean +/- std`` cells (first column: ``task``)."""
    tables = {}
    for (kind, method, metric), part in stats.groupby(["kind", "method", "metric"], sort=False):
        cells = part.assign(cell=[format_mean_std(m, s, DIGITS) for m, s in zip(part["mean"], part["std"])])
        wide = cells.pivot(index="task_a", columns="task_b", values="cell").reindex(index=tasks, columns=list(tasks))
        tables[(str(kind), str(method), str(metric))] = wide.rename_axis(index="task", columns=None).reset_index()
    return tables


def _distinct_pairs(stats: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """The rows of unordered pairs of distinct tasks (task_a before task_b), in the tasks' order."""
    rank = {task: i for i, task in enumerate(tasks)}
    a, b = stats["task_a"].map(rank), stats["task_b"].map(rank)
    return stats.assign(_a=a, _b=b)[a < b].sort_values(["_a", "_b"], kind="stable").drop(columns=["_a", "_b"])


def pairs_table(stats: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """One row per unordered pair of distinct tasks; one ``mean +/- std`` column per (kind, method, metric),
    feature columns first, then the number of seeds."""
    pairs = _distinct_pairs(stats, tasks)
    pairs = pairs.assign(
        pair=[f"{a} / {b}" for a, b in zip(pairs["task_a"], pairs["task_b"])],
        column=[f"{k} {m} {c}" for k, m, c in zip(pairs["kind"], pairs["method"], pairs["metric"])],
        cell=[format_mean_std(m, s, DIGITS) for m, s in zip(pairs["mean"], pairs["std"])],
    )
    order = list(dict.fromkeys(pairs.sort_values(["metric", "kind"], ascending=[True, False], kind="stable")["column"]))
    wide = pairs.pivot(index="pair", columns="column", values="cell")
    wide = wide.reindex(index=list(dict.fromkeys(pairs["pair"])), columns=order)
    wide["seeds"] = pairs.groupby("pair")["n"].max()
    return wide.rename_axis(columns=None).reset_index()


def feature_beats_examples(stats: pd.DataFrame, tasks: Sequence[str], metric: str = "pearson") -> pd.DataFrame:
    """Per pair of distinct tasks and (feature method, example method): whether the mean feature-importance
    correlation exceeds the mean example-importance correlation (the paper's finding)."""
    pairs = _distinct_pairs(stats, tasks)
    pairs = pairs[pairs["metric"] == metric]
    features = pairs[pairs["kind"] == "features"][["method", "task_a", "task_b", "mean"]]
    examples = pairs[pairs["kind"] == "examples"][["method", "task_a", "task_b", "mean"]]
    both = features.merge(examples, on=["task_a", "task_b"], suffixes=("_features", "_examples"), sort=False)
    return both.assign(holds=both["mean_features"] > both["mean_examples"])


def _copy(source: Path, target: Path) -> Path:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def _remove_stale(out: Path, written: Sequence[Path]) -> list[Path]:
    """Delete ``pretext_*`` outputs in ``out`` that this aggregation did not write (an earlier one did)."""
    keep = {p.resolve() for p in written}
    stale = [p for p in out.glob(f"{PREFIX}*") if p.suffix in OUTPUT_SUFFIXES and p.resolve() not in keep]
    for path in stale:
        log.info("removing stale %s", path)
        path.unlink()
    return stale


def aggregate(runs: Sequence[str | Path], out: str | Path, scale: str | None, experiment: str = EXPERIMENT) -> list[Path]:
    """Write every table and figure of the pretext study from the finished runs under ``runs``; return the files.

    Raises ``ValueError`` when no finished run of ``experiment`` at ``scale`` is found.
    """
    out = Path(out)
    found = collect(runs, TABLE, experiment=experiment, scale=scale)
    if found.frame.empty:
        raise ValueError(
            f"no finished {experiment} run (scale {scale}) with {TABLE}.csv under {[str(r) for r in runs]}; "
            f"skipped: {[(str(p), why) for p, why in found.skipped]}"
        )
    frame = found.frame.drop(columns=["run_dir"])
    tasks, seeds = _tasks(frame), sorted(int(s) for s in frame["seed"].unique())
    if len(seeds) < len(found.runs):
        log.warning("%d runs but %d distinct seeds: a seed's runs all count in the mean (runs: %s)",
                    len(found.runs), len(seeds), [str(r) for r in found.runs])
    stats = mean_std(frame, KEYS)
    written = [save_csv(frame, out / f"{TABLE}_runs.csv"), save_csv(stats, out / f"{TABLE}_mean_std.csv")]
    for (kind, method, metric), table in matrix_tables(stats, tasks).items():
        written += write_table(table, out / f"{PREFIX}{kind}_{method}_{metric}")
    written += write_table(pairs_table(stats, tasks), out / f"{PREFIX}pairs")
    title = f"{frame['dataset'].iloc[0]}: explanations across pretext tasks ({len(seeds)} seed{'s' * (len(seeds) > 1)})"
    written += save_figure(plot_pretext_correlations(frame, title), out / TABLE)
    first = Path(found.frame.loc[found.frame["seed"] == seeds[0], "run_dir"].iloc[0])
    for name in RUN_FIGURES:
        for suffix in (".png", ".pdf"):
            source = first / f"{name}{suffix}"
            if source.exists():
                written.append(_copy(source, out / f"{name}_seed{seeds[0]}{suffix}"))
    _remove_stale(out, written)
    check = feature_beats_examples(stats, tasks)
    for row in check.itertuples(index=False):
        log.info("%s / %s: features %.3f vs examples %.3f (pearson) -> %s", row.task_a, row.task_b,
                 row.mean_features, row.mean_examples, "holds" if row.holds else "does NOT hold")
    log.info("%d runs (seeds %s), %d skipped; feature > example correlation for %d of %d pairs",
             len(found.runs), seeds, len(found.skipped), int(check["holds"].sum()), len(check))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["outputs"], help="run directories or folders of runs")
    parser.add_argument("--scale", default="quick", choices=["paper", "quick", "smoke"])
    parser.add_argument("--out", default=None, help=f"output folder (default: results/{EXPERIMENT}/<scale>)")
    parser.add_argument("--experiment", default=EXPERIMENT, help=f"the runs' experiment (default: {EXPERIMENT})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out) if args.out else Path("results") / args.experiment / args.scale
    written = aggregate(args.runs, out, args.scale, args.experiment)
    log.info("wrote %d files under %s", len(written), out)


if __name__ == "__main__":
    main()
