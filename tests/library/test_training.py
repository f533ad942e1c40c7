"""The one trainer: early stopping, best weights, checkpoints for TracIn, resume, determinism, NaN,
and its defaults (one home: configs/trainer/default.yaml equals TrainConfig)."""

import dataclasses
import random

import numpy as np
import pytest
import torch
from torch import nn
from omegaconf import OmegaConf

from labelfree.io import load_torch
from labelfree.models import GaussianNoise, RandomMask
from labelfree.training import TrainConfig, TrainingDivergedError, evaluate, train
from tests import ROOT
from tests.fixtures.models import make_model, small_data


def test_checkpoints_recorded_with_learning_rates_and_best_restored(tmp_path):
    train_x, val_x = small_data()
    model = make_model()
    config = TrainConfig(epochs=4, batch_size=32, checkpoint_every=2, patience=10)
    result = train(model, train_x, val_x, config, seed=0, checkpoint_dir=tmp_path)
    assert [c.path.name for c in result.checkpoints] == ["epoch_0002.pt", "epoch_0004.pt"]
    assert all(c.learning_rate == pytest.approx(1e-3) for c in result.checkpoints)
    state = load_torch(result.checkpoints[0].path)
    assert set(state) == set(model.state_dict())
    assert len(result.history) == 4
    best = min(h["val_loss"] for h in result.history)
    assert result.best_val_loss == pytest.approx(best)
    assert evaluate(model, val_x, None, 64, perturb=True) == pytest.approx(best, rel=1e-4)
    assert not model.training


def test_early_stopping_with_patience():
    train_x, val_x = small_data()
    model = make_model()
    # lr 0 in effect: nothing improves after the first epoch, so training stops after 1 + patience epochs.
    result = train(model, train_x, val_x, TrainConfig(epochs=50, batch_size=32, lr=1e-12, patience=2), seed=0)
    assert len(result.history) <= 1 + 2 + 1


def test_same_seed_same_numbers():
    train_x, val_x = small_data()
    runs = []
    for _ in range(2):
        model = make_model(GaussianNoise(0.3))
        train(model, train_x, val_x, TrainConfig(epochs=2, batch_size=32), seed=5)
        runs.append(model.state_dict())
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key])


def test_resume_after_interruption_gives_same_weights(tmp_path):
    train_x, val_x = small_data()
    full = make_model(RandomMask(0.2))
    train(full, train_x, val_x, TrainConfig(epochs=4, batch_size=32, checkpoint_every=1), seed=3, checkpoint_dir=tmp_path / "a")
    # First two epochs, then a "restart" that must continue from last.pt to epoch 4.
    part = make_model(RandomMask(0.2))
    train(part, train_x, val_x, TrainConfig(epochs=2, batch_size=32, checkpoint_every=1), seed=3, checkpoint_dir=tmp_path / "b")
    resumed = make_model(RandomMask(0.2), seed=99)  # different init: everything must come from last.pt
    result = train(resumed, train_x, val_x, TrainConfig(epochs=4, batch_size=32, checkpoint_every=1), seed=3, checkpoint_dir=tmp_path / "b")
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.resumed_from == 3  # the run summary says its wall time left epochs 1-2 out
    for key, value in full.state_dict().items():
        torch.testing.assert_close(value, resumed.state_dict()[key])


class DrawsEverywhere(nn.Module):
    """Noise whose scale is drawn from Python's random, NumPy and torch: a resume must restore all three."""

    def forward(self, x):
        scale = 0.1 + 0.1 * random.random() + 0.1 * float(np.random.rand())
        return x + scale * torch.randn_like(x)


def test_resume_restores_python_and_numpy_generators(tmp_path):
    train_x, val_x = small_data()
    config = TrainConfig(epochs=4, batch_size=32, checkpoint_every=1)
    full = make_model(DrawsEverywhere())
    train(full, train_x, val_x, config, seed=3, checkpoint_dir=tmp_path / "a")
    after_full = (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state())
    part = make_model(DrawsEverywhere())
    train(part, train_x, val_x, TrainConfig(epochs=2, batch_size=32, checkpoint_every=1), seed=3, checkpoint_dir=tmp_path / "b")
    random.seed(123)
    np.random.seed(123)
    resumed = make_model(DrawsEverywhere(), seed=99)
    result = train(resumed, train_x, val_x, config, seed=3, checkpoint_dir=tmp_path / "b")
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for key, value in full.state_dict().items():
        torch.testing.assert_close(value, resumed.state_dict()[key])
    assert random.getstate() == after_full[0] and np.random.get_state()[1].tolist() == after_full[1]
    assert torch.equal(torch.get_rng_state(), after_full[2])


def test_nan_loss_stops_with_clear_message():
    train_x, val_x = small_data()
    train_x[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 1"):
        train(make_model(), train_x, val_x, TrainConfig(epochs=2, batch_size=200), seed=0)


def test_bad_trainer_settings():
    with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)


#: TrainConfig fields that the trainer config group does not hold: set at run time from elsewhere
#: (``device`` comes from the top-level ``device`` key of configs/run.yaml, see experiments.cache.train_config).
RUNTIME_ONLY_FIELDS = {"device"}
TRAINER_DEFAULTS = ROOT / "configs" / "trainer" / "default.yaml"


def test_trainer_config_defaults_equal_the_library_defaults():
    """configs/trainer/default.yaml and TrainConfig's field defaults hold the same keys and values."""
    config = OmegaConf.to_container(OmegaConf.load(TRAINER_DEFAULTS), resolve=True)
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name not in RUNTIME_ONLY_FIELDS}
    assert RUNTIME_ONLY_FIELDS <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(config) == set(fields), (
        f"only in {TRAINER_DEFAULTS.name}: {sorted(set(config) - set(fields))}; "
        f"only in TrainConfig: {sorted(set(fields) - set(config))}"
    )
    differ = {
        key: (config[key], fields[key])
        for key in config
        if config[key] != fields[key] or isinstance(config[key], bool) != isinstance(fields[key], bool)
    }
    assert not differ, f"(config value, TrainConfig default) differ: {differ}"
    assert TrainConfig(**config) == TrainConfig()


def test_evaluate_restores_every_submodule_mode():
    train_x, val_x = small_data()
    model = make_model()
    model.train()
    model.encoder.eval()  # mixed modes, e.g. a frozen part
    modes = [m.training for m in model.modules()]
    evaluate(model, val_x, None, 16)
    assert [m.training for m in model.modules()] == modes
    model.represent(val_x, batch_size=16)
    assert [m.training for m in model.modules()] == modes


def test_channels_last_trains_the_same_model_to_rounding_and_resumes_exactly(tmp_path):
    """trainer.channels_last: NHWC convolutions while training, the default layout afterwards; a resumed
    channels-last run equals an uninterrupted one bitwise (the same layout on both paths)."""
    train_x, val_x = small_data()
    plain, nhwc = make_model(), make_model()
    train(plain, train_x, val_x, TrainConfig(epochs=2, batch_size=32), seed=4)
    config = TrainConfig(epochs=2, batch_size=32, checkpoint_every=1, channels_last=True)
    train(nhwc, train_x, val_x, config, seed=4, checkpoint_dir=tmp_path / "full")
    for key, value in plain.state_dict().items():
        other = nhwc.state_dict()[key]
        assert other.is_contiguous(), f"{key} left in channels-last layout after training"
        torch.testing.assert_close(other, value, rtol=1e-3, atol=1e-4)
    part = make_model()
    train(part, train_x, val_x, dataclasses.replace(config, epochs=1), seed=4, checkpoint_dir=tmp_path / "part")
    resumed = make_model(seed=99)
    train(resumed, train_x, val_x, config, seed=4, checkpoint_dir=tmp_path / "part")
    for key, value in nhwc.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
