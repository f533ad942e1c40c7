"""The disentangled-VAE study: the sweep's config composition, the runner's refusals, model caching, and the
aggregation of a sweep (tables, box plots, trend)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments.runner import run


def test_command_line_model_choice_is_honoured_with_the_experiment_file(compose_config):
    mnist = compose_config("experiment=mnist_disvae", "model=tc_vae", "model.beta=5")
    assert (mnist.model.name, mnist.model.beta, mnist.model.latent_dim, mnist.model.image_size) == ("tc_vae", 5, 3, 32)
    assert mnist.dataset.image_size == 32 and mnist.protocol.name == "disvae"
    sprites = compose_config("experiment=dsprites_disvae", "model=beta_vae", "model.beta=10", "scale=quick")
    assert (sprites.model.name, sprites.model.beta, sprites.model.latent_dim, sprites.model.image_size) == (
        "beta_vae", 10, 6, 64)
    assert sprites.scale_preset == "dsprites_disvae/quick" and sprites.dataset.name == "dsprites"
    assert compose_config("experiment=dsprites_disvae").model.name == "beta_vae"


def test_tc_vae_gets_the_training_size_and_a_rerun_loads_the_cached_model_with_the_same_numbers(compose_config, tmp_path):
    cfg = compose_config("experiment=mnist_disvae", "scale=smoke", "model=tc_vae")
    first, second = run(cfg, tmp_path / "a"), run(cfg, tmp_path / "b")
    assert first["model_cached"] is False and second["model_cached"] is True
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "disvae.csv"), pd.read_csv(tmp_path / "b" / "disvae.csv"))
    folders = [p for p in (tmp_path / "cache" / "models").glob("mnist-default-tc_vae-seed1-*") if p.is_dir()]
    assert len(folders) == 1
    n_train = first["training"]["default/tc_vae"]["n_train"]
    other = run(compose_config("experiment=mnist_disvae", "scale=smoke", "model=tc_vae", f"model.dataset_size={n_train + 1}"),
                tmp_path / "c")
    assert other["model_cached"] is False, "dataset_size is part of the model and of its cache key"


def test_random_features_cannot_explain_units(compose_config, tmp_path):
    cfg = compose_config("experiment=mnist_disvae", "scale=smoke", "protocol.explainer=random_features")
    with pytest.raises(ValueError, match="cannot explain latent units"):
        run(cfg, tmp_path / "bad")


def test_a_model_that_is_not_a_vae_is_refused_before_training(compose_config, tmp_path):
    cfg = compose_config("experiment=mnist_disvae", "scale=smoke", "model=denoising_ae")
    with pytest.raises(ValueError, match="explains the latent units of a VAE"):
        run(cfg, tmp_path / "bad")
    assert not (tmp_path / "cache" / "models").exists()


def test_aggregation_writes_tables_box_plots_and_trend(compose_config, tmp_path):
    from experiments.studies.disvae import aggregate

    runs = tmp_path / "runs"
    for model in ("beta_vae", "tc_vae"):
        for beta in (1, 5):
            for seed in (1, 2):
                cfg = compose_config("experiment=mnist_disvae", "scale=smoke", f"model={model}", f"model.beta={beta}",
                                     f"seed={seed}", "trainer.epochs=1")
                run(cfg, runs / model / f"beta={beta}" / f"seed={seed}")
    (runs / "broken").mkdir()
    (runs / "broken" / "config.yaml").write_text("unfinished: true\n")
    out = tmp_path / "out" / "disvae" / "smoke"
    written = aggregate([runs], tmp_path / "out", "smoke")
    names = {p.name for p in written}
    assert {"disvae_mean_std.csv", "disvae_mean_std.md", "disvae_mean_std.tex", "disvae_runs.csv",
            "disvae_mnist_boxplots.png", "disvae_mnist_boxplots.pdf", "disvae_trend.csv"} <= names
    table = pd.read_csv(out / "disvae_mean_std.csv")  # numbers: one row per (dataset, loss, beta, metric)
    assert set(table["n"]) == {2} and {"pearson", "spearman", "cosine", "entropy", "active_units"} <= set(table["metric"])
    shown = (out / "disvae_mean_std.md").read_text()  # for people: one row per model, a column per metric
    assert "| pearson |" in shown and "+/-" in shown
    stats = pd.read_csv(out / "disvae_stats.csv")
    runs_frame = pd.read_csv(out / "disvae_runs.csv")
    part = runs_frame[(runs_frame["loss"] == "tc_vae") & (runs_frame["beta"] == 5) & (runs_frame["metric"] == "pearson")]
    row = stats[(stats["loss"] == "tc_vae") & (stats["beta"] == 5) & (stats["metric"] == "pearson")].iloc[0]
    assert row["mean"] == pytest.approx(part["value"].mean()) and row["std"] == pytest.approx(part["value"].std())
    trend = pd.read_csv(out / "disvae_trend.csv")
    assert set(trend["loss"]) == {"beta_vae", "tc_vae"} and "falls" in trend.columns
    again = aggregate([runs], tmp_path / "out", "smoke")
    assert sorted(p.name for p in again) == sorted(names)
    assert json.loads((out / "disvae_runs.json").read_text())["skipped"]


def test_trend_of_a_partial_sweep_rests_on_the_seeds_with_every_beta():
    from experiments.studies.disvae import trend_table

    rows = [{"dataset": "mnist", "loss": "beta_vae", "beta": float(beta), "seed": seed, "metric": "pearson",
             "value": 0.5 + 0.01 * beta} for seed in (1, 2) for beta in (1, 5, 10)]
    # seed 3 has run beta 1 only, far below: counted, it would make beta 1's mean the lowest
    rows.append({"dataset": "mnist", "loss": "beta_vae", "beta": 1.0, "seed": 3, "metric": "pearson", "value": -1.0})
    trend = trend_table(pd.DataFrame(rows), ["pearson"]).iloc[0]
    assert trend["beta=1"] == pytest.approx(0.51) and trend["beta=10"] == pytest.approx(0.6)
    assert trend["slope"] == pytest.approx(0.01) and not trend["falls"] and trend["seeds"] == 2
