"""Protocol: pretext-task sensitivity (Crabbé & van der Schaar, 2022, "Pretext").

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
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
import torch
from captum.attr import Attribution
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.attribution.batched import BatchedAttribution
from labelfree.attribution.examples import ExampleImportance
from labelfree.data.splits import Baseline
from labelfree.guards import check_finite
from labelfree.metrics import pearson_matrix, spearman_matrix

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
    # level is NaN by design; a constant explanation gives NaN correlations (correlation_table)
    return check_finite("pretext_correlations", pd.concat(frames, ignore_index=True), allow_nan=("level", "value"))


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
    for task, by_method in explainers.items():
        for method, explainer in by_method.items():
            batched = BatchedAttribution(explainer, baseline, attribute_kwargs.get(method, {}), batch_size, device)
            out.setdefault(method, {})[task] = batched.all(x, absolute=True, desc=f"features {task} {method}")
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
            out.setdefault(method, {})[task] = check_finite(f"example importance by {method} for {task}",
                                                            explainer.attribute(test_x, test_y if labels else None))
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
