"""Study: consistency of label-free feature and example importance (Crabbé & van der Schaar, 2022), on MNIST,
ECG5000 and CIFAR-10 (``protocol=consistency``)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from experiments.aggregation import aggregate_levels, redraw_levels
from experiments.claims import (
    Claim,
    claim_from,
    compare_methods,
    figure_link,
    fmt,
    mean_by,
    paired,
    read_table,
    resolve_methods,
)
from experiments.explainers import build_example_explainers, build_feature_explainers
from experiments.shards import write_example_shard
from experiments.study import Study, StudyResult, identify, identity
from experiments.workbench import Workbench
from labelfree.data.subsets import balanced_subset, random_subset
from labelfree.plots import dataset_label, plot_representation_shift, plot_similarity_rates
from labelfree.protocols.consistency import consistency_examples, consistency_features

FEATURES, EXAMPLES = "consistency_features", "consistency_examples"
METRIC_SHIFT = "representation_shift"


def class_subset(labels, per_class: int | None, seed: int):
    """A class-balanced subset of ``per_class`` examples per label; every example when ``per_class`` is None."""
    return random_subset(len(labels), None, seed) if per_class is None else balanced_subset(labels, int(per_class), seed)


def run(cfg: DictConfig, bench: Workbench) -> StudyResult:
    """Both consistency checks, each when enabled (``protocol.features``, ``protocol.examples``)."""
    protocol, seed, result = cfg.protocol, int(cfg.seed), StudyResult()
    if protocol.features.enabled:
        start = time.perf_counter()
        trained = bench.get("features")
        bench.reseed()
        data, encoder = trained.data, trained.model.encoder
        test_x = data.test_x[random_subset(len(data.test_x), protocol.features.n_test, seed)]
        explainers, kwargs = build_feature_explainers(cfg, list(protocol.features.explainers), encoder)
        frame = consistency_features(
            encoder, test_x, data.baseline, explainers, kwargs, list(protocol.features.percents),
            channel_dim=data.channel_dim, batch_size=int(protocol.features.batch_size),
        )
        frame = identify(cfg, data, frame)
        result.tables[FEATURES] = frame
        result.figures[FEATURES] = plot_representation_shift(
            frame, f"{dataset_label(data.name)}: consistency of feature importance (seed {seed})")
        result.summary["features_seconds"] = time.perf_counter() - start
    if protocol.examples.enabled:
        start = time.perf_counter()
        trained = bench.get("examples")
        bench.reseed()
        data, model = trained.data, trained.model
        train_idx = class_subset(data.train_y, protocol.examples.train_per_class, seed)
        test_idx = class_subset(data.test_y, protocol.examples.test_per_class, seed)
        explainers = build_example_explainers(cfg, list(protocol.examples.explainers), model, trained.checkpoints)
        shard = protocol.examples.get("shard")
        if shard is not None and int(shard.count) > 1:  # this job's score blocks; experiments.shards merges them
            result.summary["examples_shard"] = write_example_shard(
                shard, explainers, data.train_x[train_idx], data.train_y[train_idx], data.test_x[test_idx],
                data.test_y[test_idx], list(protocol.examples.percents), model.uses_labels, identity(cfg, data))
            result.summary["examples_seconds"] = time.perf_counter() - start
            return result
        example_check(cfg, trained, explainers, train_idx, test_idx, result, start,
                      f"{dataset_label(data.name)}: consistency of example importance (seed {seed})")
    return result


def example_check(cfg: DictConfig, trained: Any, explainers: Mapping[str, Any], train_idx: Any, test_idx: Any,
                  result: StudyResult, start: float, title: str, table: str = EXAMPLES) -> None:
    """Similarity rates of ``explainers`` on the training and test subsets ``train_idx``, ``test_idx`` of
    ``trained.data``: the table ``table``, its figure (``title``) and the seconds into ``result`` (the example check of
    every consistency study: images, time series, texts, nodes)."""
    data, model = trained.data, trained.model
    frame, seconds = consistency_examples(
        explainers, data.train_x[train_idx], data.train_y[train_idx], data.test_x[test_idx], data.test_y[test_idx],
        list(cfg.protocol.examples.percents), fit_labels=model.uses_labels,
    )
    frame = identify(cfg, data, frame)
    result.tables[table] = frame
    result.figures[table] = plot_similarity_rates(frame, title)
    result.summary["examples_seconds"] = time.perf_counter() - start
    result.summary["example_explainer_seconds"] = seconds


PLOTS = {FEATURES: plot_representation_shift, EXAMPLES: plot_similarity_rates}


def aggregate(runs: Sequence[Path], results: Path, scale: str) -> list[Path]:
    """Per consistency experiment: every run's rows, the mean +/- std table across seeds and the figure."""
    return aggregate_levels(runs, results, scale, "consistency", PLOTS)


def redraw(results: Path, scale: str) -> list[Path]:
    """The tables and figures drawn again from the kept ``*_runs.csv``."""
    return redraw_levels(results, scale, PLOTS)


# ------------------------------------------------------------------------------------------- claims
def feature_consistency(frame: pd.DataFrame | None, dataset: str, rules: Mapping[str, Any]) -> Claim:
    """Masking the top p % features by each named explainer shifts the representation more than random
    masking, at every p of ``rules.levels``; the order of the methods and the equal shift at 100 % beside it."""
    node = rules["features"]
    levels, random_name = [float(p) for p in node["levels"]], node["random"]
    methods = resolve_methods(frame, node["methods"])
    name = f"Feature consistency, {rules['datasets'][dataset]}"
    paper = (f"masking the top p% features ({', '.join(methods)}) shifts the representation more than masking "
             f"random ones, p = {', '.join(f'{p:g}' for p in levels)}")
    if frame is None or frame.empty:
        return Claim(name, paper, "-")
    frame = frame[frame["metric"] == METRIC_SHIFT]
    inequalities, missing = compare_methods(frame, METRIC_SHIFT, methods, random_name, levels)
    means = mean_by(frame, ["method", "level"])
    parts = []
    for method in methods:
        ratios = [means.get((method, p)) / means.get((random_name, p)) for p in levels
                  if (method, p) in means and (random_name, p) in means and means.get((random_name, p)) > 0]
        if ratios:
            parts.append(f"{method} {fmt(min(ratios))}-{fmt(max(ratios))}x random")
    measured = frame[frame["level"].isin(levels)]
    order = measured.groupby("method")["value"].mean().sort_values(ascending=False)
    parts.append("order (mean shift over p): " + " > ".join(order.index))
    full = frame[frame["level"] == float(node["full_level"])]
    if len(full):
        # every method masks everything: equal within a seed (each seed has its own model, so not across seeds)
        groups = full.groupby("seed")["value"] if "seed" in full else [(None, full["value"])]
        spread = max(float(v.max() - v.min()) / max(abs(float(v.mean())), 1e-12) for _, v in groups)
        parts.append(f"equal at {float(node['full_level']):g} %: {'yes' if spread <= float(node['equal_rtol']) else 'NO'}"
                     f" (relative spread {spread:.1e})")
    return claim_from(name, paper, "; ".join(parts), inequalities, rules, missing)


def example_consistency(frame: pd.DataFrame | None, dataset: str, rules: Mapping[str, Any],
                        candidates: str = "") -> Claim:
    """The M most important examples share the test label more often than the M least important, for every
    named explainer and every M of ``rules.levels``; the base rate at M = 100 % beside it. ``candidates`` names
    the training examples ranked when they are not the paper's subset (e.g. "every training image")."""
    node = rules["examples"]
    levels = [float(m) for m in node["levels"]]
    methods = resolve_methods(frame, node["methods"][dataset])
    name = f"Example consistency, {rules['datasets'][dataset]}" + (f", {candidates}" if candidates else "")
    paper = (f"the M most important training examples ({', '.join(methods)}) share the test example's label more "
             f"often than the M least important, M = {', '.join(f'{m:g}' for m in levels)} %")
    if frame is None or frame.empty:
        return Claim(name, paper, "-")
    inequalities, missing = [], []
    for method in methods:
        for level in levels:
            q = paired(frame, {"method": method, "metric": "similarity_most", "level": level},
                       {"method": method, "metric": "similarity_least", "level": level}, f"{method} @ {level:g}")
            (inequalities.append(q) if q is not None and q.differences else missing.append(f"{method} @ {level:g}"))
    means = mean_by(frame, ["method", "metric", "level"])
    first = levels[0]
    parts = [f"{m} at M={first:g}%: {fmt(means[(m, 'similarity_most', first)])} vs "
             f"{fmt(means[(m, 'similarity_least', first)])}" for m in methods
             if (m, "similarity_most", first) in means and (m, "similarity_least", first) in means]
    full = frame[frame["level"] == float(node["full_level"])]["value"]
    if len(full):
        parts.append(f"base rate at M={float(node['full_level']):g}%: {fmt(full.min())}-{fmt(full.max())}")
    return claim_from(name, paper, "; ".join(parts), inequalities, rules, missing)


def claims(results: Path, scale: str, rules: Mapping[str, Any]) -> list[Claim]:
    """Feature and example consistency on every dataset of ``rules.datasets``, then example consistency with the
    whole training split as candidates where ``rules.whole_training_split`` names an experiment for it."""
    out = []
    for dataset in rules["datasets"]:
        folder = results / f"{dataset}_consistency" / scale
        for table, check in ((FEATURES, feature_consistency), (EXAMPLES, example_consistency)):
            claim = check(read_table(folder / f"{table}_runs.csv"), dataset, rules)
            claim.figure = figure_link(folder / f"{table}.png", results)
            out.append(claim)
    for dataset, node in rules.get("whole_training_split", {}).items():  # issue 18: every training example competes
        folder = results / str(node["experiment"]) / scale
        claim = example_consistency(read_table(folder / f"{EXAMPLES}_runs.csv"), dataset, rules, str(node["candidates"]))
        claim.figure = figure_link(folder / f"{EXAMPLES}.png", results)
        out.append(claim)
    return out


STUDY = Study("consistency", "Consistency of label-free feature and example importance", (FEATURES, EXAMPLES), run,
              aggregate, claims, redraw=redraw)
