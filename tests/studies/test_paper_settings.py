"""The paper preset of each experiment resolves to the authors' settings (README, "Settings")."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from tests import ROOT


def _paper(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("run", overrides=["scale=paper", *overrides])


MNIST_AE = {"epochs": 100, "batch_size": 300, "lr": 1e-3, "weight_decay": 1e-5, "patience": 10, "checkpoint_every": 10}


@pytest.mark.parametrize("experiment", ["mnist_consistency", "mnist_pretext", "mnist_roar"])
def test_mnist_autoencoders_train_as_the_authors(experiment):
    cfg = _paper(f"experiment={experiment}")
    assert {k: cfg.trainer[k] for k in MNIST_AE} == MNIST_AE
    models = cfg.protocol.models.values() if "models" in cfg.protocol else [cfg.model]
    assert all(m.latent_dim == 4 for m in models)


def test_mnist_consistency_at_paper_scale():
    cfg = _paper("experiment=mnist_consistency")
    assert list(cfg.protocol.features.percents) == [5, 10, 20, 50, 80, 100]
    assert list(cfg.protocol.examples.percents) == [5, 10, 20, 50, 70, 100]
    assert cfg.protocol.examples.train_per_class == 100 and cfg.protocol.examples.test_per_class == 100
    solver = cfg.explainers.influence_functions.solver
    assert solver._target_.endswith("LiSSA") and (solver.damping, solver.scale, solver.depth) == (1e-3, 1000.0, 100)


def test_ecg5000_consistency_uses_the_authors_trainer_and_subsets():
    cfg = _paper("experiment=ecg5000_consistency")
    assert (cfg.trainer.batch_size, cfg.trainer.weight_decay, cfg.trainer.checkpoint_every) == (20, 1e-5, 10)
    assert (cfg.trainer.epochs, cfg.trainer.patience, cfg.seed) == (150, 10, 42)
    assert cfg.protocol.examples.train_per_class == 500
    # the largest balanced subset of the 20 % test part (about 400 abnormal beats); README explains
    assert cfg.protocol.examples.test_per_class == 400
    assert cfg.protocol.features.n_test is None  # every abnormal beat


def test_tc_vae_uses_the_authors_minibatch_weighted_estimator():
    for experiment in ("mnist_disvae", "dsprites_disvae"):
        cfg = _paper(f"experiment={experiment}", "model=tc_vae")
        assert cfg.model.estimator == "mws"
        assert cfg.protocol.pooled_max_images is None and cfg.protocol.n_test is None  # the whole test set


def test_vae_settings():
    mnist = _paper("experiment=mnist_disvae")
    assert (mnist.model.latent_dim, mnist.model.image_size, mnist.trainer.batch_size, mnist.trainer.epochs) == (3, 32, 300, 100)
    dsprites = _paper("experiment=dsprites_disvae")
    assert (dsprites.model.latent_dim, dsprites.model.image_size, dsprites.trainer.batch_size) == (6, 64, 500)


def test_roar_at_paper_scale():
    cfg = _paper("experiment=mnist_roar")
    assert list(cfg.protocol.percents) == [10, 20, 50, 70, 100] and cfg.protocol.retrain.epochs == 10
