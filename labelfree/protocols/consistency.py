"""Protocol: consistency of label-free feature and example importance (Crabbé & van der Schaar, 2022).

* Features: mask the top p% features of each test input (ranked by |attribution| summed over channels)
  with a baseline and measure the representation shift ||f(x) - f(x_masked)||^2. A faithful explainer
  shifts the representation more than a random ranking.
* Examples: for each test example, the M most (and least) important training examples are compared by
  label: a faithful explainer's most important examples share the test label more often than its least
  important ones. Labels are used only here, never to compute importance.

Both take objects and return tidy rows ``method, level, metric, value, std, n`` (std over test examples).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from captum.attr import Attribution
from torch import Tensor, nn

from labelfree.attribution.batched import BatchedAttribution
from labelfree.attribution.examples import ExampleImportance
from labelfree.data.splits import Baseline, baseline_like
from labelfree.guards import check_finite
from labelfree.metrics import (
    mask_features,
    percent_to_count,
    percent_to_fraction,
    representation_shift,
    similarity_rate_curves,
    top_feature_mask,
)
from labelfree.modules import module_device

log = logging.getLogger(__name__)

__all__ = ["consistency_examples", "consistency_features", "similarity_rows", "tidy_row"]


def tidy_row(method: str, level: float, metric: str, values: Tensor) -> dict[str, Any]:
    """One tidy row: the mean of ``values [n]`` with its std over examples and their count."""
    return {
        "method": method,
        "level": float(level),
        "metric": metric,
        "value": float(values.mean()),
        "std": float(values.std()) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def consistency_features(
    encoder: nn.Module,
    test_x: Tensor,
    baseline: Baseline,
    explainers: Mapping[str, Attribution],
    attribute_kwargs: Mapping[str, Mapping[str, Any]],
    percents: Sequence[float],
    channel_dim: int | None = 1,
    batch_size: int = 500,
) -> pd.DataFrame:
    """Representation shift per (method, p); tidy rows with mean, std and count over test examples.

    ``encoder`` is explained in eval mode; ``test_x [n, *input_shape]``. Returns columns
    ``method, level, metric, value, std, n`` (level = p in percent, metric = representation_shift).
    """
    fractions = [percent_to_fraction(p) for p in percents]
    if not explainers:
        raise ValueError("consistency_features needs at least one feature explainer")
    device = module_device(encoder)
    encoder.eval()
    shifts: dict[tuple[str, float], list[Tensor]] = {}
    for name, explainer in explainers.items():
        batched = BatchedAttribution(explainer, baseline, attribute_kwargs.get(name, {}), batch_size, device)
        for x, attributions in batched.batches(test_x, desc=f"features {name}"):
            base = baseline_like(baseline, x)
            for p, fraction in zip(percents, fractions):
                mask = top_feature_mask(attributions, fraction, channel_dim=channel_dim)
                shift = representation_shift(encoder, x, mask_features(x, mask, base))
                shifts.setdefault((name, float(p)), []).append(shift.cpu())
        log.info("features %s done", name)
    return check_finite("consistency_features", pd.DataFrame([tidy_row(name, p, "representation_shift", torch.cat(parts))
                                                             for (name, p), parts in shifts.items()]))


def consistency_examples(
    explainers: Mapping[str, ExampleImportance],
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    percents: Sequence[float],
    fit_labels: bool = False,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Similarity rates per (method, M); tidy rows plus the seconds each explainer took.

    Returns columns ``method, level, metric, value, std, n`` (level = M in percent of the training
    subset; metric = similarity_most or similarity_least). ``fit_labels`` hands the labels to the
    explainers: only for a supervised model whose own loss needs them.
    """
    if not explainers:
        raise ValueError("consistency_examples needs at least one example explainer")
    rows, seconds = [], {}
    for name, explainer in explainers.items():
        start = time.perf_counter()
        explainer.fit(train_x, train_y if fit_labels else None)
        scores = check_finite(f"example importance by {name}", explainer.attribute(test_x, test_y if fit_labels else None))
        seconds[name] = time.perf_counter() - start
        log.info("examples %s: %.1f s", name, seconds[name])
        rows += similarity_rows(name, scores, train_y, test_y, percents)
    return check_finite("consistency_examples", pd.DataFrame(rows)), seconds


def similarity_rows(name: str, scores: Tensor, train_y: Tensor, test_y: Tensor,
                    percents: Sequence[float]) -> list[dict[str, Any]]:
    """The tidy rows of explainer ``name``'s scores ``[n_test, n_train]``: similarity_most and similarity_least
    at each M of ``percents`` (in percent of the training examples). Also what merges sharded scores."""
    counts = [percent_to_count(m, scores.shape[1]) for m in percents]
    curves_most, curves_least = similarity_rate_curves(scores, test_y, train_y, counts)
    rows = []
    for m_percent, most, least in zip(percents, curves_most, curves_least):
        rows += [tidy_row(name, m_percent, "similarity_most", most), tidy_row(name, m_percent, "similarity_least", least)]
    return rows
