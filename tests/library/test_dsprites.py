"""The dSprites loader on tiny files in both real npz forms (official and subset), its errors, the seeded
subset draw, the optional download, and the ``dsprites`` builder's 90/10 split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelfree.data import DataNotFoundError
from labelfree.data.dsprites import DSPRITES_OFFICIAL, DSPRITES_SUBSET, LATENT_NAMES, load_dsprites
from labelfree.data.splits import build_dataset
from tests.fixtures.dsprites import make_dsprites_like, write_dsprites_npz

CONFIG = {"name": "dsprites", "n_examples": None, "test_fraction": 0.1, "val_fraction": 0.1, "baseline": 0.0,
          "channel_dim": 1, "download": False}


@pytest.mark.parametrize("form", ["official", "subset"])
def test_both_real_forms_load_with_their_latents(tmp_path, form):
    write_dsprites_npz(tmp_path, n=30, form=form, seed=4)
    imgs, classes, values = make_dsprites_like(30, seed=4)
    sprites = load_dsprites(tmp_path)
    assert sprites.source.name == (DSPRITES_OFFICIAL if form == "official" else DSPRITES_SUBSET)
    assert sprites.images.shape == (30, 1, 64, 64) and sprites.images.dtype == torch.float32
    assert set(sprites.images.unique().tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(sprites.images[:, 0].numpy(), imgs.astype(np.float32))
    np.testing.assert_array_equal(sprites.latents_classes.numpy(), classes)
    np.testing.assert_array_equal(sprites.latents_values.numpy(), values)
    assert sprites.latents_classes.shape == (30, len(LATENT_NAMES))
    torch.testing.assert_close(sprites.shapes, torch.from_numpy(classes[:, 1]))


def test_the_official_file_is_preferred_over_the_subset(tmp_path):
    write_dsprites_npz(tmp_path, n=12, form="subset", seed=0)
    write_dsprites_npz(tmp_path, n=20, form="official", seed=1)
    assert len(load_dsprites(tmp_path)) == 20


def test_missing_files_name_both_files_and_the_folder(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_dsprites(tmp_path)
    message = str(error.value)
    assert DSPRITES_OFFICIAL in message and DSPRITES_SUBSET in message and str(tmp_path / "dsprites") in message
    assert "LABELFREE_DATA_DIR" in message


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"imgs": np.zeros((3, 64, 64), np.uint8), "latents_classes": np.zeros((3, 6), np.int64)}, "latents_values"),
        ({"imgs": np.zeros((3, 32, 32), np.uint8), "latents_classes": np.zeros((3, 6)), "latents_values": np.zeros((3, 6))},
         "imgs has shape"),
        ({"imgs": np.zeros((3, 64, 64), np.uint8), "latents_classes": np.zeros((2, 6)), "latents_values": np.zeros((3, 6))},
         "latents_classes has shape"),
    ],
)
def test_corrupted_files_give_one_clear_error(tmp_path, arrays, message):
    folder = tmp_path / "dsprites"
    folder.mkdir()
    np.savez(folder / DSPRITES_SUBSET, **arrays)
    with pytest.raises(ValueError, match=message):
        load_dsprites(tmp_path)


def test_a_file_that_is_not_an_npz_is_reported(tmp_path):
    (tmp_path / "dsprites").mkdir()
    (tmp_path / "dsprites" / DSPRITES_SUBSET).write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="Corrupted dSprites file"):
        load_dsprites(tmp_path)


def test_n_examples_draws_a_seeded_subset_in_file_order(tmp_path):
    write_dsprites_npz(tmp_path, n=50, form="subset", seed=0)
    full = load_dsprites(tmp_path)
    first, again, other = (load_dsprites(tmp_path, n_examples=10, seed=s) for s in (3, 3, 4))
    torch.testing.assert_close(first.images, again.images)
    assert not torch.equal(first.latents_classes, other.latents_classes)
    # every drawn row is a row of the file, in file order
    index = [int(np.flatnonzero((full.latents_classes == row).all(dim=1).numpy())[0]) for row in first.latents_classes]
    assert index == sorted(index) and len(set(index)) == 10
    torch.testing.assert_close(first.images, full.images[index])
    with pytest.raises(ValueError, match="n_examples must be an integer in"):
        load_dsprites(tmp_path, n_examples=51)


def test_download_fetches_the_official_file_and_a_failed_download_is_a_data_error(tmp_path):
    source = write_dsprites_npz(tmp_path / "remote", n=9, form="official") / "dsprites" / DSPRITES_OFFICIAL
    target = tmp_path / "local"
    sprites = load_dsprites(target, download=True, url=source.as_uri())
    assert len(sprites) == 9 and (target / "dsprites" / DSPRITES_OFFICIAL).exists()
    with pytest.raises(DataNotFoundError, match="Download failed"):
        load_dsprites(tmp_path / "elsewhere", download=True, url=(tmp_path / "missing.npz").as_uri())


def test_builder_makes_a_seeded_90_10_split_with_validation_from_the_training_part(tmp_path):
    write_dsprites_npz(tmp_path, n=200, form="subset", seed=0)
    splits = build_dataset(CONFIG, tmp_path, seed=1)
    assert splits.name == "dsprites" and splits.baseline == 0.0 and splits.channel_dim == 1
    assert len(splits.test_x) == 20 and len(splits.val_x) == 18 and len(splits.train_x) == 162
    rows = torch.cat([splits.train_x, splits.val_x, splits.test_x]).flatten(1)
    assert torch.unique(rows, dim=0).shape[0] == torch.unique(load_dsprites(tmp_path).images.flatten(1), dim=0).shape[0]
    again, other = build_dataset(CONFIG, tmp_path, seed=1), build_dataset(CONFIG, tmp_path, seed=2)
    torch.testing.assert_close(splits.test_x, again.test_x)
    assert not torch.equal(splits.test_x, other.test_x)
    assert set(splits.train_y.unique().tolist()) <= {0, 1, 2}
    subset = build_dataset({**CONFIG, "n_examples": 100}, tmp_path, seed=1)
    assert len(subset.train_x) + len(subset.val_x) + len(subset.test_x) == 100
