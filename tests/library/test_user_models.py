"""A user's own models, without any labelfree model class: plain ``nn.Module`` encoders and autoencoders, a
per-example loss callable, checkpoints in the forms users save them, encoders returning tuples or dicts, tuple
inputs, train-mode encoders (issue 19, items 1 and 3)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, Saliency
from torch import Tensor, nn

import labelfree
from labelfree import (
    DKNN,
    Checkpoint,
    InfluenceFunctions,
    LabelFreeAttribution,
    LiSSA,
    Objective,
    SimplEx,
    TracIn,
    build_example_explainer,
)
from labelfree.models.autoencoder import AutoEncoder, MNISTDecoder, MNISTEncoder
from labelfree.models.pretext import Identity


class AE(nn.Module):
    """A user's autoencoder: plain ``nn.Module``, no ``uses_labels``, no ``pretext_loss``."""

    def __init__(self, dim: int = 6, latent: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, latent))
        self.decoder = nn.Linear(latent, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def reconstruction(model: nn.Module, x: Tensor, y: Tensor | None = None) -> Tensor:
    """Per-example squared reconstruction error ``[n]``."""
    return (model(x) - x).pow(2).mean(dim=1)


def scalar_loss(model: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
    return F.mse_loss(model(x), x)


def loop_grads(model: nn.Module, loss, x: Tensor, y: Tensor | None = None) -> Tensor:  # noqa: ANN001
    """Per-example gradients by plain autograd, one example at a time, in eval mode."""
    model = copy.deepcopy(model).eval()
    params = list(model.encoder.parameters())
    rows = []
    for i in range(len(x)):
        value = loss(model, x[i : i + 1], None if y is None else y[i : i + 1])[0]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)]))
    return torch.stack(rows)


@pytest.fixture
def data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, 6, generator=g), torch.randn(3, 6, generator=g)


def _model(seed: int = 0) -> AE:
    torch.manual_seed(seed)
    return AE()


# ------------------------------------------------------------------------------------------- objective
def test_plain_module_with_a_loss_callable_matches_autograd(data) -> None:  # noqa: ANN001
    train_x, _ = data
    model = _model()
    objective = Objective(model, loss=reconstruction)
    torch.testing.assert_close(objective.per_example_grads(train_x), loop_grads(model, reconstruction, train_x))


def test_plain_module_without_a_loss_says_what_to_give() -> None:
    with pytest.raises(TypeError, match=r"has no pretext_loss.*loss\(model, x, y\) -> Tensor\[n\]"):
        Objective(_model())


def test_scalar_loss_names_the_shape_expected(data) -> None:  # noqa: ANN001
    objective = Objective(_model(), loss=scalar_loss)
    with pytest.raises(ValueError, match=r"shape \[n\] = \[1\].*shape \[\].*reduction='none'"):
        objective.per_example_grads(data[0])
    with pytest.raises(ValueError, match=r"shape \[n\] = \[7\]"):
        objective.hvp(data[0], torch.randn(objective.n_params, 2))


def test_wrong_shape_loss_is_named(data) -> None:  # noqa: ANN001
    objective = Objective(_model(), loss=lambda m, x, y: (m(x) - x).pow(2))
    with pytest.raises(ValueError, match=r"shape \[1, 6\]"):
        objective.per_example_grads(data[0])


def test_two_argument_loss_never_takes_labels_and_labels_given_warn(data) -> None:  # noqa: ANN001
    train_x, test_x = data
    model = _model()
    objective = Objective(model, loss=lambda m, x: (m(x) - x).pow(2).mean(1))
    assert objective.uses_labels is False
    explainer = TracIn(objective, [model.state_dict()])
    with pytest.warns(UserWarning, match="train_y is ignored"):
        explainer.fit(train_x, torch.zeros(len(train_x)))
    assert explainer.attribute(test_x).shape == (3, 7)


def test_labels_are_passed_when_the_loss_takes_them(data) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 3), nn.Tanh())
    model = nn.ModuleDict({"encoder": encoder, "head": nn.Linear(3, 4)})
    seen = []

    def cross_entropy(m: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        seen.append(y is not None)
        return F.cross_entropy(m["head"](m["encoder"](x)), y, reduction="none")

    train_x, test_x = data
    train_y, test_y = torch.randint(4, (7,)), torch.randint(4, (3,))
    objective = Objective(model, loss=cross_entropy)
    assert objective.uses_labels is None  # passed when given
    scores = TracIn(objective, [model.state_dict()]).fit(train_x, train_y).attribute(test_x, test_y)
    expected = loop_grads(model, cross_entropy, test_x, test_y) @ loop_grads(model, cross_entropy, train_x, train_y).T
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)
    assert all(seen)
    strict = TracIn(Objective(model, loss=cross_entropy, uses_labels=True), [model.state_dict()]).fit(train_x, train_y)
    with pytest.raises(ValueError, match="test_y is required"):
        strict.attribute(test_x)


def test_wrt_by_module_and_by_prefixes(data) -> None:  # noqa: ANN001
    train_x, _ = data
    model = _model()
    by_name = Objective(model, loss=reconstruction).per_example_grads(train_x)
    by_module = Objective(model, wrt=model.encoder, loss=reconstruction)
    assert by_module.wrt == "encoder"
    torch.testing.assert_close(by_module.per_example_grads(train_x), by_name)
    by_prefix = Objective(model, wrt=["encoder.0", "encoder.3.weight"], loss=reconstruction)
    assert by_prefix.n_params == 6 * 4 + 4 + 4 * 3
    full = Objective(model, wrt="", loss=reconstruction).per_example_grads(train_x)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    pieces = dict(zip(names, full.split(sizes, dim=1)))
    expected = torch.cat([pieces["encoder.0.weight"], pieces["encoder.0.bias"], pieces["encoder.3.weight"]], dim=1)
    torch.testing.assert_close(by_prefix.per_example_grads(train_x), expected)
    # influence functions on prefixes: the split Hessian is refused, the direct one used
    scores = InfluenceFunctions(by_prefix, LiSSA(depth=3, batch_size=4)).fit(train_x).attribute(data[1])
    assert scores.shape == (3, 7) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="match no parameter"):
        Objective(model, wrt=["encoder.9"], loss=reconstruction)
    with pytest.raises(ValueError, match="not a submodule"):
        Objective(model, wrt=nn.Linear(2, 2), loss=reconstruction)


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture
def saved(tmp_path) -> dict[str, object]:  # noqa: ANN001
    """Two training states of one model, saved the ways users save them."""
    states = [_model(seed).state_dict() for seed in (1, 2)]
    files = {}
    for i, state in enumerate(states):
        files[f"plain{i}"] = tmp_path / f"plain{i}.pt"
        torch.save(state, files[f"plain{i}"])
        files[f"wrapped{i}"] = tmp_path / f"wrapped{i}.pt"
        torch.save({"model": state, "epoch": i, "optimizer": {"lr": 0.1}}, files[f"wrapped{i}"])
        files[f"state_dict{i}"] = tmp_path / f"state_dict{i}.pt"
        torch.save({"state_dict": state}, files[f"state_dict{i}"])
    return {"states": states, **files}


def _reference(model: nn.Module, states, lrs, train_x, test_x, keep_decoder: bool = False) -> Tensor:  # noqa: ANN001
    expected = torch.zeros(len(test_x), len(train_x))
    for state, lr in zip(states, lrs):
        at = copy.deepcopy(model)
        if keep_decoder:
            at.encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
        else:
            at.load_state_dict(state)
        expected += lr * loop_grads(at, reconstruction, test_x) @ loop_grads(at, reconstruction, train_x).T
    return expected


def test_checkpoints_in_every_accepted_form_agree(saved, data) -> None:  # noqa: ANN001
    train_x, test_x = data
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    objective = Objective(model, loss=reconstruction)
    states = saved["states"]
    expected = _reference(model, states, [1.0, 1.0], train_x, test_x)
    expected_lr = _reference(model, states, [0.5, 2.0], train_x, test_x)

    def loader(i: int):  # noqa: ANN202
        return lambda m: m.load_state_dict(states[i])

    forms = {
        "paths": [str(saved["plain0"]), saved["plain1"]],
        "model files": [saved["wrapped0"], saved["wrapped1"]],
        "state_dict files": [saved["state_dict0"], saved["state_dict1"]],
        "in memory": states,
        "callables": [loader(0), loader(1)],
        "returning callables": [lambda m: states[0], lambda m: states[1]],
    }
    for name, checkpoints in forms.items():
        scores = TracIn(objective, checkpoints, chunk_size=3).fit(train_x).attribute(test_x)
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5, msg=name)
    with_lr = [Checkpoint(saved["plain0"], 0.5), (saved["wrapped1"], 2.0)]
    scores = TracIn(objective, with_lr).fit(train_x).attribute(test_x)
    torch.testing.assert_close(scores, expected_lr, rtol=1e-4, atol=1e-5)
    assert TracIn(objective, with_lr).learning_rates == [0.5, 2.0]
    assert TracIn(objective, saved["plain0"]).learning_rates == [1.0]  # one path alone
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model itself is untouched


def test_encoder_only_checkpoints_load_into_the_explained_submodule(saved, data, tmp_path) -> None:  # noqa: ANN001
    train_x, test_x = data
    model = _model()
    objective = Objective(model, loss=reconstruction)
    states = saved["states"]
    paths = []
    for i, state in enumerate(states):
        paths.append(tmp_path / f"encoder{i}.pt")
        torch.save({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}, paths[-1])
    prefixed = [{k: v for k, v in state.items() if k.startswith("encoder.")} for state in states]
    expected = _reference(model, states, [1.0, 1.0], train_x, test_x, keep_decoder=True)
    for checkpoints in (paths, prefixed):
        scores = TracIn(objective, checkpoints).fit(train_x).attribute(test_x)
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


def test_mismatched_checkpoints_name_the_keys(tmp_path, data) -> None:  # noqa: ANN001
    objective = Objective(_model(), loss=reconstruction)
    state = _model().state_dict()
    del state["decoder.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['decoder.bias'\].*unexpected keys \['extra.weight'\]"):
        TracIn(objective, [state]).fit(data[0]).attribute(data[1])
    path = tmp_path / "whole.pt"
    torch.save(_model(), path)  # a whole pickled model, not its weights
    with pytest.raises(TypeError, match="save model.state_dict"):
        TracIn(objective, [path]).fit(data[0]).attribute(data[1])
    with pytest.raises(TypeError, match="accepted: a Checkpoint, a path"):
        TracIn(objective, [3])
    with pytest.raises(FileNotFoundError):
        TracIn(objective, [tmp_path / "missing.pt"]).fit(data[0]).attribute(data[1])


def test_user_style_tracin_equals_the_projects_on_its_autoencoder(tmp_path) -> None:  # noqa: ANN001
    """Same numbers: the project's AutoEncoder explained through its Objective and Checkpoint objects, or as a
    user would (a plain loss callable, a list of checkpoint paths, the default learning rate)."""
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.rand(5, 1, 28, 28, generator=g), torch.rand(3, 1, 28, 28, generator=g)
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"epoch{seed}.pt")
        torch.save(AutoEncoder(MNISTEncoder(4), MNISTDecoder(4), Identity()).state_dict(), paths[-1])
    torch.manual_seed(0)
    model = AutoEncoder(MNISTEncoder(4), MNISTDecoder(4), Identity())
    projects = TracIn(Objective(model), [Checkpoint(p, 1.0) for p in paths]).fit(train_x).attribute(test_x)

    def my_loss(m: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        return (m(x) - x).pow(2).flatten(1).mean(dim=1)

    users = TracIn(Objective(model, loss=my_loss), [str(p) for p in paths]).fit(train_x).attribute(test_x)
    torch.testing.assert_close(users, projects, rtol=1e-5, atol=1e-7)
    built = build_example_explainer("tracin", model, checkpoints=paths, loss=my_loss).fit(train_x).attribute(test_x)
    torch.testing.assert_close(built, projects, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------- encoder outputs
class TupleEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.body(x)
        return z, z.exp()


class DictEncoder(TupleEncoder):
    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        z = self.body(x)
        return {"mu": z, "logvar": z.exp()}


def test_tuple_and_dict_encoder_outputs_need_and_take_a_selector(data) -> None:  # noqa: ANN001
    train_x, test_x = data
    torch.manual_seed(0)
    tuple_encoder = TupleEncoder()
    dict_encoder = DictEncoder()
    dict_encoder.load_state_dict(tuple_encoder.state_dict())
    plain = tuple_encoder.body
    reference = LabelFreeAttribution(Saliency(plain)).attribute(test_x)
    for encoder, output in ((tuple_encoder, 0), (dict_encoder, "mu"), (tuple_encoder, lambda out: out[0])):
        with pytest.raises(TypeError, match=r"not a tensor; pass output= an index"):
            LabelFreeAttribution(Saliency(encoder)).attribute(test_x)
        got = LabelFreeAttribution(Saliency(encoder), output=output).attribute(test_x)
        torch.testing.assert_close(got, reference)
        for cls in (SimplEx, DKNN):
            with pytest.raises(TypeError, match=r"returned (tuple|dict).*output="):
                cls(encoder).fit(train_x)
        kwargs = {"steps": 20}
        torch.testing.assert_close(SimplEx(encoder, output=output, **kwargs).fit(train_x).attribute(test_x),
                                   SimplEx(plain, **kwargs).fit(train_x).attribute(test_x))
        torch.testing.assert_close(DKNN(encoder, output=output).fit(train_x).attribute(test_x),
                                   DKNN(plain).fit(train_x).attribute(test_x))
    with pytest.raises(TypeError, match=r"output='z' cannot select.*keys \['mu', 'logvar'\]"):
        LabelFreeAttribution(Saliency(dict_encoder), output="z").attribute(test_x)
    holder = nn.Module()
    holder.encoder = dict_encoder
    explainer = build_example_explainer("dknn", holder, output="mu")
    torch.testing.assert_close(explainer.fit(train_x).attribute(test_x), DKNN(plain).fit(train_x).attribute(test_x))


class TwoInputEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 3), nn.Linear(2, 3)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return torch.tanh(self.a(x) + self.b(c))


def test_tuple_inputs(data) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    encoder = TwoInputEncoder()
    x, c = data[1], torch.randn(3, 2)
    explainer = LabelFreeAttribution(IntegratedGradients(encoder))
    ax, ac = explainer.attribute((x, c), baselines=(torch.zeros_like(x), torch.zeros_like(c)), n_steps=50)
    assert ax.shape == x.shape and ac.shape == c.shape
    # completeness of Integrated Gradients: the attributions add up to g(x) - g(0)
    h = encoder(x, c).detach()
    gap = (h * h).sum(1) - (encoder(torch.zeros_like(x), torch.zeros_like(c)) * h).sum(1)
    torch.testing.assert_close(ax.sum(1) + ac.sum(1), gap.detach(), rtol=1e-2, atol=1e-3)
    ux, uc = explainer.attribute_units((x, c), baselines=(torch.zeros_like(x), torch.zeros_like(c)), n_steps=50)
    assert ux.shape == (3, 3, 6) and uc.shape == (3, 3, 2)
    torch.testing.assert_close(ux.sum(1), ax, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match=r"a Tensor \[n, \.\.\.\] or a tuple of Tensors"):
        explainer.attribute([x, c])


def test_train_mode_encoder_is_attributed_in_eval_and_restored(data) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 3)).train()
    with torch.no_grad():
        encoder[1].running_mean.uniform_(-1, 1)
    encoder[2].eval()  # mixed modes are restored as they were
    modes = [m.training for m in encoder.modules()]
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    x = data[0]
    explainer = LabelFreeAttribution(IntegratedGradients(encoder))
    got = explainer.attribute(x, baselines=0.0, n_steps=8)
    units = explainer.attribute_units(x, baselines=0.0, n_steps=8)
    assert [m.training for m in encoder.modules()] == modes
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())  # num_batches_tracked unchanged
    reference = LabelFreeAttribution(IntegratedGradients(copy.deepcopy(encoder).eval()))
    torch.testing.assert_close(got, reference.attribute(x, baselines=0.0, n_steps=8))
    torch.testing.assert_close(units, reference.attribute_units(x, baselines=0.0, n_steps=8))


def test_public_api_and_marker() -> None:
    assert set(labelfree.__all__) >= {
        "LabelFreeAttribution", "BatchedAttribution", "Objective", "Checkpoint", "InfluenceFunctions", "LiSSA",
        "Arnoldi", "TracIn", "SimplEx", "DKNN", "RandomExampleImportance", "build_example_explainer",
        "top_feature_mask", "mask_features", "representation_shift", "similarity_rates", "similarity_rate_curves"}
    for name in labelfree.__all__:
        assert getattr(labelfree, name) is not None
    with pytest.raises(AttributeError):
        labelfree.NotAName  # noqa: B018
    from importlib.resources import files

    assert files("labelfree").joinpath("py.typed").is_file()
