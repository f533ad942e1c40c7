"""Aggregate finished runs: find run directories, stack their tidy CSVs, write tables.

A *run directory* is what :func:`experiments.runner.run` writes: ``config.yaml``, one or more tidy CSVs
and, last of all, ``summary.json``. A directory without ``summary.json`` (a failed, killed or still
running job) or whose CSV cannot be read is reported and skipped, never mixed in. Every output is
rewritten whole (atomically) from the runs found, so aggregating twice gives the same files and stale
rows never survive.

Runs never mix. Each run gets a ``config_id``: a hash of its resolved config without the seed and the keys
that do not change what it computes (:data:`NEUTRAL_KEYS`), plus the device it ran on. Runs that a study
stacks into one row must share it (:func:`check_one_config` names the keys that differ otherwise). Two
finished runs of the same config and seed are one measurement: the one that finished last is kept and the
other is listed as a duplicate. Seeds that a Hydra multirun asked for (its ``multirun.yaml``) but that left no
finished run are listed as missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from experiments.config import without_later_defaults
from labelfree.io import atomic_path, save_csv, save_json, save_text
from labelfree.plots import dataset_label, save_figure

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
#: tables' names in words, for figure titles
TITLES = {"consistency_features": "consistency of feature importance",
          "consistency_examples": "consistency of example importance",
          "roar": "retraining without the most important pixels (ROAR)"}
#: config keys (and key prefixes) that do not change what a run computes: the seed (stacked across), where
#: files go, how the run is logged and restarted, and which check of a study is on (each writes its own table)
#: (and how the training examples were split into shard jobs: the merged scores equal the unsharded ones, tested)
NEUTRAL_KEYS = ("seed", "paths", "logger", "skip_finished", "progress", "device", "protocol.features.enabled",
                "protocol.examples.enabled", "protocol.examples.shard")


@dataclass
class Collected:
    """Rows stacked from complete runs (with ``run_dir``, ``finished_at`` and ``config_id`` columns), the runs
    skipped with the reason, duplicates dropped (dropped, kept) and each run's flattened config."""

    frame: pd.DataFrame
    runs: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    configs: dict[str, dict[str, object]] = field(default_factory=dict)

    def record(self, expected: dict[str, list[int]] | None = None) -> dict[str, object]:
        """What was read, for ``*_runs.json``: runs, skipped ones, duplicates and missing seeds."""
        found = {} if self.frame.empty else {
            str(e): sorted(int(s) for s in part["seed"].unique()) for e, part in self.frame.groupby("experiment")}
        missing = {e: sorted(set(seeds) - set(found.get(e, []))) for e, seeds in (expected or {}).items()}
        return {"runs": [_display_path(r) for r in self.runs],
                "skipped": [{"run_dir": _display_path(p), "reason": why} for p, why in self.skipped],
                "duplicates": [{"dropped": d, "kept": k} for d, k in self.duplicates],
                "seeds": found, "missing_seeds": {e: m for e, m in missing.items() if m}}


def _flatten(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _neutral(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in NEUTRAL_KEYS)


def run_config(run_dir: Path) -> dict[str, object]:
    """The run's resolved config (``config.yaml``) flattened to dotted keys, without :data:`NEUTRAL_KEYS` (nor
    :data:`~experiments.config.LATER_DEFAULTS` at their defaults)."""
    flat = _flatten(without_later_defaults(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))))
    return {k: v for k, v in flat.items() if not _neutral(k)}


def config_id(config: dict[str, object], device: object) -> str:
    """A short hash of a flattened config and the device it ran on."""
    payload = json.dumps({"config": config, "device": device}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def check_one_config(found: Collected, keys: Sequence[str], what: str) -> None:
    """Refuse to stack runs of different configs into one row: within each group of ``keys`` every run must
    share one ``config_id``; the error names the keys whose values differ."""
    if found.frame.empty:
        return
    for group, part in found.frame.groupby(list(keys), sort=True):
        ids = part.drop_duplicates("config_id")
        if len(ids) < 2:
            continue
        configs = [found.configs[r] for r in ids["run_dir"]]
        differing = sorted(k for k in set().union(*configs) if len({json.dumps(c.get(k), default=str) for c in configs}) > 1)
        raise ValueError(
            f"{what}: runs of {dict(zip(keys, group if isinstance(group, tuple) else (group,)))} differ in more than the "
            f"seed ({', '.join(differing[:10]) or 'the device'}): {sorted(ids['run_dir'])}; aggregate them separately "
            "(--runs) or remove the runs that do not belong")


def expected_seeds(roots: Iterable[str | Path], scale: str | None) -> dict[str, list[int]]:
    """Per experiment, the seeds the Hydra multiruns under ``roots`` asked for (``multirun.yaml``)."""
    expected: dict[str, set[int]] = {}
    for root in map(Path, roots):
        for path in root.rglob("multirun.yaml"):
            try:
                task = list(OmegaConf.load(path).hydra.overrides.task)
            except Exception as error:  # noqa: BLE001 - a broken file is reported, not fatal
                log.warning("unreadable %s: %s", path, error)
                continue
            values = dict(item.split("=", 1) for item in task if "=" in item)
            if scale is not None and values.get("scale", "paper") != scale or "experiment" not in values:
                continue
            seeds = [int(v) for v in values.get("seed", "").split(",") if v.strip().lstrip("-").isdigit()]
            expected.setdefault(values["experiment"], set()).update(seeds)
    return {e: sorted(s) for e, s in expected.items()}


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
        try:
            config = run_config(run_dir)
        except (OSError, ValueError) as error:
            result.skipped.append((run_dir, f"unreadable config.yaml: {error}"))
            continue
        shown = _display_path(run_dir)
        result.configs[shown] = config
        frames.append(frame.assign(run_dir=shown, finished_at=summary.get("finished_at"),
                                   config_id=config_id(config, summary.get("device"))))
        result.runs.append(run_dir)
    for run_dir, reason in result.skipped:
        log.warning("skipped %s: %s", run_dir, reason)
    result.frame = _deduplicate(pd.concat(frames, ignore_index=True), result) if frames else pd.DataFrame()
    return result


def _deduplicate(frame: pd.DataFrame, result: Collected) -> pd.DataFrame:
    """One run per (config, seed): the one that finished last (then the last folder) is kept."""
    runs = frame.drop_duplicates("run_dir")[["run_dir", "config_id", "seed", "finished_at"]]
    runs = runs.assign(finished_at=runs["finished_at"].fillna("")).sort_values(["finished_at", "run_dir"])
    kept = runs.drop_duplicates(["config_id", "seed"], keep="last")
    for row in runs[~runs["run_dir"].isin(kept["run_dir"])].itertuples(index=False):
        winner = kept[(kept["config_id"] == row.config_id) & (kept["seed"] == row.seed)]["run_dir"].iloc[0]
        result.duplicates.append((row.run_dir, winner))
        log.warning("duplicate of seed %s (same config): %s dropped, %s kept (finished last)", row.seed, row.run_dir, winner)
    dropped = {d for d, _ in result.duplicates}
    result.runs = [r for r in result.runs if _display_path(r) not in dropped]
    return frame[frame["run_dir"].isin(kept["run_dir"])].reset_index(drop=True)


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


def write_table(frame: pd.DataFrame, stem: str | Path, digits: int = 3, display: pd.DataFrame | None = None) -> list[Path]:
    """Write ``frame`` as ``<stem>.csv`` and ``display`` (default: ``frame``) as ``<stem>.md`` and ``<stem>.tex``
    (atomically); return the paths. The CSV is for programs (numbers), the others for people (formatted cells)."""
    stem = Path(stem)
    shown = frame if display is None else display
    return [
        save_csv(frame, stem.with_suffix(".csv")),
        save_text(to_markdown(shown, digits), stem.with_suffix(".md")),
        save_text(to_latex(shown, digits), stem.with_suffix(".tex")),
    ]


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``"0.61 +/- 0.040"``, ``"2.24e-04 +/- 4.5e-05"``: a table cell of a mean and a standard deviation across
    seeds, each with ``digits`` significant digits (trailing zeros kept), so small values still show."""
    return f"{mean:#.{digits}g} +/- {std:#.{digits}g}".replace(".e", "e").replace(". ", " ")


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


def seed_list(frame: pd.DataFrame) -> str:
    """``"1, 2, 3"``: the seeds a row of an aggregated table rests on."""
    return ", ".join(str(int(s)) for s in sorted(frame["seed"].unique()))


def level_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """The numbers: per (method, metric, level) the mean and std across seeds, the number of seeds and which."""
    stats = mean_std(frame, ["method", "metric", "level"])
    which = frame.groupby(["method", "metric", "level"]).apply(seed_list, include_groups=False)
    return stats.assign(seed_list=which.to_numpy())


def level_table(frame: pd.DataFrame) -> pd.DataFrame:
    """For people: one row per (method, metric), one column per level: ``mean +/- std`` across seeds; the number
    of seeds and which seeds last."""
    stats = mean_std(frame, ["method", "metric", "level"])
    stats["cell"] = [format_mean_std(m, s, 3) for m, s in zip(stats["mean"], stats["std"])]
    wide = stats.pivot(index=["method", "metric"], columns="level", values="cell")
    wide.columns = [f"{level:g}" for level in wide.columns]
    seeds = stats.groupby(["method", "metric"])["n"].max()
    which = frame.groupby(["method", "metric"]).apply(seed_list, include_groups=False)
    return wide.assign(seeds=seeds, seed_list=which).reset_index()


def for_experiment(record: dict, experiment: str, frame: pd.DataFrame) -> dict:
    """The part of a :meth:`Collected.record` about one experiment (``frame``: that experiment's rows)."""
    return {**record, "runs": sorted(frame["run_dir"].unique()), "seeds": record["seeds"].get(experiment, []),
            "missing_seeds": record["missing_seeds"].get(experiment, [])}


def write_levels(frame: pd.DataFrame, folder: Path, table: str, plot: Callable[[pd.DataFrame, str], object]) -> list[Path]:
    """From one experiment's stacked rows: ``<table>_table.{csv,md,tex}`` and the figure under ``folder``."""
    seeds = sorted(int(s) for s in frame["seed"].unique())
    title = (f"{dataset_label(frame['dataset'].iloc[0])}: {TITLES.get(table, table.replace('_', ' '))} "
             f"({len(seeds)} seed{'s' * (len(seeds) > 1)})")
    return [*write_table(level_stats(frame), folder / f"{table}_table", display=level_table(frame)),
            *save_figure(plot(frame, title), folder / table)]


def redraw_levels(results: Path, scale: str, plots: dict[str, Callable[[pd.DataFrame, str], object]]) -> list[Path]:
    """Tables and figures redrawn from the ``<table>_runs.csv`` an earlier aggregation kept (no run folders)."""
    written: list[Path] = []
    for table, plot in plots.items():
        for path in sorted(results.glob(f"*/{scale}/{table}_runs.csv")):
            written += write_levels(pd.read_csv(path), path.parent, table, plot)
    return written


def aggregate_levels(
    runs: Sequence[Path], results: Path, scale: str, study: str,
    plots: dict[str, Callable[[pd.DataFrame, str], object]],
) -> list[Path]:
    """Stack the level-indexed tables (``plots``: table -> figure function) of every experiment of ``study``.

    For each experiment found: ``<table>_runs.csv`` (every run's rows), ``<table>_table.{csv,md,tex}`` (mean
    +/- std across seeds per level) and the figure, under ``<results>/<experiment>/<scale>/``.
    """
    written: list[Path] = []
    expected = expected_seeds(runs, scale)
    for table, plot in plots.items():
        found = collect(runs, table, scale=scale, study=study)
        if found.frame.empty:
            continue
        check_one_config(found, ["experiment"], table)
        record = found.record(expected)
        for experiment, part in found.frame.groupby("experiment", sort=True):
            folder = results / str(experiment) / scale
            frame = part
            seeds = sorted(int(s) for s in frame["seed"].unique())
            written.append(save_csv(frame, folder / f"{table}_runs.csv"))
            written.append(save_json(for_experiment(record, str(experiment), part), folder / f"{table}_runs.json"))
            written += write_levels(frame, folder, table, plot)
            log.info("%s/%s: %d runs (seeds %s), %d skipped", experiment, table, part["run_dir"].nunique(), seeds,
                     len(found.skipped))
    return written
