"""End-to-end smoke runs through Hydra's compose API on the tiny data sets: every experiment at smoke scale
writes the same tables as the references (tests/reference/smoke, written by
``python -m tests.reference.make_reference_tables``), and each study's run holds what it promises."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments.runner import HISTORY, run
from labelfree.protocols.disvae import METRICS
from labelfree.protocols.pretext import TABLE
from tests import ROOT
from tests.reference.make_reference_tables import FINGERPRINT, kernel_fingerprint

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
REFERENCES = ROOT / "tests" / "reference" / "smoke"
TASKS = ("reconstruction", "denoising", "inpainting", "classification")


@pytest.fixture
def reference_threads():
    """The thread count the reference tables were written with (float sums depend on it)."""
    import torch

    from tests.reference.make_reference_tables import THREADS

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def kernels_differ() -> str | None:
    """Why the exact tables cannot be compared on this machine (its float kernels are not the references'), or None."""
    written_on, here = FINGERPRINT.read_text().strip(), kernel_fingerprint()
    if here == written_on:
        return None
    return (f"exact tables not compared: this CPU's float kernels (fingerprint {here}) are not those of the machine "
            f"that wrote the references ({written_on}); see tests/reference/make_reference_tables.py")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_run_of_every_experiment(experiment, compose_config, tmp_path, reference_threads, kernels_differ):
    cfg = compose_config(f"experiment={experiment}", "scale=smoke")
    run_dir = tmp_path / "run"
    summary = run(cfg, run_dir)
    assert (run_dir / "config.yaml").exists()
    assert json.loads((run_dir / "summary.json").read_text())["scale"] == "smoke"
    assert summary["model_cached"] is False
    tables = [p for p in run_dir.glob("*.csv") if p.name != HISTORY]
    history = pd.read_csv(run_dir / HISTORY)  # every model's per-epoch losses
    assert {"epoch", "train_loss", "val_loss", "model"} <= set(history.columns) and len(history)
    for csv in tables:
        frame = pd.read_csv(csv)
        assert {"method", "level", "metric", "value", "seed"} <= set(frame.columns)
        assert frame["value"].notna().all()
    for stem in {p.stem for p in tables}:
        assert (run_dir / f"{stem}.png").exists() and (run_dir / f"{stem}.pdf").exists()
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"
    # the same tables as the code before the restructuring wrote (tests/reference/make_reference_tables.py)
    references = sorted((REFERENCES / experiment).glob("*.csv"))
    assert references and sorted(p.name for p in tables) == [p.name for p in references]
    if kernels_differ:
        pytest.skip(kernels_differ)
    for reference in references:
        pd.testing.assert_frame_equal(pd.read_csv(run_dir / reference.name), pd.read_csv(reference))


def test_consistency_smoke_tables(compose_config, tmp_path):
    cfg = compose_config("experiment=mnist_consistency", "scale=smoke")
    run(cfg, tmp_path / "a")
    features = pd.read_csv(tmp_path / "a" / "consistency_features.csv")
    examples = pd.read_csv(tmp_path / "a" / "consistency_examples.csv")
    assert set(features["method"]) == set(cfg.protocol.features.explainers)
    assert sorted(features["level"].unique()) == sorted(cfg.protocol.features.percents)
    # At 100% every ranking masks everything: the same shift for every method.
    full = features[features["level"] == 100]["value"]
    assert full.max() - full.min() < 1e-5 * max(1.0, full.abs().max())
    assert set(examples["method"]) == set(cfg.protocol.examples.explainers)
    # At M = 100% both rates are the share of the test label in the balanced subset: 1 / n_classes.
    at_full = examples[examples["level"] == 100]
    assert at_full["value"].round(6).eq(0.1).all()


def test_roar_smoke_shares_the_unmasked_and_fully_masked_retrainings(compose_config, tmp_path):
    run(compose_config("experiment=mnist_roar", "scale=smoke"), tmp_path / "run")
    frame = pd.read_csv(tmp_path / "run" / "roar.csv")
    assert set(frame["level"]) == {0.0, 20.0, 100.0}
    for level in (0.0, 100.0):  # the same images for every method: one retraining, one value
        assert frame[frame["level"] == level]["value"].nunique() == 1
    assert set(frame["method"]) == {"gradient_shap", "integrated_gradients", "random_features"}


def test_ecg5000_smoke_run_trains_one_model_per_check(compose_config, tmp_path):
    summary = run(compose_config("experiment=ecg5000_consistency", "scale=smoke"), tmp_path / "run")
    assert set(summary["training"]) == {"features", "examples"}


# ------------------------------------------------------------------------------------------ pretext
def test_pretext_smoke_run_writes_4x4_tables_and_figures(compose_config, tmp_path):
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


# ------------------------------------------------------------------------------------------- disvae
@pytest.mark.parametrize(("experiment", "model", "dataset", "size"),
                         [("mnist_disvae", "tc_vae", "mnist", 32), ("dsprites_disvae", "tc_vae", "dsprites", 64),
                          ("dsprites_disvae", "beta_vae", "dsprites", 64)])
def test_disvae_smoke_run_writes_the_metric_table_and_the_unit_maps(compose_config, tmp_path, experiment, model, dataset, size):
    cfg = compose_config(f"experiment={experiment}", "scale=smoke", f"model={model}", "model.beta=5")
    run_dir = tmp_path / "run"
    summary = run(cfg, run_dir)
    frame = pd.read_csv(run_dir / "disvae.csv")
    assert list(frame["metric"]) == list(METRICS)
    assert frame["value"].notna().all()
    assert set(frame["loss"]) == {model} and set(frame["beta"]) == {5.0} and set(frame["level"]) == {5.0}
    assert set(frame["dataset"]) == {dataset} and set(frame["seed"]) == {1}
    assert (run_dir / "disvae.png").exists() and (run_dir / "disvae.pdf").exists()
    assert 0 <= summary["active_units"] <= cfg.model.latent_dim and len(summary["kl_per_unit"]) == cfg.model.latent_dim
    assert summary["n_test"] == cfg.protocol.n_test
    training = summary["training"][f"default/{model}"]
    assert training["n_train"] > 0 and training["epochs_trained"] == cfg.trainer.epochs
    config_text = (run_dir / "config.yaml").read_text()
    assert f"image_size: {size}" in config_text
