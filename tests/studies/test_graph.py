"""The graph study's config checks: wrong settings stop before any data is loaded or model trained."""

from __future__ import annotations

import pytest

from experiments.runner import run
from experiments.schema import ConfigError, check_config


@pytest.mark.parametrize(("override", "message"), [
    ("protocol.features.n_nodes=0", "protocol.features.n_nodes"),
    ("dataset.val_edge_fraction=1.5", "dataset.val_edge_fraction"),
    ("model.hidden_dim=0", "model.hidden_dim"),
    ("protocol.examples.n_train=-3", "protocol.examples.n_train"),
])
def test_schema_refuses_bad_graph_settings(compose_config, override, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config("experiment=cora_consistency", "scale=smoke", override))


@pytest.mark.parametrize(("override", "message"), [
    ("protocol.features.targets=[tokens]", "protocol.features.targets"),
    ("protocol.figure.method=occlusion", "protocol.figure.method"),
    ("dataset.baseline={kind: mean_train}", "dataset.baseline"),
])
def test_study_refuses_bad_graph_settings_before_training(compose_config, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run(compose_config("experiment=cora_consistency", "scale=smoke", override), tmp_path / "run")
    assert not (tmp_path / "cache").exists()  # nothing was trained
