"""Claims of the paper checked on aggregated tables, with verdicts that know about seeds.

A claim is a set of inequalities ("method beats Random at p = 5 %", "feature correlation above example
correlation for this pair of tasks"), each measured once per seed as a difference ``left - right`` that the
claim says is above a margin. The verdict of a claim (:func:`decide`):

* **holds**: for every inequality the confidence interval of the mean difference lies above the margin;
* **does not hold**: for some inequality it lies below the margin;
* **inconclusive**: otherwise (the spread is too large for the number of seeds);
* **incomplete**: a method, level or seed the claim names was not measured (never "holds");
* **not run**: nothing was measured.

With two or more seeds the interval is Student's t over seeds (the differences are paired by seed). With one
seed there is no spread across seeds; the interval then comes from the spread over test examples of that
seed's two means (``std / sqrt(n)`` of each row, combined as independent), and the row says so. Each row also
states the seeds it rests on and how many seeds satisfy every inequality on their own.

Every study declares its own rules (``Study.claims``); their thresholds, levels and the methods they read
live in ``configs/claims.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

HOLDS, FAILS, INCONCLUSIVE, INCOMPLETE, NOT_RUN = "holds", "does not hold", "inconclusive", "incomplete", "not run"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, INCOMPLETE, NOT_RUN)


@dataclass
class Claim:
    """One row of the report."""

    claim: str
    paper: str
    measured: str
    verdict: str = NOT_RUN
    seeds: tuple[int, ...] = ()
    satisfied: int = 0          # seeds that satisfy every inequality on their own
    figure: str | None = None
    note: str = ""              # e.g. what is missing for an incomplete claim
    scale: str = ""             # the scale the row rests on (set by the report)
    status: str = ""            # the report's wording when the row rests on another scale's evidence

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Unknown verdict {self.verdict!r}; accepted: {list(VERDICTS)}")

    @property
    def per_seed(self) -> str:
        """``"2 of 3"``: seeds satisfying every inequality on their own, out of the seeds measured."""
        return f"{self.satisfied} of {len(self.seeds)}" if self.seeds else "-"


@dataclass
class Inequality:
    """One inequality of a claim: per seed, ``left - right``, which the claim says exceeds the margin.

    ``single_se``: the standard error of one seed's difference from the spread over test examples (used only
    when a single seed was measured); None when the rows carry no spread.
    """

    label: str
    differences: dict[int, float] = field(default_factory=dict)
    single_se: float | None = None

    def interval(self, confidence: float) -> tuple[float, float] | None:
        """Two-sided ``confidence`` interval of the mean difference, or None when it cannot be formed."""
        values = [v for v in self.differences.values() if math.isfinite(v)]
        if not values:
            return None
        mean = sum(values) / len(values)
        if len(values) == 1:
            if self.single_se is None or not math.isfinite(self.single_se):
                return None
            half = float(stats.norm.ppf(0.5 + confidence / 2)) * self.single_se
        else:
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sd / math.sqrt(len(values))
        return mean - half, mean + half


def decide(inequalities: Sequence[Inequality], confidence: float, margin: float = 0.0,
           missing: Sequence[str] = ()) -> tuple[str, tuple[int, ...], int]:
    """The verdict of a claim made of ``inequalities`` (module docstring), its seeds and the seeds satisfying it.

    ``missing``: what the claim names but was not measured; any makes the claim "incomplete".
    """
    seeds = tuple(sorted({s for q in inequalities for s in q.differences}))
    satisfied = sum(all(q.differences.get(s, -math.inf) > margin for q in inequalities) for s in seeds)
    if not seeds:
        return NOT_RUN, seeds, 0
    if missing:
        return INCOMPLETE, seeds, satisfied
    intervals = [q.interval(confidence) for q in inequalities]
    if any(i is not None and i[1] < margin for i in intervals):
        return FAILS, seeds, satisfied
    if all(i is not None and i[0] > margin for i in intervals):
        return HOLDS, seeds, satisfied
    return INCONCLUSIVE, seeds, satisfied


def row_se(rows: pd.DataFrame) -> float | None:
    """Standard error of one mean from its row's spread over test examples (``std / sqrt(n)``), if present."""
    if len(rows) != 1 or not {"std", "n"} <= set(rows.columns):
        return None
    std, n = float(rows["std"].iloc[0]), float(rows["n"].iloc[0])
    return std / math.sqrt(n) if n > 0 and math.isfinite(std) else None


def paired(frame: pd.DataFrame, left: Mapping[str, Any], right: Mapping[str, Any], label: str,
           value: str = "value") -> Inequality | None:
    """The inequality ``left > right`` between two selections of ``frame``'s rows, paired by seed.

    ``left``/``right``: column -> value selecting one row per seed. None when either side has no row.
    """
    sides = [frame.loc[(frame[list(sel)] == pd.Series(sel)).all(axis=1)] for sel in (left, right)]
    if any(side.empty for side in sides):
        return None
    by_seed = [side.groupby("seed")[value].mean() for side in sides]
    common = by_seed[0].index.intersection(by_seed[1].index)
    differences = {int(s): float(by_seed[0][s] - by_seed[1][s]) for s in common}
    ses = [row_se(side) for side in sides] if len(common) == 1 else [None]
    single = math.sqrt(sum(se**2 for se in ses)) if all(se is not None for se in ses) else None
    return Inequality(label, differences, single)


def compare_methods(frame: pd.DataFrame, metric: str, methods: Sequence[str], reference: str,
                    levels: Iterable[float]) -> tuple[list[Inequality], list[str]]:
    """``metric`` of each of ``methods`` above that of ``reference`` at every level; also what is missing."""
    inequalities, missing = [], []
    for method in methods:
        for level in levels:
            q = paired(frame, {"method": method, "metric": metric, "level": float(level)},
                       {"method": reference, "metric": metric, "level": float(level)}, f"{method} @ {level:g}")
            if q is None or not q.differences:
                missing.append(f"{method} @ {level:g}")
            else:
                inequalities.append(q)
    return inequalities, missing


def claim_from(name: str, paper: str, measured: str, inequalities: Sequence[Inequality],
               rules: Mapping[str, Any], missing: Sequence[str] = (), margin: float = 0.0) -> Claim:
    """A :class:`Claim` with the verdict of ``inequalities`` at ``rules['confidence']``."""
    verdict, seeds, satisfied = decide(inequalities, float(rules["confidence"]), margin, missing)
    note = ""
    if missing:
        note = "not measured: " + ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
    elif verdict == INCONCLUSIVE:
        confidence = float(rules["confidence"])
        open_ = [q.label for q in inequalities if (i := q.interval(confidence)) is None or i[0] <= margin]
        note = ("spread too large for the number of seeds" + (" (one seed: test-example spread)" if len(seeds) == 1 else "")
                + "; undecided: " + ", ".join(open_[:3]) + (f" (+{len(open_) - 3} more)" if len(open_) > 3 else ""))
    elif len(seeds) == 1:
        note = "one seed: interval from the spread over test examples"
    return Claim(name, paper, measured, verdict, seeds, satisfied, note=note)


def read_table(path: Path) -> pd.DataFrame | None:
    """The CSV at ``path``, or None when it was not written."""
    return pd.read_csv(path) if path.exists() else None


def figure_link(path: Path, root: Path) -> str | None:
    """``path`` relative to the report's folder ``root``, or None when the figure was not drawn."""
    return str(path.relative_to(root)) if path.exists() else None


def mean_by(frame: pd.DataFrame, keys: Sequence[str], value: str = "value") -> pd.Series:
    """Mean of ``value`` across seeds per ``keys``."""
    return frame.groupby(list(keys))[value].mean()


def fmt(value: float) -> str:
    """A number with three significant digits (any magnitude)."""
    return f"{value:.3g}"


def resolve_methods(frame: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """Each name, or for ``"a|b"`` the first alternative present in ``frame`` (else the first)."""
    present = set(frame["method"]) if frame is not None and "method" in frame else set()
    out = []
    for name in names:
        options = str(name).split("|")
        out.append(next((o for o in options if o in present), options[0]))
    return out
