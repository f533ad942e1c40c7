"""Runs that fail early and never lie (library floor): the finiteness guard, loaders that refuse inf, training
that stops on a non-finite loss, parameter or buffer, resume states that restore every random generator or are
moved aside when unreadable, atomic writes with the umask's permissions, stale temporary files, data fingerprints."""

from __future__ import annotations

import logging
import os
import random
import stat

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from labelfree import io
from labelfree.data.dsprites import load_dsprites
from labelfree.data.ecg5000 import feature_split, load_ecg5000
from labelfree.data.splits import build_dataset
from labelfree.guards import NonFiniteError, check_finite, nonfinite_entries
from labelfree.io import atomic_path, fingerprint_files, load_torch, remove_stale_tmp, save_csv, save_torch
from labelfree.protocols.consistency import consistency_examples
from labelfree.training import TrainConfig, TrainingDivergedError, rng_state, set_rng_state, train
from tests.fixtures.dsprites import write_dsprites_npz
from tests.fixtures.ecg5000 import write_ecg5000
from tests.fixtures.models import make_model, small_data


# ------------------------------------------------------------------------------------------ check_finite
def test_check_finite_passes_finite_values_through_unchanged():
    x = torch.randn(3, 4)
    assert check_finite("x", x) is x
    frame = pd.DataFrame({"method": ["a", "b"], "value": [0.5, 1.0], "n": [3, 4]})
    assert check_finite("table", frame) is frame
    assert check_finite("ints", torch.arange(5)) is not None
    assert check_finite("number", 1.5) == 1.5


def test_check_finite_names_what_and_where():
    x = torch.zeros(2, 3)
    x[1, 2] = float("inf")
    with pytest.raises(NonFiniteError, match=r"attributions by Saliency holds non-finite numbers: 0 NaN and 1 infinite of 6 values \(first at \(1, 2\)\)"):
        check_finite("attributions by Saliency", x)
    assert issubclass(NonFiniteError, ValueError)
    with pytest.raises(NonFiniteError, match=r"scores\['tracin'\]"):
        check_finite("scores", {"dknn": torch.ones(2), "tracin": torch.tensor([float("nan")])})
    with pytest.raises(NonFiniteError, match="x"):
        check_finite("x", np.array([1.0, -np.inf]))


def test_check_finite_frames_allow_documented_nan_but_never_inf():
    frame = pd.DataFrame({"metric": ["pearson", "pearson_pooled"], "value": [0.8, 0.7], "std": [0.1, float("nan")]})
    with pytest.raises(NonFiniteError, match=r"column 'std': 1 NaN value\(s\) \(rows \[1\]\)"):
        check_finite("disvae.csv", frame)
    assert check_finite("disvae.csv", frame, allow_nan=("std",)) is frame
    assert check_finite("disvae.csv", frame, allow_nan=True) is frame
    with_nan = torch.tensor([1.0, float("nan")])
    assert check_finite("correlations", with_nan, allow_nan=True) is with_nan
    with pytest.raises(NonFiniteError, match="1 infinite"):
        check_finite("correlations", torch.tensor([float("nan"), float("-inf")]), allow_nan=True)
    frame.loc[0, "value"] = float("inf")
    for allow in (True, ("std", "value")):
        with pytest.raises(NonFiniteError, match="column 'value': 1 infinite"):
            check_finite("disvae.csv", frame, allow_nan=allow)


def test_nonfinite_entries_names_parameters_and_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert nonfinite_entries(model.state_dict()) == []
    model[1].running_var[0] = float("inf")
    model[0].bias.data[1] = float("nan")
    assert nonfinite_entries(model.state_dict()) == ["0.bias", "1.running_var"]


class InfiniteScores:
    """An example explainer whose scores overflow."""

    def fit(self, train_x, train_y=None):
        self.n = len(train_x)
        return self

    def attribute(self, test_x, test_y=None):
        scores = torch.zeros(len(test_x), self.n)
        scores[0, 0] = float("inf")
        return scores


def test_protocol_refuses_non_finite_scores():
    x, y = torch.zeros(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(NonFiniteError, match="example importance by broken"):
        consistency_examples({"broken": InfiniteScores()}, x, y, x[:2], y[:2], [50])


# ------------------------------------------------------------------------------------------ loaders
def test_inf_in_an_ecg5000_validation_beat_is_rejected_naming_the_file(tmp_path):
    root = write_ecg5000(tmp_path, n_train=20, n_test=30)
    x, classes = load_ecg5000(root)
    row = int(feature_split(x, classes, val_fraction=0.2, seed=0)["val_idx"][0])
    stem, line = ("ECG5000_TRAIN", row) if row < 20 else ("ECG5000_TEST", row - 20)
    path = root / "ECG5000" / f"{stem}.tsv"
    lines = path.read_text().splitlines()
    fields = lines[line].split("\t")
    fields[7] = "inf"
    lines[line] = "\t".join(fields)
    path.write_text("\n".join(lines) + "\n")
    config = {"name": "ecg5000", "val_fraction": 0.2, "test_fraction": 0.2, "baseline": 0.0}
    with pytest.raises(ValueError, match=rf"Malformed ECG5000 file .*{stem}\.tsv: infinite values in rows \[{line}\]"):
        build_dataset(config, root, seed=0, purpose="features")


def test_inf_in_dsprites_latents_is_rejected_naming_the_file(tmp_path):
    root = write_dsprites_npz(tmp_path, n=12)
    path = next((root / "dsprites").glob("*.npz"))
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["latents_values"][3, 2] = np.inf
    np.savez(path.with_suffix(""), **arrays)  # np.savez appends .npz
    with pytest.raises(ValueError, match=rf"{path.name}: latents_values holds NaN or infinite values \(rows \[3\]"):
        load_dsprites(root)


def test_splits_name_the_files_they_were_read_from(tiny_data_dir):
    config = {"name": "ecg5000", "val_fraction": 0.2, "test_fraction": 0.2, "baseline": 0.0}
    data = build_dataset(config, tiny_data_dir, seed=0, purpose="examples")
    assert [p.name for p in data.files] == ["ECG5000_TRAIN.tsv", "ECG5000_TEST.tsv"]


# ------------------------------------------------------------------------------------------ training
def test_exploding_learning_rate_stops_on_non_finite_buffers():
    """Adam at lr 1e2 overflows BatchNorm's running variance while the loss is still finite."""
    train_x, val_x = small_data()
    with pytest.raises(TrainingDivergedError, match=r"non-finite parameters or buffers after epoch 1 \(lr=100.0\): .*running_var"):
        train(make_model(), train_x, val_x, TrainConfig(epochs=3, batch_size=32, lr=1e2), seed=0)
    assert issubclass(TrainingDivergedError, NonFiniteError) and issubclass(TrainingDivergedError, RuntimeError)


def test_non_finite_validation_loss_stops_training():
    train_x, val_x = small_data()
    val_x[3, 0, 5, 5] = float("inf")
    with pytest.raises(TrainingDivergedError, match="validation loss became (nan|inf) at epoch 1"):
        train(make_model(), train_x, val_x, TrainConfig(epochs=3, batch_size=32), seed=0)


class Poisoned(nn.Module):
    """An identity perturbation whose buffer turns infinite in the second epoch (loss stays finite)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        if self.calls > 3:  # epoch 1: two training batches and one validation batch
            self.calls.fill_(float("inf"))
        return x


def test_non_finite_buffer_stops_training_before_it_is_saved(tmp_path):
    train_x, val_x = small_data()
    with pytest.raises(TrainingDivergedError, match=r"after epoch 2 .*: perturbation.calls"):
        train(make_model(Poisoned()), train_x, val_x, TrainConfig(epochs=3, batch_size=32), seed=0, checkpoint_dir=tmp_path)
    state = load_torch(tmp_path / "last.pt")
    assert state["epoch"] == 1 and not nonfinite_entries(state["model"])


def test_rng_state_round_trips_every_generator_through_weights_only_files(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # a cached Gaussian in both Python's and NumPy's state
    np.random.normal()
    generator = torch.Generator().manual_seed(4)
    save_torch(rng_state(generator), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator), random.gauss(0, 1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    other = torch.Generator().manual_seed(9)
    set_rng_state(load_torch(tmp_path / "rng.pt"), other)
    got = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=other), random.gauss(0, 1))
    assert got == expected


def test_truncated_resume_state_is_moved_aside_and_training_starts_afresh(tmp_path, caplog):
    train_x, val_x = small_data()
    config = TrainConfig(epochs=3, batch_size=32, checkpoint_every=1)
    fresh = make_model()
    train(fresh, train_x, val_x, config, seed=3, checkpoint_dir=tmp_path / "a")
    train(make_model(), train_x, val_x, TrainConfig(epochs=2, batch_size=32, checkpoint_every=1), seed=3,
          checkpoint_dir=tmp_path / "b")
    last = tmp_path / "b" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    again = make_model()
    with caplog.at_level(logging.WARNING, logger="labelfree.training"):
        result = train(again, train_x, val_x, config, seed=3, checkpoint_dir=tmp_path / "b")
    assert "cannot resume from" in caplog.text and str(last) in caplog.text
    assert len(list((tmp_path / "b").glob("last.pt.corrupt-*"))) == 1
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, again.state_dict()[key])


# ------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_umask_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = [save_csv(pd.DataFrame({"a": [1]}), tmp_path / "t.csv"), save_torch({"a": torch.ones(1)}, tmp_path / "m.pt")]
        with atomic_path(tmp_path / "raw.bin") as tmp:
            tmp.write_bytes(b"x")
        paths.append(tmp_path / "raw.bin")
    finally:
        os.umask(old)
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".model.pt.ab12cd34.tmp", tmp_path / "checkpoints" / ".last.pt.0f0f0f0f.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    kept = tmp_path / "model.pt"
    kept.write_bytes(b"whole")
    assert sorted(remove_stale_tmp(tmp_path)) == sorted(stale)
    assert kept.exists() and not any(p.exists() for p in stale)
    with atomic_path(tmp_path / "x.txt") as tmp:  # the names atomic_path uses are the ones cleaned
        assert tmp.name.startswith(".x.txt.") and tmp.name.endswith(".tmp")
        tmp.write_text("x")


def test_fingerprints_follow_content_and_are_remembered(tmp_path, monkeypatch):
    data = tmp_path / "data.bin"
    data.write_bytes(b"abc")
    memo = tmp_path / "memo.json"
    first = fingerprint_files([data], memo=memo)
    assert first == [{"name": "data.bin", "size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]
    calls = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda path, *a: calls.append(path) or real(path, *a))
    assert fingerprint_files([data], memo=memo) == first and calls == []  # remembered: not hashed again
    data.write_bytes(b"abd")
    assert fingerprint_files([data], memo=memo)[0]["sha256"] != first[0]["sha256"] and len(calls) == 1
    memo.write_text("{not json")
    assert fingerprint_files([data], memo=memo)[0]["size"] == 3  # an unreadable memo is ignored


def test_a_truncated_dsprites_archive_names_the_file(tmp_path):
    """np.load reads members lazily: a cut archive must still fail with the file named, not a bare BadZipFile."""
    from tests.fixtures.dsprites import write_dsprites_npz

    from labelfree.data.dsprites import load_dsprites

    root = write_dsprites_npz(tmp_path / "data", n=40, form="subset", seed=0)
    (path,) = [p for p in root.rglob("*.npz")]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-200:])  # the directory at the end survives, members do not
    with pytest.raises(ValueError, match=f"Corrupted dSprites file .*{path.name}"):
        load_dsprites(root)
