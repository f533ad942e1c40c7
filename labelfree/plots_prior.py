"""Figures of the attribution-prior study (VAEs trained with a penalty on their label-free attributions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from labelfree.plots import styled  # noqa: E402


@styled
def plot_metric_by_lambda(frame: pd.DataFrame, metrics: Sequence[str], title: str = "",
                          labels: Mapping[str, str] | None = None) -> Figure:
    """One row of panels per metric, one panel per loss: the metric against beta, one line per lambda (the mean
    across seeds, error bars one standard deviation across seeds, the runs as dots).

    ``frame``: tidy rows ``loss, beta, lambda, seed, metric, value`` (one row per run and metric).
    """
    labels = dict(labels or {})
    losses = list(dict.fromkeys(frame["loss"]))
    lambdas = sorted(frame["lambda"].unique())
    fig, axes = plt.subplots(len(metrics), max(len(losses), 1), figsize=(4.2 * max(len(losses), 1), 3.2 * len(metrics)),
                             squeeze=False)
    for row, metric in enumerate(metrics):
        for col, loss in enumerate(losses):
            ax = axes[row, col]
            part = frame[(frame["loss"] == loss) & (frame["metric"] == metric) & frame["value"].notna()]
            for k, lam in enumerate(lambdas):
                runs = part[part["lambda"] == lam]
                if runs.empty:
                    continue
                stats = runs.groupby("beta")["value"].agg(["mean", "std", "count"]).reset_index()
                shift = (k - (len(lambdas) - 1) / 2) * 0.08  # spread the lines a little along beta
                ax.errorbar(stats["beta"] + shift, stats["mean"], yerr=stats["std"].fillna(0.0), marker="o",
                            markersize=4, capsize=3, color=f"C{k}", label=rf"$\lambda$ = {lam:g}")
                ax.plot(runs["beta"] + shift, runs["value"], ".", color=f"C{k}", alpha=0.35, markersize=3)
            ax.set_xticks(sorted(part["beta"].unique()) if not part.empty else [])
            ax.set_xlabel(r"$\beta$")
            ax.set_ylabel(labels.get(metric, metric), fontsize="small")
            ax.set_title(labels.get(loss, loss), fontsize="small")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="x-small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig
