"""Study: consistency of label-free feature and example importance (PAPER.md section 2), on MNIST,
ECG5000 and CIFAR-10 (``protocol=consistency``)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.aggregation import aggregate_levels
from experiments.claims import Claim, figure_link, lookup, read_table, seed_means
from experiments.explainers import build_example_explainers, build_feature_explainers
from experiments.study import Study, StudyResult, identify
from experiments.workbench import Workbench
from labelfree.data.subsets import balanced_subset, random_subset
from labelfree.plots import plot_representation_shift, plot_similarity_rates
from labelfree.protocols.consistency import consistency_examples, consistency_features

FEATURES, EXAMPLES = "consistency_features", "consistency_examples"


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
        result.figures[FEATURES] = plot_representation_shift(frame, f"{data.name}: feature importance (seed {seed})")
        result.summary["features_seconds"] = time.perf_counter() - start
    if protocol.examples.enabled:
        start = time.perf_counter()
        trained = bench.get("examples")
        bench.reseed()
        data, model = trained.data, trained.model
        train_idx = class_subset(data.train_y, protocol.examples.train_per_class, seed)
        test_idx = class_subset(data.test_y, protocol.examples.test_per_class, seed)
        explainers = build_example_explainers(cfg, list(protocol.examples.explainers), model, trained.checkpoints)
        frame, seconds = consistency_examples(
            explainers, data.train_x[train_idx], data.train_y[train_idx], data.test_x[test_idx], data.test_y[test_idx],
            list(protocol.examples.percents), fit_labels=model.uses_labels,
        )
        frame = identify(cfg, data, frame)
        result.tables[EXAMPLES] = frame
        result.figures[EXAMPLES] = plot_similarity_rates(frame, f"{data.name}: example importance (seed {seed})")
        result.summary["examples_seconds"] = time.perf_counter() - start
        result.summary["example_explainer_seconds"] = seconds
    return result


def aggregate(runs: Sequence[Path], results: Path, scale: str) -> list[Path]:
    """Per consistency experiment: every run's rows, the mean +/- std table across seeds and the figure."""
    return aggregate_levels(runs, results, scale, "consistency",
                            {FEATURES: plot_representation_shift, EXAMPLES: plot_similarity_rates})


# ------------------------------------------------------------------------------------------- claims
def feature_consistency(frame, dataset: str, rules: Mapping[str, Any]) -> Claim:
    """The explainers of ``rules.methods`` shift the representation more than ``rules.random`` at ``rules.levels``."""
    name = f"Feature consistency, {rules['datasets'][dataset]}"
    levels, random_name = [float(p) for p in rules["levels"]], rules["random"]
    paper = (f"masking the top p% features ({', '.join(rules['methods'])}) shifts the representation more than "
             f"random masking, p = {', '.join(f'{p:g}' for p in levels)}")
    if frame is None or frame.empty:
        return Claim(name, paper, "-", None)
    means = seed_means(frame[frame["metric"] == "representation_shift"]).set_index(["method", "level"])["value"]
    random = lookup(means, [(random_name, p) for p in levels])
    parts, holds = [], True
    for method in rules["methods"]:
        values = lookup(means, [(method, p) for p in levels])
        if values is None or random is None:
            continue
        holds &= all(v > r for v, r in zip(values, random))
        parts.append(f"{method}: " + ", ".join(f"{v / r:.1f}x" if r > 0 else "inf" for v, r in zip(values, random)) + " random")
    if not parts:
        return Claim(name, paper, "the explainers or Random not measured at every p", None)
    return Claim(name, paper, "; ".join(parts), holds)


def example_consistency(frame, dataset: str, rules: Mapping[str, Any]) -> Claim:
    """The most important examples share the test label more often than the least important, at ``rules.level``."""
    name = f"Example consistency, {rules['datasets'][dataset]}"
    level = float(rules["level"])
    paper = (f"the M = {level:g}% most important training examples share the test example's label more often "
             "than the least important")
    if frame is None or frame.empty:
        return Claim(name, paper, "-", None)
    means = seed_means(frame[frame["level"] == level]).set_index(["method", "metric"])["value"]
    parts, holds = [], True
    for method in [m for m in dict.fromkeys(frame["method"]) if m != rules["random"]]:
        values = lookup(means, [(method, "similarity_most"), (method, "similarity_least")])
        if values is None:
            continue
        holds &= values[0] > values[1]
        parts.append(f"{method}: {values[0]:.2f} vs {values[1]:.2f}")
    if not parts:
        return Claim(name, paper, f"not measured at M = {level:g}%", None)
    return Claim(name, paper, "; ".join(parts), holds)


def claims(results: Path, scale: str, rules: Mapping[str, Any]) -> list[Claim]:
    """Feature and example consistency on every dataset of ``rules.datasets``."""
    out = []
    for dataset in rules["datasets"]:
        folder = results / f"{dataset}_consistency" / scale
        for table, check, node in ((FEATURES, feature_consistency, rules["features"]),
                                   (EXAMPLES, example_consistency, rules["examples"])):
            claim = check(read_table(folder / f"{table}_runs.csv"), dataset, {**node, "datasets": rules["datasets"]})
            claim.figure = figure_link(folder / f"{table}.png", results)
            out.append(claim)
    return out


STUDY = Study(
    name="consistency",
    title="Consistency of label-free feature and example importance",
    tables=(FEATURES, EXAMPLES),
    run=run,
    aggregate=aggregate,
    claims=claims,
)
