"""Study: pretext-task sensitivity on MNIST (Crabbé & van der Schaar, 2022, "Pretext"; ``protocol=pretext``).

Aggregated outputs under ``<results>/<experiment>/<scale>/``:

* ``pretext_correlations_runs.csv``: every run's rows; ``pretext_correlations_mean_std.csv``: mean, std and
  number of seeds per (kind, method, metric, task pair);
* ``pretext_<kind>_<method>_<metric>.{csv,md,tex}``: the task x task matrix of ``mean +/- std`` across seeds;
* ``pretext_pairs.{csv,md,tex}``: one row per pair of distinct tasks, the feature and the example
  correlations side by side;
* ``pretext_correlations.{png,pdf}``: the heatmaps; ``pretext_saliency`` and ``pretext_top_examples``
  figures copied from the run of the lowest seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from experiments import aggregation as agg
from experiments.claims import Claim, Inequality, claim_from, figure_link, fmt, mean_by, paired, read_table
from experiments.explainers import build_example_explainers, build_feature_explainers
from experiments.studies.consistency import class_subset
from experiments.study import Study, StudyResult, identify
from experiments.workbench import Workbench
from labelfree.data.subsets import random_subset
from labelfree.io import save_csv, save_json
from labelfree.modules import module_device
from labelfree.plots import LABELS, dataset_label, plot_pretext_correlations, plot_pretext_saliency, plot_pretext_top_examples, save_figure
from labelfree.protocols.pretext import (
    KINDS,
    TABLE,
    off_diagonal_means,
    pretext_correlations,
    showcase_indices,
    task_example_importances,
    task_feature_importances,
    top_examples,
)

log = logging.getLogger(__name__)

PREFIX = "pretext_"
RUN_FIGURES = ("pretext_saliency", "pretext_top_examples")
KEYS = ["kind", "method", "metric", "task_a", "task_b"]
DIGITS = 2  # decimals of the mean +/- std cells


def task_models(cfg: DictConfig) -> dict[str, DictConfig]:
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


def run(cfg: DictConfig, bench: Workbench) -> StudyResult:
    """Train or load the model of every pretext task (``protocol.models``), explain them label-free, and
    return the correlation table with its heatmaps, and the saliency and top-example figures."""
    protocol, seed = cfg.protocol, int(cfg.seed)
    start = time.perf_counter()
    models = task_models(cfg)
    by_features = {task: bench.get("features", m) for task, m in models.items()}
    by_examples = {task: bench.get("examples", m) for task, m in models.items()}
    summary: dict[str, Any] = {"tasks": list(models), "models_seconds": time.perf_counter() - start}
    device = module_device(next(iter(by_features.values())).model)

    # feature importance on the test images
    start = time.perf_counter()
    bench.reseed()
    data = next(iter(by_features.values())).data
    test_x = data.test_x[random_subset(len(data.test_x), protocol.features.n_test, seed)]
    feature_names = list(protocol.features.explainers)
    explainers, kwargs = {}, {}
    for task, trained in by_features.items():  # (the keyword arguments are the same for every task)
        explainers[task], kwargs = build_feature_explainers(cfg, feature_names, trained.model.encoder)
    batch = int(protocol.features.batch_size)
    saliency = task_feature_importances(explainers, kwargs, test_x, data.baseline, batch, device)
    summary["features_seconds"] = time.perf_counter() - start

    # example importance of a balanced training subset for the (balanced subset of the) test images
    start = time.perf_counter()
    bench.reseed()
    ex_data = next(iter(by_examples.values())).data
    train_idx = class_subset(ex_data.train_y, protocol.examples.train_per_class, seed)
    test_idx = class_subset(ex_data.test_y, protocol.examples.test_per_class, seed)
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
    result = StudyResult(tables={TABLE: frame}, summary=summary)
    result.figures[TABLE] = plot_pretext_correlations(
        frame, f"{dataset_label(data.name)}: how explanations correlate across pretext tasks (seed {seed})")
    for row in off_diagonal_means(frame).itertuples(index=False):
        summary[f"{row.kind}_{row.method}_{row.metric}_mean_off_diagonal"] = row.value

    # figures: the same test images across tasks, their saliency and their top training examples
    shown = showcase_indices(ex_test_y, int(protocol.figures.n_images))
    images = ex_test_x[shown]
    bench.reseed()
    first_feature, first_example = feature_names[0], example_names[0]
    shown_saliency = task_feature_importances(
        {task: {first_feature: e[first_feature]} for task, e in explainers.items()}, kwargs, images,
        ex_data.baseline, batch, device,
    )[first_feature]
    top = {task: train_x[top_examples(s[shown], int(protocol.figures.n_top))] for task, s in scores[first_example].items()}
    result.figures["pretext_saliency"] = plot_pretext_saliency(
        images, shown_saliency, f"{dataset_label(data.name)}: saliency (|{LABELS.get(first_feature, first_feature)}|) by pretext task "
        f"(seed {seed})")
    result.figures["pretext_top_examples"] = plot_pretext_top_examples(
        images, top, f"{dataset_label(data.name)}: the most important training examples "
        f"({LABELS.get(first_example, first_example)}) by pretext task (seed {seed})")
    summary.update({"n_test_features": len(test_x), "n_train_examples": len(train_x), "n_test_examples": len(ex_test_x)})
    return result


# -------------------------------------------------------------------------------------- aggregation
def _tasks(frame: pd.DataFrame) -> list[str]:
    """The tasks in the order the runs list them (the protocol's order)."""
    return list(dict.fromkeys(frame["task_a"]))


def matrix_tables(stats: pd.DataFrame, tasks: Sequence[str]) -> dict[tuple[str, str, str], pd.DataFrame]:
    """(kind, method, metric) -> a task x task table of ``mean +/- std`` cells (first column: ``task``)."""
    tables = {}
    for (kind, method, metric), part in stats.groupby(["kind", "method", "metric"], sort=False):
        cells = part.assign(cell=[agg.format_mean_std(m, s, DIGITS) for m, s in zip(part["mean"], part["std"])])
        wide = cells.pivot(index="task_a", columns="task_b", values="cell").reindex(index=tasks, columns=list(tasks))
        tables[(str(kind), str(method), str(metric))] = wide.rename_axis(index="task", columns=None).reset_index()
    return tables


def distinct_pairs(stats: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """The rows of unordered pairs of distinct tasks (task_a before task_b), in the tasks' order."""
    rank = {task: i for i, task in enumerate(tasks)}
    a, b = stats["task_a"].map(rank), stats["task_b"].map(rank)
    return stats.assign(_a=a, _b=b)[a < b].sort_values(["_a", "_b"], kind="stable").drop(columns=["_a", "_b"])


def pairs_table(stats: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """One row per unordered pair of distinct tasks; one ``mean +/- std`` column per (kind, method, metric),
    feature columns first, then the number of seeds."""
    pairs = distinct_pairs(stats, tasks)
    pairs = pairs.assign(
        pair=[f"{a} / {b}" for a, b in zip(pairs["task_a"], pairs["task_b"])],
        column=[f"{k} {m} {c}" for k, m, c in zip(pairs["kind"], pairs["method"], pairs["metric"])],
        cell=[agg.format_mean_std(m, s, DIGITS) for m, s in zip(pairs["mean"], pairs["std"])],
    )
    order = list(dict.fromkeys(pairs.sort_values(["metric", "kind"], ascending=[True, False], kind="stable")["column"]))
    wide = pairs.pivot(index="pair", columns="column", values="cell")
    wide = wide.reindex(index=list(dict.fromkeys(pairs["pair"])), columns=order)
    wide["seeds"] = pairs.groupby("pair")["n"].max()
    return wide.rename_axis(columns=None).reset_index()


def write_tables(frame: pd.DataFrame, out: Path) -> list[Path]:
    """From one experiment's stacked rows: the mean/std table, the task matrices, the pairs and the heatmaps."""
    tasks, seeds = _tasks(frame), sorted(int(s) for s in frame["seed"].unique())
    stats = agg.mean_std(frame, KEYS)
    files = [save_csv(stats, out / f"{TABLE}_mean_std.csv")]
    for (kind, method, metric), table in matrix_tables(stats, tasks).items():
        numbers = stats[(stats["kind"] == kind) & (stats["method"] == method) & (stats["metric"] == metric)]
        files += agg.write_table(numbers, out / f"{PREFIX}{kind}_{method}_{metric}", display=table)
    files += agg.write_table(distinct_pairs(stats, tasks), out / f"{PREFIX}pairs", display=pairs_table(stats, tasks))
    title = (f"{dataset_label(frame['dataset'].iloc[0])}: how explanations correlate across pretext tasks "
             f"({len(seeds)} seed{'s' * (len(seeds) > 1)})")
    return files + save_figure(plot_pretext_correlations(frame, title), out / TABLE)


def redraw(results: Path, scale: str) -> list[Path]:
    """The tables and heatmaps drawn again from the kept ``pretext_correlations_runs.csv``."""
    return [f for path in sorted(results.glob(f"*/{scale}/{TABLE}_runs.csv"))
            for f in write_tables(pd.read_csv(path), path.parent)]


def aggregate(runs: Sequence[Path], results: Path, scale: str) -> list[Path]:
    """Every table and figure of the pretext study, per pretext experiment, from the finished runs."""
    found = agg.collect(runs, TABLE, scale=scale, study="pretext")
    written: list[Path] = []
    if found.frame.empty:
        return written
    agg.check_one_config(found, ["experiment"], TABLE)
    record = found.record(agg.expected_seeds(runs, scale))
    for experiment, part in found.frame.groupby("experiment", sort=True):
        out = results / str(experiment) / scale
        frame = part
        tasks, seeds = _tasks(frame), sorted(int(s) for s in frame["seed"].unique())
        files = [save_csv(frame, out / f"{TABLE}_runs.csv"),
                 save_json(agg.for_experiment(record, str(experiment), part), out / f"{TABLE}_runs.json"),
                 *write_tables(frame, out)]
        first = Path(part.loc[part["seed"] == seeds[0], "run_dir"].iloc[0])
        for name in RUN_FIGURES:
            for suffix in (".png", ".pdf"):
                source = first / f"{name}{suffix}"
                if source.exists():
                    files.append(agg.copy_file(source, out / f"{name}_seed{seeds[0]}{suffix}"))
        agg.remove_stale(out, PREFIX, files)
        log.info("%s: %d runs (seeds %s), %d skipped", experiment, part["run_dir"].nunique(), seeds, len(found.skipped))
        written += files
    return written


# ------------------------------------------------------------------------------------------- claims
def _pair_means(frame: pd.DataFrame, kind: str, method: str, metric: str, pairs: Sequence[tuple[str, str]]) -> pd.Series:
    """Per seed, the mean correlation over ``pairs`` of tasks of one kind of explanation."""
    rows = frame[(frame["kind"] == kind) & (frame["method"] == method) & (frame["metric"] == metric)]
    keys = set(pairs)
    rows = rows[[(a, b) in keys for a, b in zip(rows["task_a"], rows["task_b"])]]
    return rows.groupby("seed")["value"].mean()


def _difference(label: str, left: pd.Series, right: pd.Series) -> Inequality:
    common = left.index.intersection(right.index)
    return Inequality(label, {int(s): float(left[s] - right[s]) for s in common})


def pretext_claim(frame: pd.DataFrame | None, rules: Mapping[str, Any]) -> Claim:
    """Explanations depend on the pretext task: for every pair of tasks the saliency maps correlate more than
    the example importances; saliency maps correlate moderately and example importances weakly (the bands of
    ``rules.bands``, over all pairs); on examples the classifier differs most from the autoencoders.

    ``frame``: ``pretext_correlations_runs.csv`` (one row per seed, kind, method, metric and ordered pair).
    """
    feature_method, example_method, metric = rules["feature_method"], rules["example_method"], rules["metric"]
    bands, supervised = rules["bands"], rules["supervised_task"]
    name = "Pretext sensitivity, MNIST"
    paper = ("explanations depend on the pretext task: saliency maps correlate only moderately across tasks "
             f"(feature {metric} in [{bands['moderate'][0]:g}, {bands['moderate'][1]:g})), example importances weakly "
             f"(below {bands['weak']:g}); feature above example correlation for every pair of tasks; on examples the "
             f"{supervised} encoder differs most from the autoencoders")
    if frame is None or frame.empty:
        return Claim(name, paper, "-")
    frame = frame[(frame["metric"] == metric) & (
        ((frame["kind"] == "features") & (frame["method"] == feature_method))
        | ((frame["kind"] == "examples") & (frame["method"] == example_method)))]
    tasks = _tasks(frame)
    pairs = [(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1:]]
    inequalities, missing = [], []
    for a, b in pairs:
        q = paired(frame, {"kind": "features", "method": feature_method, "metric": metric, "task_a": a, "task_b": b},
                   {"kind": "examples", "method": example_method, "metric": metric, "task_a": a, "task_b": b},
                   f"features > examples, {a}/{b}")
        (inequalities.append(q) if q is not None and q.differences else missing.append(f"{a}/{b}"))
    features = _pair_means(frame, "features", feature_method, metric, pairs)
    examples = _pair_means(frame, "examples", example_method, metric, pairs)
    low, high = (float(v) for v in bands["moderate"])
    inequalities += [
        Inequality("features at least moderate", {int(s): float(v - low) for s, v in features.items()}),
        Inequality("features below strong", {int(s): float(high - v) for s, v in features.items()}),
        Inequality("examples weak", {int(s): float(float(bands["weak"]) - v) for s, v in examples.items()}),
    ]
    parts = [f"mean over pairs: features {fmt(features.mean())}, examples {fmt(examples.mean())}" if len(features) else "-"]
    if supervised in tasks:
        autoencoders = [(a, b) for a, b in pairs if supervised not in (a, b)]
        mixed = [(a, b) for a, b in pairs if supervised in (a, b)]
        among = _pair_means(frame, "examples", example_method, metric, autoencoders)
        against = _pair_means(frame, "examples", example_method, metric, mixed)
        inequalities.append(_difference(f"examples: autoencoders agree more than with the {supervised} encoder",
                                        among, against))
        parts.append(f"examples among autoencoders {fmt(among.mean())} vs with {supervised} {fmt(against.mean())}")
    else:
        missing.append(f"task {supervised}")
    means = mean_by(frame, ["kind", "task_a", "task_b"])
    parts.append("per pair (features vs examples): " + "; ".join(
        f"{a[:3]}/{b[:3]} {fmt(means[('features', a, b)])} vs {fmt(means[('examples', a, b)])}"
        for a, b in pairs if ("features", a, b) in means and ("examples", a, b) in means))
    return claim_from(name, paper, "; ".join(parts), inequalities, rules, missing)


def claims(results: Path, scale: str, rules: Mapping[str, Any]) -> list[Claim]:
    folder = results / str(rules["experiment"]) / scale
    claim = pretext_claim(read_table(folder / f"{TABLE}_runs.csv"), rules)
    claim.figure = figure_link(folder / f"{TABLE}.png", results)
    return [claim]


STUDY = Study("pretext", "Pretext-task sensitivity", (TABLE,), run, aggregate, claims, figures=RUN_FIGURES,
              redraw=redraw)
