"""Figures drawn from tidy result tables (plotting never computes anything but the drawing)."""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from labelfree.io import atomic_path  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

P = ParamSpec("P")

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


#: data set names in words
DATASETS = {"mnist": "MNIST", "ecg5000": "ECG5000", "cifar10": "CIFAR-10", "dsprites": "dSprites", "cora": "Cora", "ag_news": "AG News"}
#: figure widths of a two-column paper (inches): one column, the whole page
COLUMN, PAGE = 3.4, 7.0
#: below this many seeds a figure shows every seed's point with the mean and +/- 1 s.d.; from it, boxes
FEW_SEEDS = 5
#: font sizes readable at these widths; applied inside each figure function only (``styled``), never to the
#: importing program's matplotlib settings
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 9}
DPI = 300  # PNG resolution


def styled(draw: Callable[P, Figure]) -> Callable[P, Figure]:
    """Run a figure function under :data:`STYLE` (``matplotlib.rc_context``): the figure keeps the style,
    the caller's rcParams are left as they were."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def _label(method: str) -> str:
    return LABELS.get(method, method)


def _wrap(title: str, width: int = 40) -> str:
    """A title broken into lines that fit a one-column figure."""
    return textwrap.fill(title, width)


def dataset_label(name: str) -> str:
    """A data set's name in words (``mnist`` -> ``MNIST``)."""
    return DATASETS.get(str(name), str(name))


def _spread(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and s.d. across seeds per (method, level), and the number of seeds (s.d. 0 with one seed)."""
    grouped = frame.groupby(["method", "level"], sort=True)["value"]
    return grouped.agg(["mean", "std", "count"]).fillna({"std": 0.0}).reset_index()


def _seeds_drawn(ax: object, part: pd.DataFrame, stats: pd.DataFrame, color: str, style: str = "-",
                 label: str | None = None) -> None:
    """One method's curve: the mean across seeds, with every seed's point and +/- 1 s.d. when there are several."""
    ax.plot(stats["level"], stats["mean"], style, color=color, marker="o", markersize=3, linewidth=1.2, label=label)
    if int(stats["count"].max()) > 1:
        ax.errorbar(stats["level"], stats["mean"], yerr=stats["std"], fmt="none", ecolor=color, capsize=2,
                    linewidth=0.8)
        ax.plot(part["level"], part["value"], ".", color=color, alpha=0.35, markersize=3)


def _legend_below(fig: Figure, ax: object, ncol: int = 3) -> None:
    """The legend below the axes, outside the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(ncol, len(handles)), frameon=False)


@styled
def plot_level_curves(results: pd.DataFrame, metric: str, xlabel: str, ylabel: str, title: str = "") -> Figure:
    """``metric`` against the level, one line per method: the mean across seeds and, with several seeds, every
    seed's point and +/- 1 s.d. across seeds. One column wide; the legend sits below the axes."""
    data = results[results["metric"] == metric]
    fig, ax = plt.subplots(figsize=(COLUMN, 3.0), layout="constrained")
    for i, (method, stats) in enumerate(_spread(data).groupby("method", sort=False)):
        _seeds_drawn(ax, data[data["method"] == method], stats, f"C{i}", label=_label(str(method)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title))
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return fig


@styled
def plot_representation_shift(results: pd.DataFrame, title: str = "") -> Figure:
    """Representation shift against the % of masked features, one line per method (``metric == representation_shift``)."""
    return plot_level_curves(results, "representation_shift", "features masked (%)",
                             r"representation shift $\|f(x) - f(\tilde x)\|^2$", title)


@styled
def plot_similarity_rates(results: pd.DataFrame, title: str = "") -> Figure:
    """Similarity rate against M, one colour per method: solid for the M most, dashed for the M least important
    examples (mean across seeds; with several seeds every seed's point and +/- 1 s.d.)."""
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(COLUMN, 3.2), layout="constrained")
    handles = []
    for i, method in enumerate(dict.fromkeys(results["method"])):
        for metric, style in (("similarity_most", "-"), ("similarity_least", "--")):
            part = results[(results["method"] == method) & (results["metric"] == metric)]
            _seeds_drawn(ax, part, _spread(part), f"C{i}", style)
        handles.append(Line2D([], [], color=f"C{i}", marker="o", markersize=3, label=_label(method)))
    handles += [Line2D([], [], color="0.3", linestyle="-", label="most important"),
                Line2D([], [], color="0.3", linestyle="--", label="least important")]
    ax.set_xlabel("M (% of the training examples)")
    ax.set_ylabel("share with the test example's label")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(_wrap(title))
    ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
    return fig


@styled
def plot_roar(results: pd.DataFrame, title: str = "") -> Figure:
    """ROAR: clean test loss after retraining without the top-k% pixels, one line per method."""
    return plot_level_curves(results, "test_loss", "training pixels removed (%)", "test loss after retraining", title)


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Save ``fig`` as ``stem.png`` (README) and ``stem.pdf`` (papers), atomically and byte-for-byte reproducibly;
    close it."""
    paths = []
    for suffix in (".png", ".pdf"):
        path = Path(stem).with_suffix(suffix)
        with atomic_path(path) as tmp:
            # no creation date in the PDF: the same figure gives the same bytes, so a regenerated report changes
            # only the figures whose content changed
            fig.savefig(tmp, format=suffix[1:], dpi=DPI, metadata={"CreationDate": None} if suffix == ".pdf" else None)
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
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    return fig


@styled
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


@styled
def plot_pretext_saliency(images: object, saliency: dict[str, object], title: str = "") -> Figure:
    """The same test images (top row, ``[n, C, H, W]``) and their saliency maps by each task (task -> ``[n, C, H, W]``).

    Channels are summed and each map is divided by its largest value, so every map shares the colour bar
    (relative importance, 0 to 1) and the tasks compare by where their importance lies.
    """
    import numpy as np

    images = np.asarray(images)
    n, tasks = len(images), list(saliency)
    fig, axes = plt.subplots(1 + len(tasks), n, figsize=(min(PAGE, 1.1 * n + 1.6), 1.1 * (1 + len(tasks)) + 0.6),
                             squeeze=False, layout="constrained")
    image = None
    for j in range(n):
        axes[0, j].imshow(_image(images[j]), cmap="gray")
        for i, task in enumerate(tasks, start=1):
            heat = np.asarray(saliency[task])[j].sum(axis=0)
            image = axes[i, j].imshow(heat / (float(heat.max()) or 1.0), cmap="hot", vmin=0.0, vmax=1.0)
    for i, label in enumerate(["input", *map(_task_label, tasks)]):
        axes[i, 0].set_ylabel(label)
    if image is not None:
        fig.colorbar(image, ax=axes[1:, :], shrink=0.8, label="relative importance")
    return _finish_image_grid(fig, axes, _wrap(title, 70), "medium")


@styled
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

    The maps of one image share one colour scale (0 to that image's largest value, the colour bar at the end of
    the row), so the units of a row compare directly. ``unit_kl`` (optional, ``[d]``) labels each column with the
    unit's mean KL.
    """
    import numpy as np

    images, maps = np.asarray(images), np.asarray(maps)
    m, d = maps.shape[:2]
    fig, axes = plt.subplots(m, 1 + d, figsize=(min(PAGE, 1.2 * (1 + d) + 1.0), 1.2 * m + 0.8), squeeze=False,
                             layout="constrained")
    for i in range(m):
        axes[i, 0].imshow(_image(images[i]), cmap="gray")
        top = float(maps[i].max()) or 1.0
        for j in range(d):
            image = axes[i, 1 + j].imshow(maps[i, j], cmap="hot", vmin=0.0, vmax=top)
        fig.colorbar(image, ax=axes[i, 1:], shrink=0.9, format="%.2g")
    axes[0, 0].set_title("input")
    for j in range(d):
        label = f"unit {j}" + (f"\nKL {unit_kl[j]:.2f}" if unit_kl is not None else "")
        axes[0, 1 + j].set_title(label)
    return _finish_image_grid(fig, axes, _wrap(title, 70), "medium")


@styled
def plot_metric_boxes(results: pd.DataFrame, metrics: list[str], title: str = "", labels: dict[str, str] | None = None,
                      ncols: int = 4, limits: dict[str, tuple[float, float]] | None = None) -> Figure:
    """Each metric against beta (one panel each, ``ncols`` per row), one colour per loss.

    ``results``: tidy rows ``loss, beta, metric, value`` (one row per run and metric, e.g. seeds). With fewer
    than :data:`FEW_SEEDS` runs per (loss, beta) every run is a point beside the mean +/- 1 s.d. across runs;
    from :data:`FEW_SEEDS` runs, a box. ``limits``: metric -> the y-range to draw (a metric's natural range,
    e.g. 0 to 1 for a correlation of non-negative maps), so small differences are not magnified.
    """
    losses = list(dict.fromkeys(results["loss"]))
    betas = sorted(results["beta"].unique())
    width = 0.8 / max(len(losses), 1)
    ncols = max(1, min(ncols, len(metrics)))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PAGE, 1.9 * nrows + 0.7), squeeze=False, layout="constrained")
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics):
        part = results[results["metric"] == metric]
        for k, loss in enumerate(losses):
            offset = (k - (len(losses) - 1) / 2) * width
            for i, beta in enumerate(betas):
                values = part[(part["loss"] == loss) & (part["beta"] == beta)]["value"].dropna().to_numpy()
                if not len(values):
                    continue
                if len(values) >= FEW_SEEDS:
                    boxes = ax.boxplot([values], positions=[i + offset], widths=0.9 * width, patch_artist=True,
                                       showfliers=False)
                    boxes["boxes"][0].set(facecolor=f"C{k}", alpha=0.45)
                else:
                    ax.errorbar([i + offset], [values.mean()], yerr=[values.std(ddof=1) if len(values) > 1 else 0.0],
                                fmt="_", color=f"C{k}", markersize=10, capsize=3, linewidth=1.0)
                ax.plot([i + offset] * len(values), values, ".", color=f"C{k}", alpha=0.6, markersize=4)
            ax.plot([], [], "s", color=f"C{k}", alpha=0.6, label=(labels or {}).get(loss, loss))
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlabel(r"$\beta$")
        ax.set_title((labels or {}).get(metric, metric))
        if limits and metric in limits:
            low, high = limits[metric]
            ax.set_ylim(low - 0.03 * (high - low), high + 0.03 * (high - low))
        ax.grid(alpha=0.3, axis="y")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(_wrap(title, 100))
    return fig
