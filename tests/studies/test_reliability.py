"""Runs that fail early, never lie and never mix (runner and model cache): a diverging training caches
nothing, the cache key follows the data's content, a corrupt entry is reported, moved aside and retrained,
stale temporary files are cleaned, and one job at a time trains a key (the others wait and load)."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from experiments.cache import cache_lock, train_or_load
from experiments.runner import run
from labelfree.data.splits import build_dataset
from labelfree.guards import NonFiniteError
from labelfree.training import seed_everything

SMOKE = ("experiment=mnist_consistency", "scale=smoke")


def _data(cfg):
    return build_dataset(cfg.dataset, Path(cfg.paths.data_dir), seed=int(cfg.seed), purpose="features")


def _train(cfg):
    seed_everything(int(cfg.seed))  # as the runner does (Workbench.reseed): the model's initialisation is seeded
    model, checkpoints, info = train_or_load(cfg, _data(cfg))
    return model, checkpoints, info, checkpoints[0].path.parent.parent


def _models(cfg) -> list[Path]:
    return sorted(p for p in (Path(cfg.paths.cache_dir) / "models").glob("*") if p.is_dir())


def _same_weights(a, b):
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key])


def test_exploding_learning_rate_stops_the_run_and_caches_nothing(compose_config, tmp_path):
    cfg = compose_config(*SMOKE, "trainer.lr=1e2")
    with pytest.raises(NonFiniteError, match="non-finite parameters or buffers after epoch 1"):
        run(cfg, tmp_path / "run")
    assert not list(Path(cfg.paths.cache_dir).rglob("model.pt")) and not list(Path(cfg.paths.cache_dir).rglob("train.json"))
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_changed_data_file_changes_the_cache_key(compose_config, tiny_data_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "MNIST", data_dir / "MNIST")
    cfg = compose_config(*SMOKE, f"paths.data_dir={data_dir}")
    first = _train(cfg)
    images = data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    os.utime(images, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes: same key
    assert _train(cfg)[2]["cached"] is True
    raw = bytearray(gzip.decompress(images.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 256  # one pixel of one image changes
    images.write_bytes(gzip.compress(bytes(raw)))
    changed = _train(cfg)
    assert changed[2]["cached"] is False and changed[3] != first[3]
    assert changed[2]["key"] != first[2]["key"] and len(_models(cfg)) == 2
    assert {f["name"] for f in changed[2]["data_files"]} == {
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}


@pytest.mark.parametrize("damaged", ["model.pt", "train.json", "checkpoints/epoch_0001.pt"])
def test_a_corrupt_cache_entry_is_reported_moved_aside_and_retrained(compose_config, caplog, damaged):
    cfg = compose_config(*SMOKE)
    model, _, _, folder = _train(cfg)
    path = folder / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="experiments.cache"):
        again, checkpoints, info, same_folder = _train(cfg)
    assert f"cached model {folder} is unreadable" in caplog.text
    assert same_folder == folder and info["cached"] is False
    assert len(list(folder.parent.glob(f"{folder.name}.corrupt-*"))) == 1
    _same_weights(model, again)
    assert all(c.path.is_file() for c in checkpoints)
    assert _train(cfg)[2]["cached"] is True


def test_a_truncated_resume_state_is_reported_and_training_starts_afresh(compose_config, caplog):
    cfg = compose_config(*SMOKE)
    model, _, _, folder = _train(cfg)
    (folder / "model.pt").unlink()  # as if killed after the first epoch: no model yet, a resume state
    (folder / "train.json").unlink()
    last = folder / "checkpoints" / "last.pt"
    shutil.copy(folder / "checkpoints" / "epoch_0001.pt", last)
    last.write_bytes(last.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="labelfree.training"):
        again, _, info, _ = _train(cfg)
    assert f"cannot resume from {last}" in caplog.text and info["cached"] is False
    assert len(list(last.parent.glob("last.pt.corrupt-*"))) == 1 and not last.exists()
    _same_weights(model, again)


def test_stale_temporary_files_are_cleaned_when_the_entry_is_next_used(compose_config):
    cfg = compose_config(*SMOKE)
    folder = _train(cfg)[3]
    stale = [folder / ".model.pt.deadbeef.tmp", folder / "checkpoints" / ".last.pt.0badf00d.tmp"]
    for path in stale:
        path.write_bytes(b"killed mid-write")
    assert _train(cfg)[2]["cached"] is True
    assert not any(p.exists() for p in stale)


def test_a_second_job_waits_for_the_lock_then_loads(compose_config):
    cfg = compose_config(*SMOKE)
    data = _data(cfg)
    results: dict[str, dict] = {}

    def job(name):
        results[name] = train_or_load(cfg, data)[2]

    # a first job caches the model (its folder names the key's lock); then, while the test holds that lock,
    # a second job with the same key must wait, and load the cached model once the lock is free
    first = threading.Thread(target=job, args=("first",))
    first.start()
    first.join(timeout=60)
    folder = next(iter(_models(cfg)))
    with cache_lock(folder):
        waiting = threading.Thread(target=job, args=("waiting",))
        waiting.start()
        time.sleep(1.0)
        assert waiting.is_alive(), "a second job must wait while another holds the key's lock"
    waiting.join(timeout=60)
    assert results["first"]["cached"] is False and results["waiting"]["cached"] is True

    # two jobs on a fresh key at once: exactly one trains, the other loads what it cached
    cfg2 = compose_config(*SMOKE, "seed=7")
    data2 = _data(cfg2)
    infos = []
    threads = [threading.Thread(target=lambda: infos.append(train_or_load(cfg2, data2)[2])) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(info["cached"] for info in infos) == [False, True]
    assert infos[0]["history"] == infos[1]["history"]
