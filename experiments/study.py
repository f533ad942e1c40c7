"""What a study is: one declared object that says how it runs from a config, the tables and figures a run
writes, how its runs stack across seeds, and the claims of the paper it checks.

The runner (:mod:`experiments.runner`) runs the study a config names (``protocol.name``) and writes what it
returns; :mod:`experiments.aggregate` and :mod:`experiments.report` iterate over every registered study
(:data:`experiments.studies.STUDIES`). A study never writes into a run folder itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig

from labelfree.data.splits import DataSplits

if TYPE_CHECKING:
    from experiments.claims import Claim
    from experiments.workbench import Workbench


@dataclass
class StudyResult:
    """What one run of a study produced: tidy tables and figures (by file stem) and summary entries."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """One study of the paper.

    Attributes:
        name: the ``protocol.name`` of the configs that run it.
        title: a line for people.
        tables: stems of the tidy CSVs one run writes (each with a figure of the same stem).
        figures: stems of the further figures one run writes.
        run: ``(cfg, workbench) -> StudyResult``: one run from a composed config.
        aggregate: ``(run folders, results root, scale) -> files written``: stack the finished runs across
            seeds into tables and figures under the results root.
        claims: ``(results root, scale, rules) -> claims``: the paper's claims checked on what ``aggregate``
            wrote; ``rules`` is this study's node of ``configs/claims.yaml``.
        redraw: ``(results root, scale) -> files written``: the tables for people and the figures drawn again
            from the stacked rows ``aggregate`` kept (``*_runs.csv``), when the run folders are gone.
    """

    name: str
    title: str
    tables: tuple[str, ...]
    run: Callable[[DictConfig, "Workbench"], StudyResult]
    aggregate: Callable[[Sequence[Path], Path, str], list[Path]]
    claims: Callable[[Path, str, Mapping[str, Any]], list["Claim"]]
    figures: tuple[str, ...] = ()
    redraw: Callable[[Path, str], list[Path]] | None = None


    def outputs(self) -> list[str]:
        """File names one run writes (tables and figures), which a rerun removes before it starts."""
        stems = [*self.tables, *self.figures]
        return [f"{t}.csv" for t in self.tables] + [f"{s}{ext}" for s in stems for ext in (".png", ".pdf")]


def identity(cfg: DictConfig, data: DataSplits) -> dict[str, Any]:
    """What every row of a run's tables starts with: experiment, dataset, model and seed."""
    return {
        "experiment": cfg.get("experiment") or "adhoc",
        "dataset": data.name,
        "model": f"{cfg.model.name}:{cfg.model.get('pretext', '')}",
        "seed": int(cfg.seed),
    }


def identify(cfg: DictConfig, data: DataSplits, frame: pd.DataFrame) -> pd.DataFrame:
    """Prefix every row of a protocol's tidy frame with experiment, dataset, model and seed."""
    return identified(identity(cfg, data), frame)


def identified(ident: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """Prefix every row of ``frame`` with the entries of ``ident`` (:func:`identity`)."""
    return pd.DataFrame([{**ident, **row} for row in frame.to_dict("records")])
