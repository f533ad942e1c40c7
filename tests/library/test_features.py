"""Label-free feature importance: LabelFreeAttribution against computations done by hand."""

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation, GradientShap, IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from torch import nn

from labelfree.attribution.features import LabelFreeAttribution, RandomAttribution, make_feature_explainer
from labelfree.models import MNISTEncoder


@pytest.fixture
def encoder() -> nn.Module:
    torch.manual_seed(0)
    return MNISTEncoder(4).eval().double()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(5, 1, 28, 28, dtype=torch.double)


def g_by_hand(encoder, x_i):
    """g_{x_i}(.) for a single input, as a closure: correct because only one representation is involved."""
    with torch.no_grad():
        h = encoder(x_i[None])[0]
    return lambda z: (encoder(z) * h).sum(dim=1)


def test_integrated_gradients_matches_captum_by_hand_and_completeness(encoder, images):
    baseline = torch.zeros_like(images)
    ours = LabelFreeAttribution(IntegratedGradients(encoder)).attribute(images, baselines=baseline, n_steps=64)
    for i in range(len(images)):
        g = g_by_hand(encoder, images[i])
        hand = IntegratedGradients(g).attribute(images[i : i + 1], baselines=baseline[i : i + 1], n_steps=64)
        torch.testing.assert_close(ours[i : i + 1], hand)
        # Completeness: attributions sum to g_x(x) - g_x(baseline).
        with torch.no_grad():
            gap = g(images[i : i + 1]) - g(baseline[i : i + 1])
        assert ours[i].sum().item() == pytest.approx(gap.item(), rel=2e-2, abs=1e-4)


def test_gradient_shap_with_several_samples_matches_hand_computation(encoder, images, monkeypatch):
    n_samples = 4
    drawn = []
    uniform = np.random.uniform

    def recording_uniform(*args, **kwargs):
        out = uniform(*args, **kwargs)
        drawn.append(np.array(out))
        return out

    monkeypatch.setattr(np.random, "uniform", recording_uniform)
    baseline = torch.zeros(1, 1, 28, 28, dtype=torch.double)
    ours = LabelFreeAttribution(GradientShap(encoder)).attribute(images, baselines=baseline, n_samples=n_samples, stdevs=0.0)
    assert len(drawn) == 1 and drawn[0].shape == (len(images) * n_samples,)
    alphas = torch.tensor(drawn[0]).view(len(images), n_samples)  # rows are repeat-interleaved per input
    for i in range(len(images)):
        g = g_by_hand(encoder, images[i])
        total = torch.zeros_like(images[i])
        for s in range(n_samples):
            point = (baseline[0] + alphas[i, s] * (images[i] - baseline[0])).requires_grad_(True)
            (grad,) = torch.autograd.grad(g(point[None]).sum(), point)
            total += grad * (images[i] - baseline[0])
        torch.testing.assert_close(ours[i], total / n_samples)


def test_saliency_is_abs_gradient_of_g(encoder, images):
    ours = LabelFreeAttribution(Saliency(encoder)).attribute(images)
    for i in range(len(images)):
        x = images[i : i + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(g_by_hand(encoder, images[i])(x).sum(), x)
        torch.testing.assert_close(ours[i : i + 1], grad.abs())


def test_linear_rule_equals_sum_of_units_weighted_by_representation(encoder, images):
    explainer = LabelFreeAttribution(IntegratedGradients(encoder))
    per_unit = explainer.attribute_units(images, baselines=0.0, n_steps=32)
    assert per_unit.shape == (5, 4, 1, 28, 28)
    torch.testing.assert_close(per_unit.sum(dim=1), explainer.attribute(images, baselines=0.0, n_steps=32))


def test_per_unit_attribution_equals_explaining_one_output_by_hand(encoder, images):
    per_unit = LabelFreeAttribution(IntegratedGradients(encoder)).attribute_units(images, units=[2], baselines=0.0, n_steps=16)
    hand = IntegratedGradients(encoder).attribute(images, baselines=0.0, target=2, n_steps=16)
    with torch.no_grad():
        weight = encoder(images)[:, 2].view(-1, 1, 1, 1)
    torch.testing.assert_close(per_unit[:, 0], weight * hand)
    with pytest.raises(ValueError, match="units"):
        LabelFreeAttribution(IntegratedGradients(encoder)).attribute_units(images, units=[4])


class SequenceEncoder(nn.Module):
    """Sequences [n, T, 2] -> latent of shape [n, 2, 3] (a non-flat latent)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(2, 6, batch_first=True)

    def forward(self, x):
        _, h = self.rnn(x)
        return torch.tanh(h[-1]).view(-1, 2, 3)


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_shap", "saliency", "feature_ablation", "occlusion"])
def test_any_method_any_shape(method):
    torch.manual_seed(0)
    enc = SequenceEncoder().double()
    x = torch.randn(3, 7, 2, dtype=torch.double)
    explainer = LabelFreeAttribution(
        {
            "integrated_gradients": IntegratedGradients,
            "gradient_shap": GradientShap,
            "saliency": Saliency,
            "feature_ablation": FeatureAblation,
            "occlusion": Occlusion,
        }[method](enc)
    )
    kwargs = {
        "integrated_gradients": {"baselines": torch.zeros_like(x)},
        "gradient_shap": {"baselines": torch.zeros_like(x), "n_samples": 3},
        "saliency": {},
        "feature_ablation": {"baselines": 0.0, "perturbations_per_eval": 4},
        "occlusion": {"sliding_window_shapes": (1, 2), "baselines": 0.0, "perturbations_per_eval": 3},
    }[method]
    attributions = explainer.attribute(x, **kwargs)
    assert attributions.shape == x.shape
    assert torch.isfinite(attributions).all()


def test_feature_ablation_equals_drop_of_g_per_feature(encoder, images):
    x = images[:2]
    ours = LabelFreeAttribution(FeatureAblation(encoder)).attribute(x, baselines=0.0, perturbations_per_eval=50)
    for i in range(2):
        g = g_by_hand(encoder, x[i])
        with torch.no_grad():
            flat = x[i : i + 1].flatten(1).repeat(784, 1)
            flat[torch.arange(784), torch.arange(784)] = 0.0
            drops = g(x[i : i + 1]) - g(flat.view(784, 1, 28, 28))
        torch.testing.assert_close(ours[i].flatten(), drops)


def test_noise_tunnel_chain_is_redirected(encoder, images):
    explainer = LabelFreeAttribution(NoiseTunnel(Saliency(encoder)))
    torch.manual_seed(3)
    out = explainer.attribute(images, nt_type="smoothgrad", nt_samples=3, stdevs=0.1)
    assert out.shape == images.shape


def test_reserved_arguments_and_double_wrap(encoder, images):
    explainer = LabelFreeAttribution(Saliency(encoder))
    with pytest.raises(ValueError, match="target"):
        explainer.attribute(images, target=0)
    with pytest.raises(ValueError, match="already wrapped"):
        LabelFreeAttribution(explainer.method)


def test_random_baseline_is_deterministic_and_registry_errors(encoder, images):
    a = RandomAttribution(encoder, seed=3).attribute(images)
    b = make_feature_explainer("random", encoder, seed=3).attribute(images)
    torch.testing.assert_close(a, b)
    assert a.shape == images.shape
    with pytest.raises(ValueError, match="Unknown feature explainer 'lime'.*accepted"):
        make_feature_explainer("lime", encoder)


def test_batched_attribution_defaults_for_a_users_encoder(encoder, images):
    """``BatchedAttribution(explainer)``: baseline 0, no extra arguments, the encoder's device, batches of 256."""
    from labelfree.attribution.batched import BatchedAttribution

    explainer = LabelFreeAttribution(IntegratedGradients(encoder))
    batched = BatchedAttribution(explainer, batch_size=2)
    expected = explainer.attribute(images, baselines=torch.zeros_like(images))
    torch.testing.assert_close(batched.all(images), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(batched.all(images, absolute=True), expected.abs(), rtol=1e-5, atol=1e-7)


def test_train_mode_encoder_is_explained_in_eval_mode_and_left_as_it_was(images):
    torch.manual_seed(0)
    model = MNISTEncoder(4).to(images.dtype).train()
    tracked = [m.num_batches_tracked.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    explainer = LabelFreeAttribution(Saliency(model))
    got = explainer.attribute(images)
    assert model.training and all(m.training for m in model.modules())
    assert [m.num_batches_tracked for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == tracked
    torch.testing.assert_close(got, LabelFreeAttribution(Saliency(model.eval())).attribute(images))
