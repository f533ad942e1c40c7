"""Claims of the paper checked on aggregated tables: one :class:`Claim` per report row.

Each study declares its own rules (``Study.claims``); their thresholds and the methods they read live in
``configs/claims.yaml``. The rules are plain functions of tidy tables, tested on hand-built ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass
class Claim:
    """One row of the report."""

    claim: str
    paper: str
    measured: str
    holds: bool | None  # None: not run
    figure: str | None = None

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "not run"}[self.holds]


def read_table(path: Path) -> pd.DataFrame | None:
    """The CSV at ``path``, or None when it was not written."""
    return pd.read_csv(path) if path.exists() else None


def figure_link(path: Path, root: Path) -> str | None:
    """``path`` relative to the report's folder ``root``, or None when the figure was not drawn."""
    return str(path.relative_to(root)) if path.exists() else None


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean across seeds per (method, metric, level)."""
    return frame.groupby(["method", "metric", "level"], as_index=False)["value"].mean()


def lookup(means: pd.Series, keys: list[tuple]) -> list[float] | None:
    """The values at ``keys``, or None when any was not measured."""
    values = [means.get(key) for key in keys]
    return None if any(v is None for v in values) else [float(v) for v in values]
