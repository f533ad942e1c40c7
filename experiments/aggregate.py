"""Aggregate finished runs of every registered study into tables and figures (spread across seeds).

    python -m experiments.aggregate --runs outputs --results results --scale quick [--study consistency ...]

Each study (:data:`experiments.studies.STUDIES`) stacks the tidy CSVs of its finished runs under ``--runs``
(unfinished or broken runs are reported and skipped) and writes its tables (CSV, Markdown, LaTeX) and figures
under ``<results>/<experiment or study folder>/<scale>/``. Everything is rewritten from the runs found, so
running it twice gives the same files.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from experiments.config import SCALES
from experiments.studies import STUDIES

log = logging.getLogger("experiments.aggregate")


def redraw(results: Path, scale: str, studies: Sequence[str] | None = None) -> list[Path]:
    """Draw every study's tables for people and figures again from the stacked rows kept under ``results``
    (``*_runs.csv``), for results whose run folders are gone; the numbers are not recomputed."""
    return [f for name in (studies or list(STUDIES)) if STUDIES[name].redraw is not None
            for f in STUDIES[name].redraw(Path(results), scale)]


def aggregate(runs: Sequence[Path], results: Path, scale: str, studies: Sequence[str] | None = None) -> list[Path]:
    """Aggregate the runs of ``studies`` (default: every registered study); return the files written."""
    names = list(STUDIES) if not studies else list(studies)
    unknown = sorted(set(names) - set(STUDIES))
    if unknown:
        raise ValueError(f"Unknown studies {unknown}; accepted: {sorted(STUDIES)}")
    runs = [Path(r) for r in runs if Path(r).exists()]
    written: list[Path] = []
    for name in names:
        files = STUDIES[name].aggregate(runs, Path(results), scale) if runs else []
        log.info("%s: %d files", name, len(files))
        written += files
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["outputs"], help="run directories or folders of runs")
    parser.add_argument("--results", default="results", help="output root (default: results)")
    parser.add_argument("--scale", default="quick", choices=list(SCALES))
    parser.add_argument("--study", nargs="*", default=None, help=f"default: all of {sorted(STUDIES)}")
    parser.add_argument("--redraw", action="store_true",
                        help="only redraw tables and figures from the kept *_runs.csv (no run folders read)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.redraw:
        written = redraw(Path(args.results), args.scale, args.study)
    else:
        written = aggregate(args.runs, Path(args.results), args.scale, args.study)
    log.info("wrote %d files under %s", len(written), args.results)


if __name__ == "__main__":
    main()
