"""Protocol: consistency of label-free example importance (PAPER.md section 2).

For each test example, the M most (and least) important training examples are compared by label:
a faithful explainer's most important examples share the test label more often than its least
important ones. Labels are used only here, never to compute importance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import pandas as pd
from torch import Tensor

from labelfree.attribution.examples import ExampleImportance
from labelfree.metrics import percent_to_count, similarity_rate_curves

log = logging.getLogger(__name__)


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
    counts = [percent_to_count(m, len(train_x)) for m in percents]
    rows, seconds = [], {}
    for name, explainer in explainers.items():
        start = time.perf_counter()
        explainer.fit(train_x, train_y if fit_labels else None)
        scores = explainer.attribute(test_x, test_y if fit_labels else None)
        seconds[name] = time.perf_counter() - start
        log.info("examples %s: %.1f s", name, seconds[name])
        curves_most, curves_least = similarity_rate_curves(scores, test_y, train_y, counts)
        for m_percent, most, least in zip(percents, curves_most, curves_least):
            for metric, values in (("similarity_most", most), ("similarity_least", least)):
                rows.append(
                    {
                        "method": name,
                        "level": float(m_percent),
                        "metric": metric,
                        "value": float(values.mean()),
                        "std": float(values.std()) if len(values) > 1 else 0.0,
                        "n": len(values),
                    }
                )
    return pd.DataFrame(rows), seconds
