"""Protocol: pretext-task sensitivity (PAPER.md section 3, "Pretext").

Encoders of one architecture trained on different pretext tasks (reconstruction, denoising, inpainting,
classification) are explained label-free on the same inputs; the explanations of every pair of tasks are
compared by the Pearson (and Spearman) correlation of the flattened importance arrays:

* feature importance: |b(f, x)| of every test image (``[n_test, *input_shape]`` per task);
* example importance: the scores of a class-balanced training subset for a set of test images
  (``[n_test, n_train]`` per task).

The paper finds that saliency maps correlate only moderately across tasks and example importances weakly.
The paper reads Pearson correlations. Read the Spearman correlation of feature importances with care: with a
black baseline, Gradient Shap's attribution is exactly 0 on every black pixel for every task, so these shared
ties dominate the ranks (on MNIST it is close to 1 for every pair of tasks).

Tidy rows (:func:`correlation_table`): ``kind`` (features / examples), ``method`` (the explainer),
``task_a``, ``task_b`` (every ordered pair, the diagonal included, so a table pivots into the full k x k
matrix), ``metric`` (pearson / spearman), ``level`` (empty: this study has no level; the column keeps the
project's common tidy schema), ``value`` and ``n`` (the number of entries correlated).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from captum.attr import Attribution
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

from experiments.consistency import _subset
from experiments.consistency_features import attribute_features
from labelfree.attribution.examples import ExampleImportance
from labelfree.data.splits import Baseline
from labelfree.metrics import pearson_matrix, spearman_matrix
from labelfree.plots import plot_pretext_correlations, plot_pretext_saliency, plot_pretext_top_examples, save_figure
from labelfree.runner import Trained, Workbench, build_example_explainers, build_feature_explainers, identify, write_check
from labelfree.tracking import CSVTracker
from labelfree.training import seed_everything

log = logging.getLogger(__name__)

KINDS = ("features", "examples")
#: metric name -> ``[k, ...] -> [k, k]`` correlation between k flattened explanations
CORRELATIONS: dict[str, Callable[[Tensor], Tensor]] = {"pearson": pearson_matrix, "spearman": spearman_matrix}
TABLE = "pretext_correlations"

#: method -> task -> explanation tensor (the same shape for every task)
Explanations = dict[str, dict[str, Tensor]]


# ----------------------------------------------------------------------------------- pure functions
def correlation_table(explanations: Mapping[str, Tensor], kind: str, method: str) -> pd.DataFrame:
    """Pearson and Spearman correlations between the flattened explanations of every pair of tasks.

    Args:
        explanations: task -> importance tensor, one shape for all tasks (``[n_test, *input_shape]``
            for features, ``[n_test, n_train]`` for examples); at least two tasks.
        kind: ``features`` or ``examples``.
        method: the explainer's name.

    Returns:
        Tidy rows ``kind, method, task_a, task_b, metric, level, value, n``: every ordered pair of tasks
        (k x k rows per metric, the diagonal included). A constant explanation gives NaN correlations.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown kind of explanation {kind!r}; accepted: {list(KINDS)}")
    tasks = list(explanations)
    if len(tasks) < 2:
        raise ValueError(f"correlating explanations across tasks needs at least 2 tasks, got {tasks}")
    shapes = {task: tuple(explanations[task].shape) for task in tasks}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{kind} explanations by {method} must have one shape for every task, got {shapes}")
    stacked = torch.stack([explanations[task].detach().cpu().reshape(-1) for task in tasks])
    rows = []
    for metric, correlate in CORRELATIONS.items():
        matrix = correlate(stacked)
        for i, task_a in enumerate(tasks):
            for j, task_b in enumerate(tasks):
                rows.append({"kind": kind, "method": method, "task_a": task_a, "task_b": task_b, "metric": metric,
                             "level": float("nan"), "value": float(matrix[i, j]), "n": stacked.shape[1]})
    return pd.DataFrame(rows)


def pretext_correlations(feature_importance: Explanations, example_importance: Explanations) -> pd.DataFrame:
    """The correlation tables (:func:`correlation_table`) of every feature and example explainer, stacked.

    ``feature_importance`` and ``example_importance``: method -> task -> importance tensor.
    """
    frames = [correlation_table(by_task, kind, method)
              for kind, explanations in (("features", feature_importance), ("examples", example_importance))
              for method, by_task in explanations.items()]
    if not frames:
        raise ValueError("pretext_correlations needs at least one feature or example explainer")
    return pd.concat(frames, ignore_index=True)


def off_diagonal_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean correlation over the pairs of distinct tasks, per ``kind, method, metric`` (and ``seed`` if present)."""
    keys = [c for c in ("seed", "kind", "method", "metric") if c in frame]
    pairs = frame[frame["task_a"] != frame["task_b"]]
    return pairs.groupby(keys, sort=False)["value"].mean().reset_index()


def task_feature_importances(
    explainers: Mapping[str, Mapping[str, Attribution]],
    attribute_kwargs: Mapping[str, Mapping[str, Any]],
    x: Tensor,
    baseline: Baseline,
    batch_size: int,
    device: torch.device,
) -> Explanations:
    """|label-free attribution| ``[n, *input_shape]`` (CPU) of every input of ``x`` for each task and method.

    ``explainers``: task -> method -> explainer built on that task's encoder. Returns method -> task.
    """
    out: Explanations = {}
    batches = torch.arange(len(x)).split(batch_size)
    for task, by_method in explainers.items():
        for method, explainer in by_method.items():
            kwargs = attribute_kwargs.get(method, {})
            out.setdefault(method, {})[task] = torch.cat([
                attribute_features(explainer, x[idx].to(device), baseline, kwargs).abs().cpu()
                for idx in tqdm(batches, desc=f"features {task} {method}", leave=False)
            ])
        log.info("features of %s done (%d inputs)", task, len(x))
    return out


def task_example_importances(
    explainers: Mapping[str, Mapping[str, ExampleImportance]],
    train_x: Tensor,
    test_x: Tensor,
    train_y: Tensor | None = None,
    test_y: Tensor | None = None,
    uses_labels: Mapping[str, bool] | None = None,
) -> Explanations:
    """Example importance ``[n_test, n_train]`` of each task's explainers (task -> method -> explainer).

    Labels are handed to a task's explainers only when ``uses_labels[task]`` (a supervised model whose
    own loss needs them, for loss-based explainers). Returns method -> task.
    """
    out: Explanations = {}
    for task, by_method in tqdm(explainers.items(), desc="example importance", leave=False):
        labels = bool((uses_labels or {}).get(task, False))
        for method, explainer in by_method.items():
            explainer.fit(train_x, train_y if labels else None)
            out.setdefault(method, {})[task] = explainer.attribute(test_x, test_y if labels else None)
    return out


def showcase_indices(labels: Tensor, n: int) -> Tensor:
    """Indices of ``n`` examples to show: the first example of each class (classes ascending), then the next ones."""
    if n < 1 or n > len(labels):
        raise ValueError(f"the number of images shown must be in [1, {len(labels)}], got {n}")
    firsts = [int(torch.nonzero(labels == c)[0]) for c in sorted(set(labels.tolist()))]
    chosen = set(firsts)
    rest = [i for i in range(len(labels)) if i not in chosen]
    return torch.tensor((firsts + rest)[:n], dtype=torch.long)


def top_examples(scores: Tensor, k: int) -> Tensor:
    """Indices ``[n_test, k]`` of the ``k`` highest-scored training examples of each row of ``scores [n_test, n_train]``."""
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"the number of top examples must be in [1, {scores.shape[1]}], got {k}")
    return scores.topk(k, dim=1).indices


# ------------------------------------------------------------------------------------------ runner
def _task_models(cfg: DictConfig) -> dict[str, DictConfig]:
    """Task -> model config node (``protocol.models``), checking the tasks can be told apart in the cache."""
    models = dict(cfg.protocol.models)
    if len(models) < 2:
        raise ValueError(f"protocol.models must name at least 2 pretext tasks, got {list(models)}")
    tags = [m.get("pretext") or m.name for m in models.values()]
    if len(set(tags)) != len(tags):
        raise ValueError(
            f"protocol.models must have distinct `pretext` tags (they name the cached models), got {dict(zip(models, tags))}"
        )
    for kind in KINDS:
        if not cfg.protocol[kind].explainers:
            raise ValueError(f"protocol.{kind}.explainers is empty; name at least one {kind[:-1]} explainer")
    return models


def _device(trained: Mapping[str, Trained]) -> torch.device:
    return next(next(iter(trained.values())).model.parameters()).device


def run_pretext(cfg: DictConfig, bench: Workbench, run_dir: Path, tracker: CSVTracker) -> dict[str, Any]:
    """Train or load the model of every pretext task (``protocol.models``), explain them label-free, write the
    correlation table ``pretext_correlations.csv`` with its heatmaps, and the saliency and top-example figures."""
    protocol, seed = cfg.protocol, int(cfg.seed)
    start = time.perf_counter()
    models = _task_models(cfg)
    by_features = {task: bench.get("features", m) for task, m in models.items()}
    by_examples = {task: bench.get("examples", m) for task, m in models.items()}
    summary: dict[str, Any] = {"tasks": list(models), "models_seconds": time.perf_counter() - start}

    # feature importance on the test images
    start = time.perf_counter()
    seed_everything(seed)  # the same draws whether the models were trained now or loaded
    data = next(iter(by_features.values())).data
    test_x = data.test_x
    if protocol.features.n_test is not None:
        order = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(seed))
        test_x = test_x[order[: int(protocol.features.n_test)]]
    feature_names = list(protocol.features.explainers)
    explainers, kwargs = {}, {}
    for task, trained in by_features.items():  # (the keyword arguments are the same for every task)
        explainers[task], kwargs = build_feature_explainers(cfg, feature_names, trained.model.encoder)
    batch = int(protocol.features.batch_size)
    saliency = task_feature_importances(explainers, kwargs, test_x, data.baseline, batch, _device(by_features))
    summary["features_seconds"] = time.perf_counter() - start

    # example importance of a balanced training subset for the (balanced subset of the) test images
    start = time.perf_counter()
    seed_everything(seed)
    ex_data = next(iter(by_examples.values())).data
    train_idx = _subset(ex_data.train_y, protocol.examples.train_per_class, seed)
    test_idx = _subset(ex_data.test_y, protocol.examples.test_per_class, seed)
    train_x, train_y = ex_data.train_x[train_idx], ex_data.train_y[train_idx]
    ex_test_x, ex_test_y = ex_data.test_x[test_idx], ex_data.test_y[test_idx]
    example_names = list(protocol.examples.explainers)
    example_explainers = {
        task: build_example_explainers(cfg, example_names, t.model, t.checkpoints) for task, t in by_examples.items()
    }
    scores = task_example_importances(
        example_explainers, train_x, ex_test_x, train_y, ex_test_y,
        uses_labels={task: t.model.uses_labels for task, t in by_examples.items()},
    )
    summary["examples_seconds"] = time.perf_counter() - start

    frame = identify(cfg, data, pretext_correlations(saliency, scores))
    # the models differ by task (task_a, task_b); `model` names their shared architecture
    frame["model"] = "+".join(dict.fromkeys(str(m.get("architecture") or m.name) for m in models.values()))
    title = f"{data.name}: explanations across pretext tasks (seed {seed})"
    write_check(TABLE, frame, plot_pretext_correlations(frame, title), run_dir, tracker)
    for row in off_diagonal_means(frame).itertuples(index=False):
        summary[f"{row.kind}_{row.method}_{row.metric}_mean_off_diagonal"] = row.value

    # figures: the same test images across tasks, their saliency and their top training examples
    figures = protocol.figures
    shown = showcase_indices(ex_test_y, int(figures.n_images))
    images = ex_test_x[shown]
    seed_everything(seed)
    first_feature = feature_names[0]
    shown_saliency = task_feature_importances(
        {task: {first_feature: e[first_feature]} for task, e in explainers.items()}, kwargs, images,
        ex_data.baseline, batch, _device(by_features),
    )[first_feature]
    first_example = example_names[0]
    top = {task: train_x[top_examples(s[shown], int(figures.n_top))] for task, s in scores[first_example].items()}
    for name, fig in (
        ("pretext_saliency", plot_pretext_saliency(images, shown_saliency, f"{data.name}: |{first_feature}| by pretext task (seed {seed})")),
        ("pretext_top_examples", plot_pretext_top_examples(images, top, f"{data.name}: top {first_example} examples by pretext task (seed {seed})")),
    ):
        tracker.log_figure(name, save_figure(fig, run_dir / name)[0])
    summary.update({"n_test_features": len(test_x), "n_train_examples": len(train_x), "n_test_examples": len(ex_test_x)})
    return summary
