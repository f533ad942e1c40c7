"""Study: consistency of label-free feature and example importance on texts (AG News, a GRU autoencoder of token
ids; ``protocol=text_consistency``, ``protocol.name=text``). docs/agnews.md explains the study and its choices.

* Features: tokens are explained through the encoder's embedding layer (Integrated Gradients, Gradient Shap,
  against Random); the top p % of each text's tokens are replaced by the baseline token and the representation
  shift is measured (:func:`labelfree.protocols.text.token_consistency`).
* Examples: the four example explainers on token ids, similarity rates by topic
  (:func:`labelfree.protocols.consistency.consistency_examples`, as on images).
* Figures: the shift curves, the similarity-rate curves and one explained text's tokens coloured by importance.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from experiments.aggregation import aggregate_levels, collect, expected_seeds, for_experiment, redraw_levels
from experiments.claims import Claim, figure_link, read_table
from experiments.config import container
from experiments.explainers import build_example_explainers, explainer_settings
from experiments.studies.consistency import (
    PLOTS,
    class_subset,
    example_check,
    example_consistency,
    feature_consistency,
)
from experiments.study import Study, StudyResult, identify
from experiments.workbench import Workbench
from labelfree.attribution.tokens import TOKEN_METHODS, TokenAttribution
from labelfree.data.ag_news import AG_NEWS_CLASSES
from labelfree.data.subsets import random_subset
from labelfree.data.text import PAD_ID, SPECIAL_TOKENS
from labelfree.io import save_csv, save_json
from labelfree.plots import dataset_label, plot_representation_shift, save_figure
from labelfree.plots_text import plot_token_highlight
from labelfree.protocols.text import token_consistency

FEATURES, EXAMPLES, HIGHLIGHT = "consistency_features", "consistency_examples", "token_highlight"
STUDY_NAME = "text"


def ignore_ids(names: Sequence[str]) -> list[int]:
    """The ids of the special tokens named in ``protocol.features.ignore_tokens`` ([PAD] always included)."""
    unknown = [n for n in names if n not in SPECIAL_TOKENS]
    if unknown:
        raise ValueError(f"protocol.features.ignore_tokens={list(names)}: {unknown} are not special tokens; "
                         f"accepted: {list(SPECIAL_TOKENS)}")
    return sorted({PAD_ID, *(SPECIAL_TOKENS.index(n) for n in names)})


def check_token_explainers(cfg: DictConfig, names: Sequence[str]) -> None:
    """Every listed feature explainer is a token method (:data:`TOKEN_METHODS`): checked before any training."""
    for name in names:
        method = explainer_settings(cfg, name, "feature")["method"]
        if method not in TOKEN_METHODS:
            raise ValueError(f"Unknown token explainer {method!r} (explainers.{name}); accepted: {list(TOKEN_METHODS)}")


def token_explainers(cfg: DictConfig, names: Sequence[str], encoder: torch.nn.Module,
                     embedding: str) -> tuple[dict[str, TokenAttribution], dict[str, dict[str, Any]]]:
    """The token explainers named in ``names`` (``explainers.<name>``: method and attribute settings)."""
    explainers, kwargs = {}, {}
    for name in names:
        settings = explainer_settings(cfg, name, "feature")
        explainers[name] = TokenAttribution(str(settings["method"]), encoder, embedding, seed=int(cfg.seed))
        kwargs[name] = dict(container(settings.get("attribute")) or {})
    return explainers, kwargs


def highlight_rows(explainers: Mapping[str, TokenAttribution], kwargs: Mapping[str, Mapping[str, Any]],
                   ids: torch.Tensor, baseline_id: int, vocabulary: Sequence[str], label: int) -> pd.DataFrame:
    """Tidy rows of one explained text: per gradient method and token position (``level``), the token's
    importance (``value``), the token itself and the text's topic."""
    length = int((ids != PAD_ID).sum())
    rows = []
    for name, explainer in explainers.items():
        if explainer.method == "random":
            continue
        scores = explainer.attribute(ids[None], baseline_id, **kwargs.get(name, {}))[0]
        rows += [{"method": name, "level": float(t), "metric": "token_importance", "value": float(scores[t]),
                  "token": vocabulary[int(ids[t])], "topic": AG_NEWS_CLASSES[label]} for t in range(length)]
    return pd.DataFrame(rows)


def plot_highlight(frame: pd.DataFrame, title: str) -> object:
    """The token highlight of the lowest seed in ``frame`` (rows of :func:`highlight_rows`)."""
    if "seed" in frame:
        frame = frame[frame["seed"] == frame["seed"].min()]
    methods = list(dict.fromkeys(frame["method"]))
    first = frame[frame["method"] == methods[0]].sort_values("level")
    scores = {m: frame[frame["method"] == m].sort_values("level")["value"].tolist() for m in methods}
    topic = f" (topic: {first['topic'].iloc[0]})" if "topic" in first else ""
    return plot_token_highlight(first["token"].tolist(), scores, title + topic)


def run(cfg: DictConfig, bench: Workbench) -> StudyResult:
    """Both checks, each when enabled (``protocol.features.enabled``, ``protocol.examples.enabled``)."""
    protocol, seed, result = cfg.protocol, int(cfg.seed), StudyResult()
    ignored = ignore_ids(list(protocol.features.ignore_tokens))  # wrong names stop here, before training
    if protocol.features.enabled:
        check_token_explainers(cfg, list(protocol.features.explainers))
    if protocol.features.enabled:
        start = time.perf_counter()
        trained = bench.get("features")
        bench.reseed()
        data, encoder = trained.data, trained.model.encoder
        label = dataset_label(data.name)
        test_idx = random_subset(len(data.test_x), protocol.features.n_test, seed)
        test_x = data.test_x[test_idx]
        explainers, kwargs = token_explainers(cfg, list(protocol.features.explainers), encoder,
                                              str(protocol.features.embedding))
        baseline_id = int(data.baseline)
        frame = token_consistency(encoder, test_x, explainers, kwargs, list(protocol.features.percents), baseline_id,
                                  ignored, batch_size=int(protocol.features.batch_size))
        frame = identify(cfg, data, frame)
        result.tables[FEATURES] = frame
        result.figures[FEATURES] = plot_representation_shift(
            frame, f"{label}: consistency of token importance (seed {seed})")
        index = int(protocol.figures.highlight_index)
        if not 0 <= index < len(test_x):
            raise ValueError(f"protocol.figures.highlight_index={index} is outside the {len(test_x)} explained texts")
        bench.reseed()
        rows = highlight_rows(explainers, kwargs, test_x[index], baseline_id, data.vocabulary,
                              int(data.test_y[test_idx[index]]))
        if not rows.empty:
            result.tables[HIGHLIGHT] = identify(cfg, data, rows)
            result.figures[HIGHLIGHT] = plot_highlight(rows, f"{label}: label-free token importance (seed {seed})")
        result.summary["features_seconds"] = time.perf_counter() - start
    if protocol.examples.enabled:
        start = time.perf_counter()
        trained = bench.get("examples")
        bench.reseed()
        data, model = trained.data, trained.model
        train_idx = class_subset(data.train_y, protocol.examples.train_per_class, seed)
        test_idx = class_subset(data.test_y, protocol.examples.test_per_class, seed)
        explainers = build_example_explainers(cfg, list(protocol.examples.explainers), model, trained.checkpoints)
        example_check(cfg, trained, explainers, train_idx, test_idx, result, start,
                      f"{dataset_label(data.name)}: consistency of example importance by topic (seed {seed})")
    return result


def _highlights(results: Path, scale: str) -> list[Path]:
    """The token-highlight figure of every experiment's kept ``token_highlight_runs.csv``."""
    written: list[Path] = []
    for path in sorted(results.glob(f"*/{scale}/{HIGHLIGHT}_runs.csv")):
        frame = pd.read_csv(path)
        name = dataset_label(str(frame["dataset"].iloc[0]))
        written += save_figure(plot_highlight(frame, f"{name}: label-free token importance (seed "
                                                     f"{int(frame['seed'].min())})"), path.parent / HIGHLIGHT)
    return written


def aggregate(runs: Sequence[Path], results: Path, scale: str) -> list[Path]:
    """Per experiment: the feature and example tables across seeds with their figures (as the consistency study),
    and every seed's highlighted text (``token_highlight_runs.csv``) with the lowest seed's figure."""
    written = aggregate_levels(runs, results, scale, STUDY_NAME, PLOTS)
    found = collect(runs, HIGHLIGHT, scale=scale, study=STUDY_NAME)
    if not found.frame.empty:
        record = found.record(expected_seeds(runs, scale))
        for experiment, part in found.frame.groupby("experiment", sort=True):
            folder = results / str(experiment) / scale
            written.append(save_csv(part, folder / f"{HIGHLIGHT}_runs.csv"))
            written.append(save_json(for_experiment(record, str(experiment), part), folder / f"{HIGHLIGHT}_runs.json"))
        written += _highlights(results, scale)
    return written


def redraw(results: Path, scale: str) -> list[Path]:
    """The tables and figures drawn again from the kept ``*_runs.csv``."""
    return [*redraw_levels(results, scale, PLOTS), *_highlights(results, scale)]


def claims(results: Path, scale: str, rules: Mapping[str, Any]) -> list[Claim]:
    """Feature consistency over tokens and example consistency by topic, per experiment of ``rules.experiments``
    (the consistency study's rules, read from this study's node of ``configs/claims.yaml``)."""
    out = []
    for dataset, experiment in rules["experiments"].items():
        folder = results / experiment / scale
        for table, check in ((FEATURES, feature_consistency), (EXAMPLES, example_consistency)):
            claim = check(read_table(folder / f"{table}_runs.csv"), dataset, rules)
            claim.figure = figure_link(folder / f"{table}.png", results)
            out.append(claim)
    return out


STUDY = Study(STUDY_NAME, "Consistency of label-free token and example importance on texts", (FEATURES, EXAMPLES,
              HIGHLIGHT), run, aggregate, claims, redraw=redraw)
