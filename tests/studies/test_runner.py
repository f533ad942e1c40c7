"""The runner on Hydra-composed configs: model caching and determinism, one clear error per bad input, missing
data, the wandb logger, skipping finished runs. The smoke run of every experiment is in tests/e2e/test_smoke.py."""

from __future__ import annotations

import pandas as pd
import pytest
from omegaconf import OmegaConf

from experiments.runner import run


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
        ("protocol.features.percents=[5,150]", r"protocol.features.percents=\[5, 150\] is not accepted: expected a list"),
        ("protocol.examples.percents=[5,150]", r"protocol.examples.percents=\[5, 150\] is not accepted"),
        ("protocol.name=roar_typo", "Unknown protocol 'roar_typo'; accepted"),
        ("trainer.epochs=abc", "trainer.epochs='abc' is not accepted: expected an integer >= 1"),
        ("trainer.epochs=true", "trainer.epochs=True is not accepted: expected an integer >= 1"),
        ("trainer.lr=-1", "trainer.lr=-1 is not accepted: expected a number > 0"),
        ("trainer.optimizer=adamw", r"trainer.optimizer='adamw' is not accepted: expected one of \['adam', 'sgd'\]"),
        ("protocol.features.n_test=0", "protocol.features.n_test=0 is not accepted: expected an integer >= 1, or null"),
        ("explainers.simplex.steps=-1", "explainers.simplex .*steps must be an integer >= 1, got -1"),
        ("explainers.influence_functions.solver.depth=0", "LiSSA depth must be an integer >= 1, got 0"),
    ],
)
def test_bad_input_gives_one_clear_error_before_any_data_or_training(compose_config, tmp_path, override, message):
    cfg = compose_config("experiment=mnist_consistency", "scale=smoke", "paths.data_dir=/no/such/folder", override)
    with pytest.raises(Exception, match=message):  # a ValueError (or Hydra's wrapper of one for a solver node)
        run(cfg, tmp_path / "bad")
    assert not (tmp_path / "cache").exists(), "nothing may be trained or cached"


def test_loss_based_explainers_of_a_contrastive_model_are_refused_before_training(compose_config, tmp_path):
    cfg = compose_config("experiment=cifar10_consistency", "scale=smoke", "paths.data_dir=/no/such/folder",
                         "protocol.examples.explainers=[tracin]")
    with pytest.raises(ValueError, match="explainers.tracin"):
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


def test_finished_run_is_skipped_only_when_asked_and_config_matches(compose_config, tmp_path):
    run_dir = tmp_path / "run"
    first = run(compose_config("experiment=mnist_consistency", "scale=smoke", "skip_finished=true"), run_dir)
    stamp = (run_dir / "summary.json").stat().st_mtime_ns
    again = run(compose_config("experiment=mnist_consistency", "scale=smoke", "skip_finished=true"), run_dir)
    assert again == first and (run_dir / "summary.json").stat().st_mtime_ns == stamp
    assert 0.05 < first["peak_rss_gib"] < 64, "the summary records the run's peak resident memory in GiB"
    changed = run(compose_config("experiment=mnist_consistency", "scale=smoke", "skip_finished=true",
                                 "protocol.features.percents=[5,100]"), run_dir)
    assert changed["wall_seconds"] != first["wall_seconds"]
    assert set(pd.read_csv(run_dir / "consistency_features.csv")["level"]) == {5.0, 100.0}


def test_history_is_written_and_progress_bars_can_be_switched_off(compose_config, tmp_path, capsys):
    cfg = compose_config("experiment=mnist_roar", "scale=smoke", "progress=false")
    run(cfg, tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "training_history.csv")
    assert {"epoch", "train_loss", "val_loss", "model"} <= set(history.columns) and len(history) == cfg.trainer.epochs
    assert "it/s" not in capsys.readouterr().err


def test_flush_denormals_is_set_for_the_run_and_restored():
    import torch

    from experiments.runner import flush_denormals

    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a denormal float32
    with flush_denormals(True):
        if (tiny * 1.0).item() != 0.0:
            pytest.skip("this CPU cannot flush denormals")
    assert (tiny * 1.0).item() != 0.0  # restored afterwards
    with flush_denormals(False):
        assert (tiny * 1.0).item() != 0.0


def test_a_key_added_later_at_its_default_keeps_older_runs_matching(compose_config, tmp_path):
    """LATER_DEFAULTS: a run whose config.yaml predates trainer.channels_last still skips, caches and stacks
    as the same config while the key holds its default; any other value is a different config."""
    from experiments.aggregation import config_id, run_config
    from experiments.cache import model_cache_key
    from experiments.config import LATER_DEFAULTS, same_config

    assert LATER_DEFAULTS == {"trainer.channels_last": False}
    cfg = compose_config("experiment=mnist_consistency", "scale=smoke")
    text = OmegaConf.to_yaml(cfg, resolve=True)
    older = OmegaConf.to_container(cfg, resolve=True)
    del older["trainer"]["channels_last"]
    older_text = OmegaConf.to_yaml(OmegaConf.create(older))
    assert same_config(older_text, text)
    assert model_cache_key(cfg) == model_cache_key(OmegaConf.create(older))
    on = compose_config("experiment=mnist_consistency", "scale=smoke", "trainer.channels_last=true")
    assert not same_config(older_text, OmegaConf.to_yaml(on, resolve=True))
    assert model_cache_key(on) != model_cache_key(cfg)
    ids = []
    for name, text_ in (("old", older_text), ("new", text), ("on", OmegaConf.to_yaml(on, resolve=True))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(text_)
        ids.append(config_id(run_config(tmp_path / name), "cpu"))
    assert ids[0] == ids[1] != ids[2]
