"""How long each part of a scale took: measured wall times from the finished runs, estimates only for runs not yet made.

    python -m experiments.timings --runs outputs results/runs --scale paper --out results/TIMES-paper.md

Every finished run (a ``summary.json`` under a ``--runs`` root, whose ``scale`` is ``--scale``) is one
measurement. A *part* is the folder of a sweep: ``<experiment>/<scale>/<part>/.../summary.json`` (``features``,
``examples``, ``sweep``). The same run found twice (in ``outputs/`` and kept under ``results/runs/``) counts
once. Runs whose model came from the cache, or whose training resumed after an interruption, are listed apart: their
wall time leaves (some of) the training out.
Parts that no run measured are taken from ``configs/timings.yaml`` (estimates with their basis) and labelled
"estimate"; a part with fewer finished runs than its estimate plans (e.g. 2 of 30 VAEs) shows its measured runs
and, on a row labelled as an estimate, the runs still to come.

``--readme README.md`` also copies the table into the README, between ``<!-- times:<scale> -->`` and
``<!-- /times:<scale> -->`` (a test checks that the committed README and ``results/TIMES-paper.md`` agree).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from experiments.aggregation import SUMMARY, to_markdown
from experiments.config import container
from labelfree.io import save_text

log = logging.getLogger("experiments.timings")

ESTIMATES = Path(__file__).resolve().parents[1] / "configs" / "timings.yaml"
COLUMNS = ["experiment", "part", "seed", "run", "wall_seconds", "source", "device", "threads", "finished_at"]


def _part(summary: Path, root: Path, experiment: str, scale: str) -> tuple[str, str] | None:
    """``(part, run)`` from ``<root>/<experiment>/<scale>/<part>/<run...>/summary.json``; None for another layout."""
    parts = summary.parent.relative_to(root).parts
    if len(parts) < 3 or parts[0] != experiment or parts[1] != scale:
        return None
    return parts[2], "/".join(parts[3:]) or "."


def _source(summary: dict[str, Any]) -> str:
    """What a run's wall time covers: everything, or not the training (cached model, resumed training)."""
    if summary.get("model_cached"):
        return "measured, models from the cache"
    if summary.get("training_resumed"):
        return "measured, training resumed (earlier epochs not counted)"
    return "measured"


def collect_timings(roots: Iterable[str | Path], scale: str) -> pd.DataFrame:
    """One row per finished run of ``scale`` under ``roots`` (:data:`COLUMNS`), the same run found under two
    roots kept once (the one that finished last)."""
    rows: list[dict[str, Any]] = []
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob(SUMMARY)):
            try:
                summary = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                log.warning("unreadable %s skipped: %s", path, error)
                continue
            if summary.get("scale") != scale or "wall_seconds" not in summary:
                continue
            where = _part(path, root, str(summary.get("experiment")), scale)
            if where is None:
                log.warning("%s is not under <experiment>/<scale>/<part>/: skipped", path)
                continue
            rows.append({
                "experiment": summary["experiment"], "part": where[0], "seed": summary.get("seed"),
                "run": where[1], "wall_seconds": float(summary["wall_seconds"]),
                "source": _source(summary), "device": summary.get("device", "?"),
                "threads": summary.get("threads"), "finished_at": summary.get("finished_at", ""),
            })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if frame.empty:
        return frame
    frame = frame.sort_values("finished_at").drop_duplicates(["experiment", "part", "run"], keep="last")
    return frame.sort_values(["experiment", "part", "run"]).reset_index(drop=True)


def load_estimates(scale: str, path: Path = ESTIMATES) -> dict[str, dict[str, Any]]:
    """``experiment/part`` -> ``{runs, minutes_per_run, basis}`` for ``scale`` (empty when none are written)."""
    if not path.exists():
        return {}
    node = container(OmegaConf.load(path)).get(scale) or {}
    for key, value in node.items():
        missing = {"runs", "minutes_per_run", "basis"} - set(value)
        if missing:
            raise ValueError(f"{path}: estimate {scale}.{key} lacks {sorted(missing)}")
    return node


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def timing_table(frame: pd.DataFrame, estimates: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Per ``experiment/part``: runs, minutes per run (median, min-max), total hours, and whether measured
    (trained / from cache) or estimated. A part's estimate (``runs`` planned) fills the runs no finished run has
    measured yet: the whole part when none has, else a row for the rest."""
    rows: list[dict[str, Any]] = []
    measured: dict[str, int] = {}  # finished runs per part
    for (experiment, part), group in frame.groupby(["experiment", "part"], sort=True):
        key = f"{experiment}/{part}"
        measured[key] = len(group)
        for source, runs in group.groupby("source", sort=True):
            seconds = runs["wall_seconds"]
            threads = sorted({int(t) for t in runs["threads"].dropna()})
            rows.append({
                "part": key,
                "source": source,
                "runs": len(runs),
                "minutes per run (median)": _minutes(seconds.median()),
                "range": f"{_minutes(seconds.min())}-{_minutes(seconds.max())}",
                "total hours": f"{seconds.sum() / 3600:.2f}",
                "device": "/".join(sorted(set(runs["device"].astype(str))))
                          + (f", {'/'.join(map(str, threads))} thread{'' if threads == [1] else 's'}" if threads else ""),
            })
    for key, estimate in sorted(estimates.items()):
        planned, minutes = int(estimate["runs"]), float(estimate["minutes_per_run"])
        runs = planned - measured.get(key, 0)
        if runs <= 0:
            continue
        source = (f"estimate ({estimate['basis']})" if key not in measured
                  else f"estimate for the {runs} of {planned} runs not measured yet ({estimate['basis']})")
        rows.append({"part": key, "source": source, "runs": runs,
                     "minutes per run (median)": f"~{minutes:g}", "range": "-",
                     "total hours": f"~{runs * minutes / 60:.1f}", "device": estimate.get("device", "cpu")})
    return pd.DataFrame(rows)


def write_timings(roots: Sequence[str | Path], scale: str, out: Path) -> pd.DataFrame:
    """The timing table of ``scale`` as Markdown at ``out`` (and returned)."""
    table = timing_table(collect_timings(roots, scale), load_estimates(scale))
    text = (f"# Wall times at {scale} scale\n\n"
            "Measured rows come from each finished run's `summary.json` (`python -m experiments.timings`); runs not "
            "made yet (a whole part, or the rest of a partly measured one) show the estimate of `configs/timings.yaml` "
            "and say so.\n\n"
            + (to_markdown(table) if not table.empty else "No finished run and no estimate.\n"))
    save_text(text, out)
    log.info("wrote %s (%d parts)", out, len(table))
    return table


README_MARKERS = ("<!-- times:{scale} -->", "<!-- /times:{scale} -->")


def readme_table(text: str, scale: str) -> tuple[int, int]:
    """Start and end offsets of the time table of ``scale`` between the README's markers (``README_MARKERS``)."""
    start, end = (m.format(scale=scale) for m in README_MARKERS)
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"the README needs exactly one '{start}' followed by one '{end}' around its {scale} time table")
    return text.index(start) + len(start), text.index(end)


def sync_readme(readme: Path, times: Path, scale: str) -> bool:
    """Copy the table of ``times`` (``TIMES-<scale>.md``) between the README's markers; True when it changed."""
    table = times.read_text()
    table = table[table.index("| part |"):]
    text = readme.read_text()
    start, end = readme_table(text, scale)
    new = text[:start] + "\n\n" + table.strip("\n") + "\n\n" + text[end:]
    if new != text:
        save_text(new, readme)
    return new != text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["outputs", "results/runs"], help="roots of run folders")
    parser.add_argument("--scale", default="paper")
    parser.add_argument("--out", default=None, help="default: results/TIMES-<scale>.md")
    parser.add_argument("--readme", default=None,
                        help="also copy the table into this README, between its times markers (README_MARKERS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out or f"results/TIMES-{args.scale}.md")
    write_timings(args.runs, args.scale, out)
    if args.readme:
        changed = sync_readme(Path(args.readme), out, args.scale)
        log.info("%s %s", "updated" if changed else "unchanged:", args.readme)


if __name__ == "__main__":
    main()
