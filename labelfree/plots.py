"""Figures drawn from tidy result tables (plotting never computes anything but the drawing)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from labelfree.io import atomic_path  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

LABELS = {
    "integrated_gradients": "Integrated Gradients",
    "gradient_shap": "Gradient Shap",
    "saliency": "Saliency",
    "feature_ablation": "Feature Ablation",
    "occlusion": "Occlusion",
    "random_features": "Random",
    "influence_functions": "Influence Functions",
    "influence_functions_arnoldi": "Influence Functions (Arnoldi)",
    "tracin": "TracIn",
    "simplex": "SimplEx",
    "dknn": "DKNN",
    "random_examples": "Random",
}


def _label(method: str) -> str:
    return LABELS.get(method, method)


def _spread(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (method, level); the band is the std across seeds (0 with one seed)."""
    grouped = frame.groupby(["method", "level"], sort=True)["value"]
    return grouped.agg(["mean", "std", "count"]).fillna({"std": 0.0}).reset_index()


def plot_level_curves(results: pd.DataFrame, metric: str, xlabel: str, ylabel: str, title: str = "") -> Figure:
    """``metric`` against the level (mean across seeds, band: std across seeds), one line per method."""
    data = _spread(results[results["metric"] == metric])
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for method, part in data.groupby("method", sort=False):
        ax.plot(part["level"], part["mean"], marker="o", label=_label(str(method)))
        ax.fill_between(part["level"], part["mean"] - part["std"], part["mean"] + part["std"], alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_representation_shift(results: pd.DataFrame, title: str = "") -> Figure:
    """Representation shift against the % of masked features, one line per method (``metric == representation_shift``)."""
    return plot_level_curves(results, "representation_shift", "% of features masked",
                             r"representation shift $\|f(x) - f(\tilde x)\|^2$", title)


def plot_similarity_rates(results: pd.DataFrame, title: str = "") -> Figure:
    """Similarity rate against M, solid for the most and dashed for the least important examples."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for i, method in enumerate(dict.fromkeys(results["method"])):
        color = f"C{i}"
        for metric, style, suffix in (("similarity_most", "-", "most"), ("similarity_least", "--", "least")):
            part = _spread(results[(results["method"] == method) & (results["metric"] == metric)])
            ax.plot(part["level"], part["mean"], style, color=color, marker="o", label=f"{_label(method)} ({suffix})")
            ax.fill_between(part["level"], part["mean"] - part["std"], part["mean"] + part["std"], color=color, alpha=0.15)
    ax.set_xlabel("M (% of training examples)")
    ax.set_ylabel("similarity rate")
    ax.set_title(title)
    ax.legend(fontsize="x-small", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_roar(results: pd.DataFrame, title: str = "") -> Figure:
    """ROAR: clean test loss after retraining without the top-k% pixels, one line per method."""
    return plot_level_curves(results, "test_loss", "% of training pixels removed", "test loss after retraining", title)


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Save ``fig`` as ``stem.png`` (README) and ``stem.pdf`` (papers), atomically; close it."""
    paths = []
    for suffix in (".png", ".pdf"):
        path = Path(stem).with_suffix(suffix)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------ pretext sensitivity
def _task_label(task: str) -> str:
    return task.replace("_", " ").capitalize()


def _image(array: object) -> object:
    """A ``[C, H, W]`` tensor or array as something ``imshow`` draws: ``[H, W]`` for one channel, ``[H, W, C]`` else."""
    import numpy as np

    data = np.asarray(array)
    return data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)


def _finish_image_grid(fig: Figure, axes: np.ndarray, title: str, title_size: str) -> Figure:
    """A grid of images finished: no ticks on any panel (``axes``: the array of ``plt.subplots``), the title
    (font size ``title_size``) above, a tight layout; returns ``fig``."""
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=title_size)
    fig.tight_layout()
    return fig


def plot_pretext_correlations(
    results: pd.DataFrame, title: str = "", metrics: tuple[str, ...] = ("pearson", "spearman")
) -> Figure:
    """Heatmaps of the correlations between pretext tasks: one row per metric, one column per (kind, method).

    ``results``: tidy rows ``kind, method, task_a, task_b, metric, value`` (and ``seed``). Cells show the
    mean across seeds, with the std across seeds below it when there are several seeds.
    """
    panels = list(dict.fromkeys(zip(results["kind"], results["method"])))
    metrics = tuple(m for m in metrics if m in set(results["metric"]))
    tasks = list(dict.fromkeys(results["task_a"]))
    fig, axes = plt.subplots(
        len(metrics), len(panels), figsize=(3.6 * len(panels) + 1.0, 3.4 * len(metrics)), squeeze=False,
        layout="constrained",
    )
    image = None
    for row, metric in enumerate(metrics):
        for col, (kind, method) in enumerate(panels):
            part = results[(results["kind"] == kind) & (results["method"] == method) & (results["metric"] == metric)]
            stats = part.groupby(["task_a", "task_b"])["value"].agg(["mean", "std", "count"])
            mean = stats["mean"].unstack().reindex(index=tasks, columns=tasks)
            std = stats["std"].unstack().reindex(index=tasks, columns=tasks)
            several = bool((stats["count"] > 1).any())
            ax = axes[row, col]
            image = ax.imshow(mean.to_numpy(dtype=float), vmin=-1.0, vmax=1.0, cmap="coolwarm")
            for i in range(len(tasks)):
                for j in range(len(tasks)):
                    text = f"{mean.iat[i, j]:.2f}" + (f"\n±{std.iat[i, j]:.2f}" if several else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize="x-small")
            labels = [_task_label(t) for t in tasks]
            ax.set_xticks(range(len(tasks)), labels, rotation=45, ha="right", fontsize="small")
            ax.set_yticks(range(len(tasks)), labels, fontsize="small")
            ax.set_title(f"{kind}: {_label(method)} ({metric})", fontsize="small")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(title, fontsize="medium")
    return fig


def plot_pretext_saliency(images: object, saliency: dict[str, object], title: str = "") -> Figure:
    """The same test images (top row, ``[n, C, H, W]``) and their saliency maps by each task (task -> ``[n, C, H, W]``).

    Each map is drawn with its own colour scale (absolute importances; channels summed).
    """
    import numpy as np

    images = np.asarray(images)
    n, tasks = len(images), list(saliency)
    fig, axes = plt.subplots(1 + len(tasks), n, figsize=(1.6 * n + 1.0, 1.6 * (1 + len(tasks))), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(_image(images[j]), cmap="gray")
        for i, task in enumerate(tasks, start=1):
            axes[i, j].imshow(np.asarray(saliency[task])[j].sum(axis=0), cmap="hot")
    for i, label in enumerate(["input", *map(_task_label, tasks)]):
        axes[i, 0].set_ylabel(label, fontsize="small")
    return _finish_image_grid(fig, axes, title, "medium")


def plot_pretext_top_examples(images: object, top: dict[str, object], title: str = "") -> Figure:
    """For each test image (``[n, C, H, W]``, left) one row per task with its top training examples
    (task -> ``[n, k, C, H, W]``, most important first)."""
    import numpy as np

    images = np.asarray(images)
    tasks = list(top)
    n, k = len(images), np.asarray(top[tasks[0]]).shape[1]
    rows = n * len(tasks)
    fig, axes = plt.subplots(rows, 1 + k, figsize=(1.0 * (1 + k) + 0.6, 1.0 * rows), squeeze=False)
    for t in range(n):
        for i, task in enumerate(tasks):
            row = t * len(tasks) + i
            if i == 0:
                axes[row, 0].imshow(_image(images[t]), cmap="gray")
            else:
                axes[row, 0].axis("off")
            for j in range(k):
                axes[row, 1 + j].imshow(_image(np.asarray(top[task])[t, j]), cmap="gray")
            axes[row, 1].set_ylabel(_task_label(task), fontsize="x-small")
    axes[0, 0].set_title("test", fontsize="small")
    for j in range(k):
        axes[0, 1 + j].set_title(f"#{j + 1}", fontsize="small")
    return _finish_image_grid(fig, axes, title, "medium")


# ------------------------------------------------------------------------------ disentangled VAEs
def plot_unit_saliency(images: object, maps: object, title: str = "", unit_kl: list[float] | None = None) -> Figure:
    """Test images (first column, ``[m, C, H, W]``) and the saliency map of every latent unit (``[m, d, H, W]``).

    The maps of one image share one colour scale (0 to that image's largest value), so the units of a row
    compare directly. ``unit_kl`` (optional, ``[d]``) labels each column with the unit's mean KL.
    """
    import numpy as np

    images, maps = np.asarray(images), np.asarray(maps)
    m, d = maps.shape[:2]
    fig, axes = plt.subplots(m, 1 + d, figsize=(1.5 * (1 + d) + 0.4, 1.5 * m + 0.6), squeeze=False)
    for i in range(m):
        axes[i, 0].imshow(_image(images[i]), cmap="gray")
        top = float(maps[i].max()) or 1.0
        for j in range(d):
            axes[i, 1 + j].imshow(maps[i, j], cmap="hot", vmin=0.0, vmax=top)
    axes[0, 0].set_title("input", fontsize="small")
    for j in range(d):
        label = f"unit {j}" + (f"\nKL {unit_kl[j]:.2f}" if unit_kl is not None else "")
        axes[0, 1 + j].set_title(label, fontsize="small")
    return _finish_image_grid(fig, axes, title, "small")


def plot_metric_boxes(results: pd.DataFrame, metrics: list[str], title: str = "", labels: dict[str, str] | None = None,
                      ncols: int = 4) -> Figure:
    """Box plots of each metric (one panel each, ``ncols`` per row) against beta, one box colour per loss.

    ``results``: tidy rows ``loss, beta, metric, value`` (one row per run and metric, e.g. seeds). Each box
    shows the runs' values of one (loss, beta); the points are the runs themselves.
    """
    losses = list(dict.fromkeys(results["loss"]))
    betas = sorted(results["beta"].unique())
    width = 0.8 / max(len(losses), 1)
    ncols = max(1, min(ncols, len(metrics)))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols + 0.5, 3.0 * nrows + 0.5), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics):
        part = results[results["metric"] == metric]
        for k, loss in enumerate(losses):
            offset = (k - (len(losses) - 1) / 2) * width
            values = [part[(part["loss"] == loss) & (part["beta"] == beta)]["value"].dropna().to_numpy() for beta in betas]
            positions = [i + offset for i in range(len(betas))]
            kept = [(p, v) for p, v in zip(positions, values) if len(v)]
            if not kept:
                continue
            boxes = ax.boxplot([v for _, v in kept], positions=[p for p, _ in kept], widths=0.9 * width,
                               patch_artist=True, showfliers=False)
            for patch in boxes["boxes"]:
                patch.set_facecolor(f"C{k}")
                patch.set_alpha(0.45)
            for p, v in kept:
                ax.plot([p] * len(v), v, ".", color=f"C{k}", markersize=4)
            ax.plot([], [], "s", color=f"C{k}", alpha=0.6, label=(labels or {}).get(loss, loss))
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlabel(r"$\beta$")
        ax.set_title((labels or {}).get(metric, metric), fontsize="small")
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(fontsize="x-small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig
