"""End-to-end smoke runs through Hydra's compose API, model caching, determinism and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments.runner import run

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "experiment").glob("*.yaml"))
REFERENCES = Path(__file__).resolve().parent / "reference" / "smoke"


@pytest.fixture
def reference_threads():
    """The thread count the reference tables were written with (float sums depend on it)."""
    import torch

    from reference.make_reference_tables import THREADS

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_run_of_every_experiment(experiment, compose_config, tmp_path, reference_threads):
    cfg = compose_config(f"experiment={experiment}", "scale=smoke")
    run_dir = tmp_path / "run"
    summary = run(cfg, run_dir)
    assert (run_dir / "config.yaml").exists()
    assert json.loads((run_dir / "summary.json").read_text())["scale"] == "smoke"
    assert summary["model_cached"] is False
    for csv in run_dir.glob("*.csv"):
        frame = pd.read_csv(csv)
        assert {"method", "level", "metric", "value", "seed"} <= set(frame.columns)
        assert frame["value"].notna().all()
    for stem in {p.stem for p in run_dir.glob("*.csv")}:
        assert (run_dir / f"{stem}.png").exists() and (run_dir / f"{stem}.pdf").exists()
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"
    # the same tables as the code before the restructuring wrote (tests/reference/make_reference_tables.py)
    references = sorted((REFERENCES / experiment).glob("*.csv"))
    assert references and sorted(p.name for p in run_dir.glob("*.csv")) == [p.name for p in references]
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


def test_second_run_loads_cached_model_and_gives_same_numbers(compose_config, tmp_path):
    cfg = compose_config("experiment=mnist_consistency", "scale=smoke", "protocol.examples.explainers=[tracin,dknn]")
    first = run(cfg, tmp_path / "first")
    second = run(cfg, tmp_path / "second")
    assert first["model_cached"] is False and second["model_cached"] is True
    for name in ("consistency_features.csv", "consistency_examples.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "first" / name), pd.read_csv(tmp_path / "second" / name))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.name=imagenet", "Unknown dataset 'imagenet'; accepted"),
        ("model.name=transformer", "Unknown model 'transformer'; accepted"),
        ("protocol.features.explainers=[lime]", "Unknown feature explainer 'lime'; accepted"),
        ("protocol.examples.explainers=[shapley]", "Unknown example explainer 'shapley'; accepted"),
        ("protocol.features.percents=[5,150]", "p must be a percentage in \\[0, 100\\], got 150"),
        ("protocol.examples.percents=[5,150]", "exceeds"),
        ("protocol.name=roar_typo", "Unknown protocol 'roar_typo'; accepted"),
    ],
)
def test_bad_input_gives_one_clear_error(compose_config, tmp_path, override, message):
    cfg = compose_config("experiment=mnist_consistency", "scale=smoke", override)
    with pytest.raises(ValueError, match=message):
        run(cfg, tmp_path / "bad")


def test_unknown_config_group_option_is_refused_by_hydra(compose_config):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="dataset"):
        compose_config("dataset=imagenet")


def test_missing_data_offline_names_files(compose_config, tmp_path):
    from labelfree.data import DataNotFoundError

    cfg = compose_config("experiment=mnist_consistency", "scale=smoke", f"paths.data_dir={tmp_path / 'empty'}")
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte"):
        run(cfg, tmp_path / "bad")


def test_wandb_logger_offline(compose_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(
        "experiment=mnist_consistency",
        "scale=smoke",
        "logger=wandb",
        "protocol.examples.enabled=false",
        "protocol.features.explainers=[saliency,random_features]",
    )
    run_dir = tmp_path / "wandb_run"
    run(cfg, run_dir)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "wandb should have written one offline run under the run directory"
    assert list(offline[0].glob("*.wandb")), "the offline run holds no logged data"


def test_roar_smoke_shares_the_unmasked_and_fully_masked_retrainings(compose_config, tmp_path):
    run(compose_config("experiment=mnist_roar", "scale=smoke"), tmp_path / "run")
    frame = pd.read_csv(tmp_path / "run" / "roar.csv")
    assert set(frame["level"]) == {0.0, 20.0, 100.0}
    for level in (0.0, 100.0):  # the same images for every method: one retraining, one value
        assert frame[frame["level"] == level]["value"].nunique() == 1
    assert set(frame["method"]) == {"gradient_shap", "integrated_gradients", "random_features"}


def test_finished_run_is_skipped_only_when_asked_and_config_matches(compose_config, tmp_path):
    run_dir = tmp_path / "run"
    first = run(compose_config("experiment=mnist_consistency", "scale=smoke", "skip_finished=true"), run_dir)
    stamp = (run_dir / "summary.json").stat().st_mtime_ns
    again = run(compose_config("experiment=mnist_consistency", "scale=smoke", "skip_finished=true"), run_dir)
    assert again == first and (run_dir / "summary.json").stat().st_mtime_ns == stamp
    changed = run(compose_config("experiment=mnist_consistency", "scale=smoke", "skip_finished=true",
                                 "protocol.features.percents=[5,100]"), run_dir)
    assert changed["wall_seconds"] != first["wall_seconds"]
    assert set(pd.read_csv(run_dir / "consistency_features.csv")["level"]) == {5.0, 100.0}
