"""Aggregate finished runs: find run directories, stack their tidy CSVs, write tables.

A *run directory* is what :func:`experiments.runner.run` writes: ``config.yaml``, one or more tidy CSVs
and, last of all, ``summary.json``. A directory without ``summary.json`` (a failed, killed or still
running job) or whose CSV cannot be read is reported and skipped, never mixed in. Every output is
rewritten whole (atomically) from the runs found, so aggregating twice gives the same files and stale
rows never survive.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from labelfree.io import atomic_path, save_csv, save_text
from labelfree.plots import save_figure

log = logging.getLogger(__name__)

SUMMARY = "summary.json"


@dataclass
class Collected:
    """Rows stacked from complete runs (with a ``run_dir`` column), and the runs skipped with the reason."""

    frame: pd.DataFrame
    runs: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_run_dirs(roots: Iterable[str | Path], table: str) -> list[Path]:
    """Every directory under ``roots`` (recursively, roots included) holding ``<table>.csv`` or a ``config.yaml``.

    Sorted, so the stacking order (and hence every output) does not depend on the file system.
    """
    found: set[Path] = set()
    for root in map(Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"No such run directory or folder of runs: {root}")
        for marker in (f"{table}.csv", "config.yaml"):
            found.update(p.parent.resolve() for p in root.rglob(marker) if ".hydra" not in p.parts)
    return sorted(found)


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (committed tables name no machine)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def collect(
    roots: Iterable[str | Path], table: str, experiment: str | None = None, scale: str | None = None,
    study: str | None = None,
) -> Collected:
    """Stack ``<table>.csv`` of every complete run under ``roots``.

    Args:
        roots: run directories or folders of runs (searched recursively).
        table: the CSV's stem, e.g. ``consistency_features``.
        experiment: keep only runs whose ``summary.json`` names this experiment (``None``: all).
        scale: keep only runs of this scale (``None``: all).
        study: keep only runs of this study (``summary.json``'s ``study``; ``None``: all).
    """
    frames, result = [], Collected(pd.DataFrame())
    for run_dir in find_run_dirs(roots, table):
        summary_path, csv = run_dir / SUMMARY, run_dir / f"{table}.csv"
        if not summary_path.exists():
            result.skipped.append((run_dir, f"no {SUMMARY}: the run did not finish"))
            continue
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            result.skipped.append((run_dir, f"unreadable {SUMMARY}: {error}"))
            continue
        if experiment is not None and summary.get("experiment") != experiment:
            continue
        if scale is not None and summary.get("scale") != scale:
            continue
        if study is not None and summary.get("study") != study:
            continue
        if not csv.exists():  # a finished run of a check that did not write this table (e.g. features only)
            log.debug("%s has no %s", run_dir, csv.name)
            continue
        try:
            frame = pd.read_csv(csv)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            result.skipped.append((run_dir, f"unreadable {csv.name}: {error}"))
            continue
        frames.append(frame.assign(run_dir=_display_path(run_dir), finished_at=summary.get("finished_at")))
        result.runs.append(run_dir)
    for run_dir, reason in result.skipped:
        log.warning("skipped %s: %s", run_dir, reason)
    result.frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return result


def mean_std(frame: pd.DataFrame, by: Sequence[str], value: str = "value", over: str = "seed") -> pd.DataFrame:
    """Mean and standard deviation of ``value`` across ``over`` (seeds) for each group of ``by``.

    Columns: ``*by, mean, std, n`` (std is 0 for a single seed).
    """
    grouped = frame.groupby(list(by), sort=True)[value]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    if over in frame:
        out["n"] = frame.groupby(list(by), sort=True)[over].nunique().to_numpy()
    return out


def _cell(value: object, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (floats with ``digits`` decimals)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _latex_escape(text: str) -> str:
    for char in ("\\", "&", "%", "$", "#", "_", "{", "}"):
        text = text.replace(char, "\\" + char if char != "\\" else r"\textbackslash{}")
    return text.replace("+/-", r"$\pm$")


def to_latex(frame: pd.DataFrame, digits: int = 3) -> str:
    """A ``tabular`` (booktabs) of ``frame`` (floats with ``digits`` decimals)."""
    lines = [
        r"\begin{tabular}{" + "l" * len(frame.columns) + "}",
        r"\toprule",
        " & ".join(_latex_escape(str(c)) for c in frame.columns) + r" \\",
        r"\midrule",
        *(" & ".join(_latex_escape(_cell(v, digits)) for v in row) + r" \\" for row in frame.itertuples(index=False)),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, stem: str | Path, digits: int = 3) -> list[Path]:
    """Write ``frame`` as ``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex`` (atomically); return the paths."""
    stem = Path(stem)
    return [
        save_csv(frame, stem.with_suffix(".csv")),
        save_text(to_markdown(frame, digits), stem.with_suffix(".md")),
        save_text(to_latex(frame, digits), stem.with_suffix(".tex")),
    ]


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``"0.61 +/- 0.04"``: a table cell of a mean and standard deviation across seeds."""
    return f"{mean:.{digits}f} +/- {std:.{digits}f}"


def copy_file(source: Path, target: Path) -> Path:
    """Copy ``source`` onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def remove_stale(out: Path, prefix: str, written: Sequence[Path],
                 suffixes: Sequence[str] = (".csv", ".md", ".tex", ".png", ".pdf", ".json")) -> list[Path]:
    """Delete ``<prefix>*`` outputs in ``out`` that this aggregation did not write (an earlier one did)."""
    keep = {p.resolve() for p in written}
    stale = [p for p in out.glob(f"{prefix}*") if p.suffix in suffixes and p.resolve() not in keep]
    for path in stale:
        log.info("removing stale %s", path)
        path.unlink()
    return stale


def level_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, metric), one column per level: ``mean +/- std`` across seeds."""
    stats = mean_std(frame, ["method", "metric", "level"])
    stats["cell"] = [format_mean_std(m, s, 3) for m, s in zip(stats["mean"], stats["std"])]
    wide = stats.pivot(index=["method", "metric"], columns="level", values="cell")
    wide.columns = [f"{level:g}" for level in wide.columns]
    seeds = stats.groupby(["method", "metric"])["n"].max()
    return wide.assign(seeds=seeds).reset_index()


def aggregate_levels(
    runs: Sequence[Path], results: Path, scale: str, study: str,
    plots: dict[str, Callable[[pd.DataFrame, str], object]],
) -> list[Path]:
    """Stack the level-indexed tables (``plots``: table -> figure function) of every experiment of ``study``.

    For each experiment found: ``<table>_runs.csv`` (every run's rows), ``<table>_table.{csv,md,tex}`` (mean
    +/- std across seeds per level) and the figure, under ``<results>/<experiment>/<scale>/``.
    """
    written: list[Path] = []
    for table, plot in plots.items():
        found = collect(runs, table, scale=scale, study=study)
        if found.frame.empty:
            continue
        for experiment, part in found.frame.groupby("experiment", sort=True):
            folder = results / str(experiment) / scale
            frame = part
            seeds = sorted(int(s) for s in frame["seed"].unique())
            written.append(save_csv(frame, folder / f"{table}_runs.csv"))
            written += write_table(level_table(frame), folder / f"{table}_table")
            title = f"{frame['dataset'].iloc[0]}: {table.replace('_', ' ')} ({len(seeds)} seed{'s' * (len(seeds) > 1)})"
            written += save_figure(plot(frame, title), folder / table)
            log.info("%s/%s: %d runs (seeds %s), %d skipped", experiment, table, part["run_dir"].nunique(), seeds,
                     len(found.skipped))
    return written
