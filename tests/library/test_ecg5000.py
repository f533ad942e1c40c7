"""ECG5000: the offline loader, the paper's two splits, the LSTM autoencoder and its explanations."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from labelfree.attribution.examples import Objective
from labelfree.attribution.features import LabelFreeAttribution
from labelfree.data.ecg5000 import (
    ECG_CLASS_COUNTS,
    ECG_N,
    NORMAL_CLASS,
    binary_labels,
    example_split,
    feature_split,
    load_ecg5000,
)
from labelfree.data.errors import DataNotFoundError
from labelfree.data.subsets import balanced_subset
from labelfree.metrics import mask_features, top_feature_mask
from labelfree.models.lstm import LSTMAutoEncoder, LSTMLayer
from tests.fixtures.ecg5000 import make_ecg_like, write_ecg5000, write_ucr_file

N_TRAIN, N_TEST = 40, 60


@pytest.fixture(scope="module")
def ecg_dir(tmp_path_factory) -> Path:
    return write_ecg5000(tmp_path_factory.mktemp("ecg"), n_train=N_TRAIN, n_test=N_TEST, fmt="tsv", seed=0)


@pytest.fixture(scope="module")
def ecg(ecg_dir) -> tuple[torch.Tensor, torch.Tensor]:
    return load_ecg5000(ecg_dir)


def tiny_model(seed: int = 0, length: int = 12, dtype: torch.dtype = torch.float64) -> LSTMAutoEncoder:
    torch.manual_seed(seed)
    return LSTMAutoEncoder(sequence_length=length, hidden_size=6, latent_dim=4).to(dtype)


# ----------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------


def test_load_shapes_dtypes_and_order(ecg):
    x, y = ecg
    assert x.shape == (N_TRAIN + N_TEST, 140, 1) and x.dtype == torch.float32
    assert y.shape == (N_TRAIN + N_TEST,) and y.dtype == torch.int64
    train_beats, train_labels = make_ecg_like(N_TRAIN, seed=0)
    test_beats, test_labels = make_ecg_like(N_TEST, seed=1)
    torch.testing.assert_close(x[:, :, 0], torch.from_numpy(np.concatenate([train_beats, test_beats])), rtol=0, atol=0)
    assert torch.equal(y, torch.from_numpy(np.concatenate([train_labels, test_labels])))
    assert set(y.tolist()) == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("fmt", ["txt", "arff"])
def test_every_format_loads_to_the_same_tensors(tmp_path, ecg, fmt):
    x, y = load_ecg5000(write_ecg5000(tmp_path, n_train=N_TRAIN, n_test=N_TEST, fmt=fmt, seed=0))
    assert torch.equal(x, ecg[0]) and torch.equal(y, ecg[1])


def test_tsv_is_preferred_and_results_are_fresh_copies(tmp_path, ecg):
    root = write_ecg5000(tmp_path, n_train=N_TRAIN, n_test=N_TEST, fmt="tsv", seed=0)
    (root / "ECG5000" / "ECG5000_TRAIN.txt").write_text("not a UCR file\n")  # ignored: .tsv comes first
    x, y = load_ecg5000(root)
    assert torch.equal(x, ecg[0])
    x.zero_()
    y.zero_()
    again_x, again_y = load_ecg5000(root)
    assert torch.equal(again_x, ecg[0]) and torch.equal(again_y, ecg[1])


def test_rewritten_file_is_read_again(tmp_path):
    root = write_ecg5000(tmp_path, n_train=10, n_test=10, seed=0)
    first, _ = load_ecg5000(root)
    beats, labels = make_ecg_like(10, seed=5)
    path = write_ucr_file(root / "ECG5000" / "ECG5000_TRAIN.tsv", beats, labels, "tsv")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second, _ = load_ecg5000(root)
    assert torch.equal(second[:10, :, 0], torch.from_numpy(beats)) and not torch.equal(first, second)


def test_missing_files_name_the_files_and_the_folder(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_ecg5000(tmp_path)
    message = str(info.value)
    assert "ECG5000_TRAIN.{tsv,txt,arff}" in message and "ECG5000_TEST.{tsv,txt,arff}" in message
    assert str(tmp_path / "ECG5000") in message and "UCR" in message
    assert isinstance(info.value, FileNotFoundError)

    root = write_ecg5000(tmp_path / "half", n_train=5, n_test=5)
    (root / "ECG5000" / "ECG5000_TEST.tsv").unlink()
    with pytest.raises(DataNotFoundError, match="ECG5000_TEST") as info:
        load_ecg5000(root, download=True)
    assert "ECG5000_TRAIN" not in str(info.value).split("looked for")[1].split(".")[0]


def _corrupt(lines: list[str], how: str) -> list[str]:
    if how == "short_row":
        lines[3] = "\t".join(lines[3].split("\t")[:-1])
    elif how == "all_rows_short":
        lines = ["\t".join(line.split("\t")[:-1]) for line in lines]
    elif how == "bad_label":
        lines[2] = "\t".join(["7", *lines[2].split("\t")[1:]])
    elif how == "nan":
        fields = lines[1].split("\t")
        fields[10] = "nan"
        lines[1] = "\t".join(fields)
    elif how == "text":
        lines[0] = lines[0].replace("\t", "\tabc\t", 1)
    return lines


@pytest.mark.parametrize("how", ["short_row", "all_rows_short", "bad_label", "nan", "text"])
def test_malformed_file_is_a_value_error_naming_it(tmp_path, how):
    root = write_ecg5000(tmp_path, n_train=6, n_test=6)
    path = root / "ECG5000" / "ECG5000_TEST.tsv"
    path.write_text("\n".join(_corrupt(path.read_text().splitlines(), how)) + "\n")
    with pytest.raises(ValueError, match="ECG5000_TEST.tsv"):
        load_ecg5000(root)


def test_arff_without_data_section_is_a_value_error(tmp_path):
    root = write_ecg5000(tmp_path, n_train=6, n_test=6, fmt="arff")
    path = root / "ECG5000" / "ECG5000_TRAIN.arff"
    path.write_text(path.read_text().replace("@data", "@nodata"))
    with pytest.raises(ValueError, match="no @data section"):
        load_ecg5000(root)


# ----------------------------------------------------------------------------------------------
# Labels and splits
# ----------------------------------------------------------------------------------------------


def test_binary_labels():
    assert binary_labels(torch.tensor([1, 2, 3, 4, 5, 1])).tolist() == [0, 1, 1, 1, 1, 0]
    assert NORMAL_CLASS == 1
    with pytest.raises(ValueError, match="already binary"):
        binary_labels(torch.tensor([0, 1]))


def test_feature_split(ecg):
    x, y = ecg
    split = feature_split(x, y, val_fraction=0.2, seed=3)
    n_normal = int((y == 1).sum())
    assert (split["train_class"] == 1).all() and (split["val_class"] == 1).all()
    assert (split["test_class"] != 1).all() and len(split["test_x"]) == len(y) - n_normal
    assert (split["train_y"] == 0).all() and (split["test_y"] == 1).all()
    assert len(split["val_x"]) == round(0.2 * n_normal) and len(split["train_x"]) + len(split["val_x"]) == n_normal
    assert set(split["train_idx"].tolist()).isdisjoint(split["val_idx"].tolist())
    torch.testing.assert_close(split["train_x"], x[split["train_idx"]])
    assert split["baseline"].shape == (140, 1)
    torch.testing.assert_close(split["baseline"], x[split["train_idx"]].mean(dim=0))
    again = feature_split(x, y, val_fraction=0.2, seed=3)
    assert all(torch.equal(split[key], again[key]) for key in split)
    other = feature_split(x, y, val_fraction=0.2, seed=4)
    assert not torch.equal(split["val_idx"], other["val_idx"])


def test_example_split(ecg):
    x, y = ecg
    n = len(y)
    split = example_split(x, y, test_fraction=0.2, seed=0)
    assert len(split["test_x"]) == round(0.2 * n) and len(split["train_x"]) == n - round(0.2 * n)
    assert len(split["val_x"]) == 0
    covered = torch.cat([split["train_idx"], split["val_idx"], split["test_idx"]]).sort().values
    assert torch.equal(covered, torch.arange(n))
    for part in ("train", "test"):
        torch.testing.assert_close(split[f"{part}_x"], x[split[f"{part}_idx"]])
        assert torch.equal(split[f"{part}_y"], binary_labels(y[split[f"{part}_idx"]]))
        assert set(split[f"{part}_y"].tolist()) <= {0, 1}
    again = example_split(x, y, test_fraction=0.2, seed=0)
    assert all(torch.equal(split[key], again[key]) for key in split)
    with_val = example_split(x, y, test_fraction=0.2, seed=0, val_fraction=0.25)
    assert len(with_val["val_x"]) == round(0.25 * (n - round(0.2 * n)))
    assert torch.equal(with_val["test_idx"], split["test_idx"])
    # the lead's balanced subsets on the binary labels
    subset = balanced_subset(split["train_y"], n_per_class=10, seed=0)
    assert torch.bincount(split["train_y"][subset]).tolist() == [10, 10]


# ----------------------------------------------------------------------------------------------
# The LSTM autoencoder
# ----------------------------------------------------------------------------------------------


def test_lstm_layer_matches_nn_lstm():
    torch.manual_seed(0)
    reference = nn.LSTM(3, 5, batch_first=True).double()
    layer = LSTMLayer.from_torch(reference)
    x = torch.randn(4, 9, 3, dtype=torch.float64, requires_grad=True)
    expected, (h_n, _) = reference(x)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x, return_sequence=False), h_n[0])
    (grad_ref,) = torch.autograd.grad(expected.sum(), x)
    (grad_mine,) = torch.autograd.grad(layer(x).sum(), x)
    torch.testing.assert_close(grad_mine, grad_ref)
    z = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(layer.forward_repeated(z, 7), layer(z[:, None].expand(-1, 7, -1)))


def test_autoencoder_shapes_and_loss():
    model = LSTMAutoEncoder()  # the paper's sizes
    x = torch.randn(3, 140, 1)
    assert model.encoder(x).shape == (3, 64)
    assert model(x).shape == (3, 140, 1)
    assert model.represent(x).shape == (3, 64)
    loss = model.pretext_loss(x)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, (model(x) - x).abs().mean(dim=(1, 2)))
    torch.testing.assert_close(model.pretext_loss(x, perturb=True), loss)
    with pytest.raises(ValueError, match=r"\[n, 140, 1\]"):
        model(torch.randn(3, 1, 140))


def test_tiny_autoencoder_learns_the_fixture(ecg):
    x, _ = ecg
    x = x[:, ::10]  # 14 time steps keep the test fast
    torch.manual_seed(0)
    model = LSTMAutoEncoder(sequence_length=14, hidden_size=16, latent_dim=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(90):
        optimizer.zero_grad()
        model.pretext_loss(x).mean().backward()
        optimizer.step()
    with torch.no_grad():
        trained = float(model.pretext_loss(x).mean())
    # better than the best input-independent reconstruction (the per-step median beat): the 8-d
    # representation carries information about each beat
    mean_beat = float((x - x.median(dim=0).values).abs().mean())
    assert trained < 0.9 * mean_beat


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, state: dict[str, torch.Tensor], training: bool) -> None:
    assert all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())
    assert all(module.training == training for module in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_per_example_grads_match_an_autograd_loop():
    model = tiny_model()
    model.train()
    state = _state(model)
    x = torch.randn(5, 12, 1, dtype=torch.float64)
    with warnings.catch_warnings():
        # nn.LSTM would hit vmap's slow per-example fallback here ("performance drop")
        warnings.simplefilter("error", UserWarning)
        grads = Objective(model).per_example_grads(x, chunk_size=2)
    params = list(model.encoder.parameters())
    assert grads.shape == (5, sum(p.numel() for p in params))
    for i in range(5):
        expected = torch.autograd.grad(model.pretext_loss(x[i : i + 1])[0], params)
        torch.testing.assert_close(grads[i], torch.cat([g.reshape(-1) for g in expected]))
    _assert_unchanged(model, state, training=True)


def test_hvp_matches_autograd_double_backward():
    model = tiny_model(seed=1)
    model.eval()
    state = _state(model)
    x = torch.randn(4, 12, 1, dtype=torch.float64)
    objective = Objective(model)
    vectors = torch.randn(objective.n_params, 3, dtype=torch.float64)
    products = objective.hvp(x, vectors, vector_chunk_size=2)
    params = list(model.encoder.parameters())
    gradient = torch.autograd.grad(model.pretext_loss(x).mean(), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in gradient])
    expected = torch.stack(
        [
            torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat @ v, params, retain_graph=True)])
            for v in vectors.T
        ],
        dim=1,
    )
    assert products.shape == (objective.n_params, 3)
    torch.testing.assert_close(products, expected)
    _assert_unchanged(model, state, training=False)


def test_split_hessian_through_the_lstm_equals_the_direct_product():
    """The LSTM autoencoder's Hessian split at the 4-d code (the decoder skipped per column) is exact."""
    model = tiny_model(seed=2)
    x = torch.randn(5, 12, 1, dtype=torch.float64)
    objective = Objective(model)
    vectors = torch.randn(objective.n_params, 6, dtype=torch.float64)
    operator = objective.hessian(x, example_chunk_size=2, vector_chunk_size=3, split=True)
    assert operator.split
    direct = objective.hvp(x, vectors, example_chunk_size=2, vector_chunk_size=3, split=False)
    torch.testing.assert_close(operator.matmul(vectors), direct, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 2])
def test_written_hessian_equals_autograd_reverse_over_reverse(chunk):
    """The LSTM autoencoder's written-out second-order product (labelfree.models.lstm_hessian) is autograd's
    product, to float64 rounding: weighted examples, several columns, pieces of the batch, two channels."""
    torch.manual_seed(3)
    model = LSTMAutoEncoder(sequence_length=9, n_channels=2, hidden_size=6, latent_dim=4).double().eval()
    x = torch.randn(5, 9, 2, dtype=torch.float64)
    weights = torch.rand(5, dtype=torch.float64)
    objective = Objective(model)
    vectors = torch.randn(objective.n_params, 3, dtype=torch.float64)
    operator = objective.hessian(x, weights=weights, example_chunk_size=chunk, written=True)
    assert operator.written and not operator.split
    direct = objective.hvp(x, vectors, weights=weights, example_chunk_size=chunk, written=False, split=False)
    torch.testing.assert_close(operator.matmul(vectors), direct, rtol=1e-10, atol=1e-13)
    # auto takes it for the model's own loss; the mean by default
    auto = objective.hessian(x)
    assert auto.written
    torch.testing.assert_close(auto.matmul(vectors), objective.hvp(x, vectors, written=False, split=False),
                               rtol=1e-10, atol=1e-13)


def test_written_hessian_falls_back_where_it_does_not_apply():
    """Another loss, other parameters, a subclass whose loss differs: auto takes autograd's product (checked
    on a probe), written=True names the reason."""
    model = tiny_model(seed=4).eval()
    x = torch.randn(3, 12, 1, dtype=torch.float64)
    squared = Objective(model, loss=lambda m, xb: (m(xb) - xb).pow(2).flatten(1).mean(1))
    assert not squared.hessian(x).written
    with pytest.raises(ValueError, match="not the model's pretext loss"):
        squared.hessian(x, written=True)
    decoder = Objective(model, wrt="decoder")
    assert not decoder.hessian(x).written
    with pytest.raises(ValueError, match="writes out no Hessian in 'decoder'"):
        decoder.hessian(x, written=True)
    with pytest.raises(ValueError, match="exclude each other"):
        Objective(model).hessian(x, written=True, split=True)

    class Squared(LSTMAutoEncoder):
        def pretext_loss(self, x, y=None, perturb=False):
            return (self(x) - x).pow(2).flatten(1).mean(dim=1)

    torch.manual_seed(4)
    other = Squared(sequence_length=12, hidden_size=6, latent_dim=4).double().eval()
    objective = Objective(other)
    assert not objective.hessian(x).written
    with pytest.raises(ValueError, match="differs from autograd's"):
        objective.hessian(x, written=True)


# ----------------------------------------------------------------------------------------------
# Feature importance on time series
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 1.0])
def test_time_series_mask_and_baseline(fraction):
    n, steps = 6, 140
    attributions = torch.randn(n, steps, 1)
    mask = top_feature_mask(attributions, fraction, channel_dim=-1)
    assert mask.shape == attributions.shape
    assert (mask.sum(dim=(1, 2)) == round(fraction * steps)).all()
    # the masked steps are the ones with the largest |attribution|
    k = round(fraction * steps)
    top = attributions.abs()[..., 0].topk(k, dim=1).indices
    assert mask[..., 0].gather(1, top).all()
    inputs = torch.randn(n, steps, 1)
    baseline = torch.linspace(-1.0, 1.0, steps)[:, None]  # [T, 1], like the mean normal beat
    masked = mask_features(inputs, mask, baseline)
    expanded = baseline.expand_as(inputs)
    assert torch.equal(masked[mask], expanded[mask]) and torch.equal(masked[~mask], inputs[~mask])


def test_label_free_integrated_gradients_on_the_lstm_encoder(ecg):
    model = tiny_model(seed=2, length=20)
    model.eval()
    x = ecg[0][:4, ::7].double()  # [4, 20, 1]
    baseline = x.mean(dim=0, keepdim=True)  # [1, T, 1]: one baseline sequence for every beat
    explainer = LabelFreeAttribution(IntegratedGradients(model.encoder))
    attributions = explainer.attribute(x, baselines=baseline.expand_as(x), n_steps=100)
    assert attributions.shape == x.shape
    with torch.no_grad():
        h = model.encoder(x)
        expected = (h * h).sum(dim=1) - (h * model.encoder(baseline.expand_as(x))).sum(dim=1)
    torch.testing.assert_close(attributions.sum(dim=(1, 2)), expected, rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_ecg5000():
    data_dir = os.environ.get("LABELFREE_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "ECG5000").is_dir():
        pytest.skip("LABELFREE_DATA_DIR unset or without ECG5000/")
    x, y = load_ecg5000(data_dir)
    assert x.shape == (ECG_N, 140, 1) and x.dtype == torch.float32 and not torch.isnan(x).any()
    assert torch.bincount(y, minlength=6)[1:].tolist() == list(ECG_CLASS_COUNTS.values())
    split = feature_split(x, y, val_fraction=0.2, seed=42)
    assert len(split["train_x"]) + len(split["val_x"]) == ECG_CLASS_COUNTS[1]
    assert len(split["test_x"]) == ECG_N - ECG_CLASS_COUNTS[1]
    examples = example_split(x, y, test_fraction=0.2, seed=42)
    assert len(examples["train_x"]) == 4000 and len(examples["test_x"]) == 1000
    assert int(torch.bincount(examples["train_y"]).min()) >= 500
