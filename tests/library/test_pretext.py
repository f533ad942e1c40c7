"""Pretext-task sensitivity, the library part: the classifier and the correlation tables.

The study (aggregation, config checks) is tested in tests/studies/test_pretext.py, its smoke run in
tests/e2e/test_smoke.py."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from labelfree.protocols.pretext import (
    correlation_table,
    off_diagonal_means,
    pretext_correlations,
    showcase_indices,
    top_examples,
)
from labelfree.models.classifier import Classifier
from labelfree.models.registry import build_model

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
