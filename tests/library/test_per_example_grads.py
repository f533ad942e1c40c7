"""Per-example gradients by probes (one batched backward, labelfree/attribution/examples/per_example.py) against
vmap and an explicit per-example loop, on small LSTM autoencoders and Linear models."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import Tensor, nn

from labelfree.attribution.examples import InfluenceFunctions, LiSSA, Objective, TracIn
from labelfree.models import PretextModel
from labelfree.models.lstm import LSTMAutoEncoder, LSTMLayer
from tests.library.test_examples import LinearAutoEncoder, TinyClassifier, mnist_autoencoder


def small_lstm(seed: int = 0, dtype: torch.dtype = torch.float64) -> LSTMAutoEncoder:
    torch.manual_seed(seed)
    return LSTMAutoEncoder(sequence_length=9, n_channels=2, hidden_size=5, latent_dim=3).to(dtype)


def beats(n: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(n, 9, 2, generator=torch.Generator().manual_seed(seed)).to(dtype)


def loop_grads(model: nn.Module, x: Tensor, names: list[str], y: Tensor | None = None) -> Tensor:
    """One ``torch.autograd.grad`` per example of the clean pretext loss, w.r.t. the named parameters."""
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(x)):
        loss = model.pretext_loss(x[i : i + 1], None if y is None else y[i : i + 1])[0]
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        rows.append(torch.cat([torch.zeros_like(params[n]).flatten() if g is None else g.flatten()
                               for n, g in zip(names, grads)]))
    return torch.stack(rows)


@pytest.mark.parametrize("wrt", ["encoder", "", "decoder", ("encoder.lstm2.weight_hh", "decoder.output"),
                                 ("encoder.lstm1.bias_ih", "decoder.lstm1")])
def test_probes_equal_vmap_and_loop_on_an_lstm_autoencoder(wrt) -> None:  # noqa: ANN001
    model = small_lstm()
    x = beats(7)
    probes = Objective(model, wrt=wrt, per_example="probes")
    names = list(probes._named_parameters())
    grads = probes.per_example_grads(x, chunk_size=3)
    assert grads.shape == (7, probes.n_params) and grads.dtype == torch.float64
    vmapped = Objective(model, wrt=wrt, per_example="vmap").per_example_grads(x, chunk_size=4)
    torch.testing.assert_close(grads, vmapped, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads, loop_grads(model, x, names), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(probes.per_example_grads(x, chunk_size=64), grads, rtol=1e-10, atol=1e-12)


def test_auto_takes_the_probes_for_the_lstm_and_leaves_the_model_unchanged(monkeypatch) -> None:  # noqa: ANN001
    model = small_lstm().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("vmap was used")

    monkeypatch.setattr("labelfree.attribution.examples.objective.vmap", refuse)
    grads = Objective(model).per_example_grads(beats(4))
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0
    assert model.training and all(m.training for m in model.modules())
    assert all(getattr(m, "_per_example_records", None) is None for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())


def test_probes_in_float32_agree_with_vmap() -> None:
    model = small_lstm(dtype=torch.float32)
    x = beats(6, dtype=torch.float32)
    grads = Objective(model, per_example="probes").per_example_grads(x)
    vmapped = Objective(model, per_example="vmap").per_example_grads(x)
    assert grads.dtype == torch.float32
    torch.testing.assert_close(grads, vmapped, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_factory", [LinearAutoEncoder, TinyClassifier])
def test_probes_on_linear_models(model_factory) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = model_factory().double()
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (6,)) if model.uses_labels else None
    for wrt in ("encoder", ""):
        probes = Objective(model, wrt=wrt, per_example="probes")
        expected = loop_grads(model, x, list(probes._named_parameters()), y)
        torch.testing.assert_close(probes.per_example_grads(x, y, chunk_size=4), expected, rtol=1e-10, atol=1e-12)


def test_tracin_scores_equal_with_probes_vmap_and_a_loop() -> None:
    model = small_lstm()
    train, test = beats(6, seed=2), beats(4, seed=3)
    checkpoints = [(small_lstm(seed).state_dict(), lr) for seed, lr in [(5, 0.5), (6, 2.0)]]
    scores = {method: TracIn(Objective(model, per_example=method), checkpoints, chunk_size=4).fit(train)
              .attribute(test) for method in ("probes", "vmap")}
    expected = torch.zeros(4, 6, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters() if n.startswith("encoder.")]
    for state, lr in checkpoints:
        at = copy.deepcopy(model)
        at.load_state_dict(state)
        expected += lr * loop_grads(at, test, names) @ loop_grads(at, train, names).T
    torch.testing.assert_close(scores["probes"], expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(scores["vmap"], expected, rtol=1e-10, atol=1e-14)


def test_influence_functions_run_through_the_lstm_with_either_path() -> None:
    model = small_lstm()
    train, test = beats(8, seed=2), beats(3, seed=3)
    scores = [InfluenceFunctions(Objective(model, per_example=method), LiSSA(depth=3, batch_size=4), seed=0,
                                 hvp_chunk_size=4).fit(train).attribute(test) for method in ("probes", "vmap")]
    assert torch.isfinite(scores[0]).all()
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-9, atol=1e-14)


class _Penalised(LSTMAutoEncoder):
    """The pretext loss plus a penalty on a differentiated parameter: a use no probe sees."""

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        return super().pretext_loss(x, y, perturb) + 1e-3 * self.encoder.lstm1.weight_hh.square().sum()


class _Coupled(LSTMAutoEncoder):
    """Each example's loss depends on the whole batch (its representation centred on the batch mean)."""

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        z = self.encoder(x)
        return (self.decoder(z - z.mean(0, keepdim=True)) - x).abs().flatten(1).mean(1)


@pytest.mark.parametrize("model_class", [_Penalised, _Coupled])
def test_a_use_the_probes_miss_falls_back_to_vmap(model_class, caplog) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = model_class(sequence_length=9, n_channels=2, hidden_size=5, latent_dim=3).double()
    x = beats(5)
    with caplog.at_level(logging.INFO, logger="labelfree.attribution.examples.objective"):
        grads = Objective(model).per_example_grads(x)
    assert "fall back to vmap" in caplog.text
    torch.testing.assert_close(grads, Objective(model, per_example="vmap").per_example_grads(x), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="differs from its own gradient"):
        Objective(model, per_example="probes").per_example_grads(x)


class _Tied(PretextModel):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 4)
        self.decoder.weight = self.encoder.weight

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        return (self.decoder(self.encoder(x)) - x).pow(2).mean(1)


@pytest.mark.parametrize(("build", "shape", "reason"), [(lambda: mnist_autoencoder(0), (1, 28, 28), "belongs to a Conv2d"),
                                                      (_Tied, (4,), "shared by several modules")])
def test_probes_decline_what_they_cannot_do(build, shape, reason) -> None:  # noqa: ANN001
    model = build()
    x = torch.rand(2, *shape)
    with pytest.raises(ValueError, match=reason):
        Objective(model, per_example="probes").per_example_grads(x)
    vmapped = Objective(model, per_example="vmap").per_example_grads(x)
    torch.testing.assert_close(Objective(model).per_example_grads(x), vmapped, rtol=0, atol=0)  # auto: vmap


def test_tied_weights_take_vmap_and_match_the_loop() -> None:
    torch.manual_seed(0)
    model = _Tied().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    names = ["encoder.weight", "encoder.bias"]
    torch.testing.assert_close(Objective(model).per_example_grads(x), loop_grads(model, x, names), rtol=1e-10, atol=0)


def test_per_example_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="per_example must be one of"):
        Objective(small_lstm(), per_example="fast")


def test_recorded_lstm_layer_has_the_same_function_and_gradients() -> None:
    torch.manual_seed(0)
    layer = LSTMLayer(3, 4).double()
    x = torch.randn(5, 6, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(5, 6, 4, dtype=torch.float64)
    plain = layer(x)
    expected = torch.autograd.grad((plain * weights).sum(), [x, *layer.parameters()])
    records: list = []
    layer.record_per_example(records)
    try:
        recorded = layer(x)
        got = torch.autograd.grad((recorded * weights).sum(), [x, *layer.parameters()])
    finally:
        layer.record_per_example(None)
    assert len(records) == 1 and records[0].probe.shape == (5, 6, 16)
    torch.testing.assert_close(recorded, plain, rtol=1e-12, atol=1e-14)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
