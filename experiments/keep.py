"""Keep finished runs' small outputs in the repository, so results outlive the machine that ran them.

    python -m experiments.keep --runs outputs --to results/runs

Copies, for every finished run under ``--runs`` (one with a ``summary.json``), its tidy CSVs, ``config.yaml``,
``summary.json``, figures (PNG) and Hydra's ``.hydra/overrides.yaml`` (never model weights: those live in the model
cache), and every sweep's ``multirun.yaml`` (the seeds it asked for), to the same relative path under ``--to``.
``make figures`` and ``make report`` read ``--to`` as well as ``outputs/``, so a sweep spread over several
machines accumulates in git and a lost machine loses at most the run in progress. Copying twice changes nothing.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from experiments.aggregation import SUMMARY, copy_file

log = logging.getLogger("experiments.keep")

#: what a run folder keeps (glob patterns relative to it); weights and caches never
KEPT = ("*.csv", "*.png", "config.yaml", SUMMARY, ".hydra/overrides.yaml")  # PNG only: the PDFs are for the aggregated figures


def keep(runs: Path, to: Path) -> list[Path]:
    """Copy the small outputs of every finished run (and every ``multirun.yaml``) under ``runs`` to ``to``."""
    sources = list(runs.rglob("multirun.yaml"))
    for summary in runs.rglob(SUMMARY):
        sources += [path for pattern in KEPT for path in summary.parent.glob(pattern)]
    written: list[Path] = []
    # each run's summary.json last: a copy cut short (or a commit taken meanwhile) never holds a summary whose
    # tables are missing, and a run without its summary is not yet a finished run
    for source in sorted(sources, key=lambda path: (path.parent, path.name == SUMMARY, path)):
        target = to / source.relative_to(runs)
        if not target.exists() or target.read_bytes() != source.read_bytes():
            written.append(copy_file(source, target))
    log.info("kept %d files under %s", len(written), to)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="outputs", help="folder of run directories (default: outputs)")
    parser.add_argument("--to", default="results/runs", help="where to keep them (default: results/runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keep(Path(args.runs), Path(args.to))


if __name__ == "__main__":
    main()
