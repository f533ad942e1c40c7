"""Pretext-task sensitivity: the classifier, correlation tables, aggregation across runs, a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from labelfree.protocols.pretext import (
    TABLE,
    correlation_table,
    off_diagonal_means,
    pretext_correlations,
    showcase_indices,
    top_examples,
)
from labelfree.models.classifier import Classifier
from labelfree.models.registry import build_model
from experiments.runner import run

from experiments.studies import pretext as pretext_study

TASKS = ("reconstruction", "denoising", "inpainting", "classification")
CLASSIFIER = {"name": "classifier", "architecture": "mnist_conv", "latent_dim": 4, "n_classes": 10, "pretext": "classification"}


# ------------------------------------------------------------------------------------ classifier
def test_classifier_shapes_and_cross_entropy():
    torch.manual_seed(0)
    model = build_model(CLASSIFIER)
    assert isinstance(model, Classifier) and model.uses_labels
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6)
    assert model.encoder(x).shape == (6, 4) and model(x).shape == (6, 10)
    loss = model.pretext_loss(x, y)
    assert loss.shape == (6,)
    expected = torch.nn.functional.cross_entropy(model.head(model.encoder(x)), y, reduction="none")
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model.pretext_loss(x, y, perturb=True), loss)  # no perturbation
    with pytest.raises(ValueError, match="needs the labels y"):
        model.pretext_loss(x)
    with pytest.raises(ValueError, match="integer tensor"):
        model.pretext_loss(x, y.float())


def test_classifier_learns_with_the_one_trainer():
    from labelfree.training import TrainConfig, evaluate, train

    torch.manual_seed(0)
    y = torch.arange(120) % 2
    x = torch.rand(120, 1, 28, 28) * 0.1
    x[y == 1, :, :14] += 0.9  # class 1: a bright top half
    model = build_model({**CLASSIFIER, "n_classes": 2})
    before = evaluate(model, x, y, batch_size=64)
    train(model, x[:100], x[100:], TrainConfig(epochs=15, batch_size=20, lr=1e-2, patience=15), seed=0,
          train_y=y[:100], val_y=y[100:])
    assert evaluate(model, x[100:], y[100:], batch_size=64) < 0.5 * before


def test_classifier_refuses_a_bad_config():
    with pytest.raises(ValueError, match="n_classes >= 2"):
        build_model({**CLASSIFIER, "n_classes": 1})
    with pytest.raises(ValueError, match="Unknown architecture"):
        build_model({**CLASSIFIER, "architecture": "resnet"})


# ---------------------------------------------------------------------------------- correlations
def _matrix(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    part = frame[frame["metric"] == metric]
    return part.pivot(index="task_a", columns="task_b", values="value")


def test_identical_explanations_correlate_perfectly():
    torch.manual_seed(0)
    saliency = torch.rand(10, 1, 8, 8)
    frame = correlation_table({t: saliency.clone() for t in TASKS}, "features", "gradient_shap")
    assert len(frame) == 2 * len(TASKS) ** 2
    assert set(frame.columns) >= {"kind", "method", "task_a", "task_b", "metric", "level", "value", "n"}
    for metric in ("pearson", "spearman"):
        assert _matrix(frame, metric).shape == (4, 4)
        assert frame[frame["metric"] == metric]["value"].to_numpy() == pytest.approx(1.0)
    assert (frame["n"] == saliency.numel()).all()


def test_independent_explanations_are_nearly_uncorrelated_and_monotone_maps_keep_spearman():
    generator = torch.Generator().manual_seed(0)
    scores = {t: torch.rand(200, 100, generator=generator) for t in TASKS[:3]}
    scores["classification"] = scores["reconstruction"].pow(3)  # a monotone transform of reconstruction's
    frame = correlation_table(scores, "examples", "dknn")
    pearson, spearman = _matrix(frame, "pearson"), _matrix(frame, "spearman")
    for a, b in (("reconstruction", "denoising"), ("denoising", "inpainting"), ("inpainting", "classification")):
        assert abs(pearson.loc[a, b]) < 0.02 and abs(spearman.loc[a, b]) < 0.02
    assert spearman.loc["reconstruction", "classification"] == pytest.approx(1.0)
    assert 0.8 < pearson.loc["reconstruction", "classification"] < 0.99
    assert (pearson.to_numpy() == pearson.to_numpy().T).all()


def test_correlation_table_refuses_bad_input():
    with pytest.raises(ValueError, match="one shape for every task"):
        correlation_table({"a": torch.rand(3, 4), "b": torch.rand(3, 5)}, "examples", "dknn")
    with pytest.raises(ValueError, match="at least 2 tasks"):
        correlation_table({"a": torch.rand(3, 4)}, "examples", "dknn")
    with pytest.raises(ValueError, match="Unknown kind of explanation 'labels'"):
        correlation_table({"a": torch.rand(3, 4), "b": torch.rand(3, 4)}, "labels", "dknn")


def test_pretext_correlations_stacks_kinds_and_off_diagonal_means():
    x = torch.rand(5, 6)
    frame = pretext_correlations({"gs": {"a": x, "b": x}}, {"dknn": {"a": x, "b": -x}})
    means = off_diagonal_means(frame).set_index(["kind", "metric"])["value"]
    assert means[("features", "pearson")] == pytest.approx(1.0)
    assert means[("examples", "pearson")] == pytest.approx(-1.0)


def test_showcase_and_top_examples():
    labels = torch.tensor([3, 1, 3, 0, 1, 0])
    assert showcase_indices(labels, 2).tolist() == [3, 1]  # first 0, first 1
    assert showcase_indices(labels, 5).tolist() == [3, 1, 0, 2, 4]
    with pytest.raises(ValueError, match="images shown"):
        showcase_indices(labels, 7)
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    assert top_examples(scores, 2).tolist() == [[1, 2], [0, 2]]
    with pytest.raises(ValueError, match="top examples"):
        top_examples(scores, 4)


# ----------------------------------------------------------------------------------- aggregation
def _fake_run(folder: Path, seed: int, feature: float, example: float, finished: bool = True) -> None:
    """A run directory with a pretext table: every off-diagonal pair at ``feature`` / ``example``."""
    rows = []
    for kind, method, value in (("features", "gradient_shap", feature), ("examples", "dknn", example)):
        for metric in ("pearson", "spearman"):
            for a in TASKS:
                for b in TASKS:
                    rows.append({"experiment": "mnist_pretext", "dataset": "mnist", "model": "mnist_conv", "seed": seed,
                                 "kind": kind, "method": method, "task_a": a, "task_b": b, "metric": metric,
                                 "level": float("nan"), "value": 1.0 if a == b else value, "n": 100})
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"seed: {seed}\n")
    pd.DataFrame(rows).to_csv(folder / f"{TABLE}.csv", index=False)
    for name in pretext_study.RUN_FIGURES:
        (folder / f"{name}.png").write_bytes(f"png of seed {seed}".encode())
    if finished:
        (folder / "summary.json").write_text(json.dumps({"experiment": "mnist_pretext", "study": "pretext", "scale": "quick", "seed": seed}))


def test_aggregation_of_two_runs_skips_a_broken_one_and_never_keeps_stale_rows(tmp_path):
    runs, results = tmp_path / "sweep", tmp_path / "results"
    out = results / "mnist_pretext" / "quick"
    _fake_run(runs / "seed=1", 1, 0.5, 0.1)
    _fake_run(runs / "seed=2", 2, 0.7, 0.3)
    _fake_run(runs / "seed=3", 3, 9.0, 9.0, finished=False)  # killed: no summary.json
    pretext_study.aggregate([runs], results, "quick")

    matrix = pd.read_csv(out / "pretext_features_gradient_shap_pearson.csv").set_index("task")
    assert matrix.shape == (4, 4) and list(matrix.index) == list(TASKS) and list(matrix.columns) == list(TASKS)
    assert matrix.loc["reconstruction", "classification"] == "0.60 +/- 0.14"
    assert matrix.loc["denoising", "denoising"] == "1.00 +/- 0.00"
    for suffix in (".md", ".tex"):
        assert (out / f"pretext_features_gradient_shap_pearson{suffix}").exists()
    pairs = pd.read_csv(out / "pretext_pairs.csv")
    assert len(pairs) == 6 and pairs["pair"].iloc[0] == "reconstruction / denoising"
    assert (pairs["examples dknn pearson"] == "0.20 +/- 0.14").all() and (pairs["seeds"] == 2).all()
    stats = pd.read_csv(out / f"{TABLE}_mean_std.csv")
    assert set(stats["n"]) == {2}
    assert sorted(pd.read_csv(out / f"{TABLE}_runs.csv")["seed"].unique()) == [1, 2]
    for stem in ("pretext_correlations", "pretext_saliency_seed1", "pretext_top_examples_seed1"):
        assert (out / f"{stem}.png").exists()
    assert (out / "pretext_saliency_seed1.png").read_bytes() == b"png of seed 1"
    assert not list(out.glob(".*.tmp"))

    # seed 1 breaks, seed 4 arrives: the new tables hold seeds 2 and 4 only, seed 1's figures are gone
    (runs / "seed=1" / "summary.json").write_text("{broken")
    _fake_run(runs / "seed=4", 4, 0.9, 0.5)
    pretext_study.aggregate([runs], results, "quick")
    assert sorted(pd.read_csv(out / f"{TABLE}_runs.csv")["seed"].unique()) == [2, 4]
    matrix = pd.read_csv(out / "pretext_features_gradient_shap_pearson.csv").set_index("task")
    assert matrix.loc["reconstruction", "classification"] == "0.80 +/- 0.14"
    assert not (out / "pretext_saliency_seed1.png").exists() and (out / "pretext_saliency_seed2.png").exists()


def test_aggregation_without_finished_runs_writes_nothing(tmp_path):
    _fake_run(tmp_path / "seed=1", 1, 0.5, 0.1, finished=False)
    assert pretext_study.aggregate([tmp_path], tmp_path / "out", "quick") == []
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- smoke run
def test_smoke_run_writes_4x4_tables_and_figures(compose_config, tmp_path):
    cfg = compose_config("experiment=mnist_pretext", "scale=smoke")
    assert list(cfg.protocol.models) == list(TASKS)
    summary = run(cfg, tmp_path / "run")
    frame = pd.read_csv(tmp_path / "run" / f"{TABLE}.csv")
    assert list(frame.columns) == ["experiment", "dataset", "model", "seed", "kind", "method", "task_a", "task_b",
                                   "metric", "level", "value", "n"]
    assert set(frame["kind"]) == {"features", "examples"} and set(frame["metric"]) == {"pearson", "spearman"}
    for (_, _, _), part in frame.groupby(["kind", "method", "metric"]):
        matrix = part.pivot(index="task_a", columns="task_b", values="value")
        assert matrix.shape == (4, 4)
        assert [matrix.loc[t, t] for t in TASKS] == pytest.approx([1.0] * 4)
    assert frame["value"].notna().all() and (frame["seed"] == 1).all()
    for name in (TABLE, "pretext_saliency", "pretext_top_examples"):
        assert (tmp_path / "run" / f"{name}.png").exists() and (tmp_path / "run" / f"{name}.pdf").exists()
    assert set(summary["training"]) == {f"default/{t}" for t in TASKS}
    assert "features_gradient_shap_pearson_mean_off_diagonal" in summary

    # a second run loads the four cached models and gives the same numbers
    again = run(cfg, tmp_path / "again")
    assert again["model_cached"] is True
    pd.testing.assert_frame_equal(frame, pd.read_csv(tmp_path / "again" / f"{TABLE}.csv"))


def test_models_with_the_same_pretext_tag_are_refused(compose_config, tmp_path):
    cfg = compose_config("experiment=mnist_pretext", "scale=smoke", "model@protocol.models.denoising=inpainting_ae")
    with pytest.raises(ValueError, match="distinct `pretext` tags"):
        run(cfg, tmp_path / "run")
