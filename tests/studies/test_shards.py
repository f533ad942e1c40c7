"""The example check split into shard jobs (protocol.examples.shard) and merged by ``python -m experiments.shards``
gives the unsharded run's table; a missing or overlapping shard, or SimplEx on a shard, is refused."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from experiments.runner import run
from experiments.schema import ConfigError
from experiments.shards import main as merge
from labelfree.io import load_torch, save_torch

BASE = ("experiment=mnist_consistency", "scale=smoke", "protocol.features.enabled=false",
        "protocol.examples.explainers=[tracin,influence_functions,dknn]")


def test_two_shard_jobs_merge_into_the_table_of_one(compose_config, tmp_path):
    run(compose_config(*BASE), tmp_path / "whole")
    blocks = tmp_path / "blocks"
    for index in (1, 0):
        summary = run(compose_config(*BASE, "protocol.examples.shard.count=2", f"protocol.examples.shard.index={index}",
                                     f"protocol.examples.shard.dir={blocks}"), tmp_path / f"shard{index}")
        assert summary["examples_shard"]["index"] == index
        assert not (tmp_path / f"shard{index}" / "consistency_examples.csv").exists()
    expected = pd.read_csv(tmp_path / "whole" / "consistency_examples.csv")
    pd.testing.assert_frame_equal(pd.read_csv(merge([str(blocks)])), expected)

    first = sorted((blocks / "tracin").glob("*.pt"))[0]
    block = load_torch(first)
    first.unlink()  # a shard that did not finish
    with pytest.raises(ValueError, match=r"columns \[0, \d+\) of \d+ are missing"):
        merge([str(blocks)])
    save_torch(block, first)
    save_torch({**block, "stop": block["stop"] + 1, "scores": torch.cat([block["scores"], block["scores"][:, :1]], 1)},
               blocks / "tracin" / "columns_0-overlap.pt")  # a block of another split
    with pytest.raises(ValueError, match="overlaps"):
        merge([str(blocks)])


@pytest.mark.parametrize(("overrides", "message"), [
    (("protocol.examples.explainers=[tracin,simplex]",), "simplex.*cannot run on a shard"),
    (("protocol.examples.shard.index=2",), r"shard.index=2 is not accepted: expected an integer in \[0, 2\)"),
])
def test_bad_shard_settings_are_refused_before_training(compose_config, tmp_path, overrides, message):
    cfg = compose_config("experiment=mnist_consistency", "scale=smoke", "protocol.examples.shard.count=2", *overrides)
    with pytest.raises(ConfigError, match=message):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
