"""The disentangled-VAE study: unit-map metrics on constructed maps, per-unit attribution against explaining
one output by hand, smoke runs of both experiments through Hydra's compose API, the sweep's config
composition, and the aggregation script."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import GradientShap, IntegratedGradients
from scipy.stats import entropy as scipy_entropy
from scipy.stats import spearmanr

from labelfree.protocols.disvae import METRICS, disvae_metrics, kl_per_unit, unit_saliency
from labelfree.attribution.features import LabelFreeAttribution
from labelfree.metrics import (
    active_units,
    pooled_unit_correlation,
    unit_correlation,
    unit_cosine,
    unit_entropy,
    unit_shares,
)
from labelfree.models.vae import BurgessEncoder
from experiments.runner import run


# ------------------------------------------------------------------------------------------ metrics
def test_identical_unit_maps_correlate_perfectly():
    torch.manual_seed(0)
    maps = torch.rand(5, 1, 1, 8, 8).expand(5, 4, 1, 8, 8)
    for method in ("pearson", "spearman"):
        torch.testing.assert_close(unit_correlation(maps, method), torch.ones(5, dtype=torch.float64))
        assert pooled_unit_correlation(maps, method) == pytest.approx(1.0)
    torch.testing.assert_close(unit_cosine(maps), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(unit_entropy(maps), torch.full((5, 64), math.log(4), dtype=torch.float64))
    assert (active_units(maps) == 0).all(), "equal shares (exactly 1/d) are not above 1/d"


def test_saliency_carried_by_one_unit_per_pixel_gives_one_active_unit_and_zero_entropy():
    torch.manual_seed(1)
    n, d, p = 3, 4, 50
    owner = torch.randint(0, d, (n, p))
    maps = torch.zeros(n, d, p).scatter_(1, owner[:, None, :], torch.rand(n, 1, p) + 0.1)
    assert (active_units(maps) == 1).all()
    assert (unit_entropy(maps) == 0).all()
    shares = unit_shares(maps)
    assert torch.equal(shares.argmax(dim=2), owner)


def test_metrics_match_numpy_and_scipy_per_image():
    torch.manual_seed(2)
    maps = torch.rand(4, 3, 1, 6, 6) ** 3
    flat = maps.reshape(4, 3, -1).numpy().astype(np.float64)
    pairs = [(j, k) for j in range(3) for k in range(3) if j != k]
    pearson = [np.mean([np.corrcoef(f[j], f[k])[0, 1] for j, k in pairs]) for f in flat]
    spearman = [np.mean([spearmanr(f[j], f[k])[0] for j, k in pairs]) for f in flat]
    cosine = [np.mean([f[j] @ f[k] / np.linalg.norm(f[j]) / np.linalg.norm(f[k]) for j, k in pairs]) for f in flat]
    np.testing.assert_allclose(unit_correlation(maps, "pearson").numpy(), pearson, rtol=1e-10)
    np.testing.assert_allclose(unit_correlation(maps, "spearman").numpy(), spearman, rtol=1e-10)
    np.testing.assert_allclose(unit_cosine(maps).numpy(), cosine, rtol=1e-10)
    np.testing.assert_allclose(unit_entropy(maps).numpy(), scipy_entropy(flat, axis=1), rtol=1e-10)
    pooled = flat.transpose(1, 0, 2).reshape(3, -1)
    expected = np.mean([np.corrcoef(pooled[j], pooled[k])[0, 1] for j, k in pairs])
    assert pooled_unit_correlation(maps) == pytest.approx(expected, rel=1e-10)
    shares = flat / flat.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(active_units(maps).numpy(), (shares > 1 / 3).sum(axis=1))


def test_pixels_without_saliency_and_constant_maps_are_left_out():
    maps = torch.zeros(2, 3, 5)
    maps[:, 0, :3] = torch.tensor([1.0, 2.0, 3.0])
    maps[:, 1, :3] = torch.tensor([2.0, 4.0, 6.5])  # unit 2 stays all-zero: a constant map
    assert torch.isnan(unit_entropy(maps)[:, 3:]).all() and torch.isnan(active_units(maps)[:, 3:]).all()
    assert not torch.isnan(unit_entropy(maps)[:, :3]).any()
    only_pair = float(np.corrcoef([1, 2, 3, 0, 0], [2, 4, 6.5, 0, 0])[0, 1])
    torch.testing.assert_close(unit_correlation(maps), torch.full((2,), only_pair, dtype=torch.float64))
    frame = disvae_metrics([maps]).set_index("metric")
    assert frame.loc["entropy", "n"] == 6 and frame.loc["pearson", "value"] == pytest.approx(only_pair)


def test_bad_maps_give_one_clear_error():
    with pytest.raises(ValueError, match="d >= 2"):
        unit_correlation(torch.rand(3, 1, 10))
    with pytest.raises(ValueError, match="non-negative"):
        unit_entropy(-torch.rand(3, 2, 10))
    with pytest.raises(ValueError, match="Unknown correlation"):
        unit_correlation(torch.rand(3, 2, 10), "kendall")


def test_streamed_metrics_equal_the_metrics_of_all_maps_at_once():
    torch.manual_seed(3)
    maps = torch.rand(10, 3, 1, 5, 5) * (torch.rand(10, 1, 1, 5, 5) > 0.3)
    whole = disvae_metrics([maps]).set_index("metric")
    streamed = disvae_metrics(maps.split(3)).set_index("metric")
    pd.testing.assert_frame_equal(whole, streamed, check_exact=False, rtol=1e-9)
    assert list(whole.index) == [m for m in METRICS if m != "collapsed_units"]
    capped = disvae_metrics(maps.split(3), pooled_max_images=4).set_index("metric")
    assert capped.loc["pearson_pooled", "value"] == pytest.approx(pooled_unit_correlation(maps[:4]))
    assert capped.loc["pearson_pooled", "n"] == 4


# ------------------------------------------------------------------------------------- attribution
@pytest.fixture
def encoder() -> BurgessEncoder:
    torch.manual_seed(4)
    return BurgessEncoder(latent_dim=3, image_size=32).eval()


def test_per_unit_gradient_shap_equals_explaining_one_output_by_hand(encoder):
    x = torch.rand(4, 1, 32, 32)
    black = torch.zeros_like(x)
    for unit in range(3):
        np.random.seed(7)
        torch.manual_seed(7)
        ours = LabelFreeAttribution(GradientShap(encoder)).attribute_units(x, units=[unit], baselines=black, n_samples=6)[:, 0]
        np.random.seed(7)
        torch.manual_seed(7)
        by_hand = GradientShap(lambda inputs, j=unit: encoder(inputs)[:, j]).attribute(x, baselines=black, n_samples=6)
        mu = encoder(x)[:, unit].detach().view(-1, 1, 1, 1)
        torch.testing.assert_close(ours, mu * by_hand)


def test_unit_saliency_stream_is_the_absolute_per_unit_map_summed_over_channels(encoder):
    x = torch.rand(5, 1, 32, 32)
    explainer = LabelFreeAttribution(IntegratedGradients(encoder))
    batches = list(unit_saliency(explainer, x, 0.0, {"n_steps": 8}, batch_size=2, channel_dim=1))
    assert [b.shape for b in batches] == [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]
    for unit in range(3):
        by_hand = IntegratedGradients(lambda inputs, j=unit: encoder(inputs)[:, j]).attribute(x, baselines=0.0, n_steps=8)
        mu = encoder(x)[:, unit].detach().view(-1, 1, 1, 1)
        torch.testing.assert_close(torch.cat(batches)[:, unit], (mu * by_hand).abs()[:, 0], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="cannot explain latent units"):
        next(unit_saliency(IntegratedGradients(encoder), x, 0.0, {}, batch_size=2))


def test_kl_per_unit_is_the_mean_kl_of_each_unit(encoder):
    x = torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        mu, logvar = encoder.posterior(x)
    expected = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean(dim=0)
    torch.testing.assert_close(kl_per_unit(encoder, x, batch_size=4), expected)


# ------------------------------------------------------------------------------------ configs, runs
def test_command_line_model_choice_is_honoured_with_the_experiment_file(compose_config):
    mnist = compose_config("experiment=mnist_disvae", "model=tc_vae", "model.beta=5")
    assert (mnist.model.name, mnist.model.beta, mnist.model.latent_dim, mnist.model.image_size) == ("tc_vae", 5, 3, 32)
    assert mnist.dataset.image_size == 32 and mnist.protocol.name == "disvae"
    sprites = compose_config("experiment=dsprites_disvae", "model=beta_vae", "model.beta=10", "scale=quick")
    assert (sprites.model.name, sprites.model.beta, sprites.model.latent_dim, sprites.model.image_size) == (
        "beta_vae", 10, 6, 64)
    assert sprites.scale_preset == "dsprites_disvae/quick" and sprites.dataset.name == "dsprites"
    assert compose_config("experiment=dsprites_disvae").model.name == "beta_vae"


@pytest.mark.parametrize(("experiment", "model", "dataset", "size"),
                         [("mnist_disvae", "tc_vae", "mnist", 32), ("dsprites_disvae", "tc_vae", "dsprites", 64),
                          ("dsprites_disvae", "beta_vae", "dsprites", 64)])
def test_smoke_run_writes_the_metric_table_and_the_unit_maps(compose_config, tmp_path, experiment, model, dataset, size):
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


def test_tc_vae_gets_the_training_size_and_a_rerun_loads_the_cached_model_with_the_same_numbers(compose_config, tmp_path):
    cfg = compose_config("experiment=mnist_disvae", "scale=smoke", "model=tc_vae")
    first, second = run(cfg, tmp_path / "a"), run(cfg, tmp_path / "b")
    assert first["model_cached"] is False and second["model_cached"] is True
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "disvae.csv"), pd.read_csv(tmp_path / "b" / "disvae.csv"))
    folders = list((tmp_path / "cache" / "models").glob("mnist-default-tc_vae-seed1-*"))
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
    table = pd.read_csv(out / "disvae_mean_std.csv")
    assert len(table) == 4 and set(table["seeds"]) == {2}
    assert {"pearson", "spearman", "cosine", "entropy", "active_units"} <= set(table.columns)
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
