"""Percentages (the configs' unit) to fractions and counts."""

from __future__ import annotations

import math
from numbers import Real

__all__ = ["percent_to_fraction", "percent_to_count"]

_PERCENT_MAX = 100.0


def _check_percent(p: float, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, Real) or math.isnan(float(p)) or not 0 <= p <= _PERCENT_MAX:
        raise ValueError(f"{name} must be a percentage in [0, 100], got {p!r}")
    return float(p)


def percent_to_fraction(p: float) -> float:
    """Convert a percentage ``p`` in [0, 100] (the configs' unit) to a fraction in [0, 1]."""
    return _check_percent(p) / _PERCENT_MAX


def percent_to_count(percent: float, n: int) -> int:
    """Number of items that make ``percent`` % of ``n``: ``round(percent / 100 * n)``, at least 1.

    Used for the similarity rate's M, given in the paper as a percentage of the training subset.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (the number of items), got {n!r}")
    if isinstance(percent, (int, float)) and percent > _PERCENT_MAX:
        raise ValueError(
            f"M = {percent}% exceeds the {n} training examples of the subset; M is a percentage in [0, 100]"
        )
    percent = _check_percent(percent, "percent")
    return max(1, round(percent / _PERCENT_MAX * n))

