"""Tests of labelfree.metrics: masks, representation shift, similarity rates, correlations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from labelfree.metrics import (
    HIGHER_IS_BETTER,
    mask_features,
    mean_off_diagonal,
    pearson_matrix,
    percent_to_count,
    percent_to_fraction,
    representation_shift,
    similarity_rates,
    spearman_matrix,
    top_feature_mask,
)

PERCENTS = [0, 5, 10, 20, 50, 80, 100]
N_EXAMPLES = 6


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# (shape of the attributions, channel_dim)
CASES = [
    ((N_EXAMPLES, 1, 28, 28), 1),
    ((N_EXAMPLES, 3, 8, 8), 1),
    ((N_EXAMPLES, 3, 8, 8), -3),
    ((N_EXAMPLES, 20, 1), -1),
    ((N_EXAMPLES, 20, 1), 2),
    ((N_EXAMPLES, 20, 4), 2),
    ((N_EXAMPLES, 5, 7), None),
]


def _importance(attributions: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
    importance = attributions.abs()
    if channel_dim is not None:
        importance = importance.sum(dim=channel_dim, keepdim=True)
    return importance


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, channel_dim", CASES)
@pytest.mark.parametrize("percent", PERCENTS)
def test_mask_selects_exactly_k_top_features(shape, channel_dim, percent):
    attributions = torch.randn(shape, generator=_generator(percent))
    mask = top_feature_mask(attributions, percent_to_fraction(percent), channel_dim=channel_dim)
    assert mask.shape == attributions.shape and mask.dtype == torch.bool

    importance = _importance(attributions, channel_dim)
    n_features = importance[0].numel()
    n_channels = attributions[0].numel() // n_features
    k = round(percent / 100 * n_features)
    # exactly k features per example, each masked in all its channels
    assert (mask.reshape(N_EXAMPLES, -1).sum(dim=1) == k * n_channels).all()
    if channel_dim is not None:
        feature_mask = mask.any(dim=channel_dim, keepdim=True)
        assert torch.equal(mask, feature_mask.expand_as(mask))
    else:
        feature_mask = mask

    # the selected features are the top k by hand-computed argsort of the importance
    flat_importance = importance.reshape(N_EXAMPLES, -1).numpy()
    flat_mask = feature_mask.reshape(N_EXAMPLES, -1).numpy()
    for i in range(N_EXAMPLES):
        expected = np.zeros(n_features, dtype=bool)
        expected[np.argsort(-flat_importance[i], kind="stable")[:k]] = True
        np.testing.assert_array_equal(flat_mask[i], expected)


@pytest.mark.parametrize("percent", PERCENTS)
def test_mask_ties_still_give_exactly_k(percent):
    attributions = torch.zeros(N_EXAMPLES, 3, 8, 8)
    attributions[:, :, :2] = 1.0  # 16 tied top pixels, 48 tied zero pixels
    mask = top_feature_mask(attributions, percent / 100)
    k = round(percent / 100 * 64)
    assert (mask.reshape(N_EXAMPLES, -1).sum(dim=1) == 3 * k).all()
    if k <= 16:  # the tied top pixels are preferred to the zero ones
        assert (mask & (attributions == 0)).sum() == 0


def test_mask_uses_absolute_values_summed_over_channels():
    attributions = torch.tensor([[[-5.0, 1.0, 0.0], [0.0, 1.0, -4.0]]])  # [1, C=2, 3 features]
    mask = top_feature_mask(attributions, 1 / 3, channel_dim=1)
    # totals |.|: 5, 2, 4 -> feature 0, masked in both channels
    assert mask.tolist() == [[[True, False, False], [True, False, False]]]
    mask = top_feature_mask(attributions, 2 / 3, channel_dim=1)
    assert mask.tolist() == [[[True, False, True], [True, False, True]]]


def test_mask_features_baselines():
    inputs = torch.arange(12.0).reshape(2, 3, 2)  # [n, T, 1]-like sequences with 2 channels
    mask = torch.zeros_like(inputs, dtype=torch.bool)
    mask[0, 0] = True
    mask[1, 2, 1] = True
    # scalar
    out = mask_features(inputs, mask, 0.0)
    assert out[0, 0].tolist() == [0.0, 0.0] and out[1, 2].tolist() == [10.0, 0.0]
    assert torch.equal(out[~mask], inputs[~mask])
    # one example's shape (e.g. the mean normal heartbeat)
    per_example = -torch.arange(6.0).reshape(3, 2)
    out = mask_features(inputs, mask, per_example)
    assert out[0, 0].tolist() == [0.0, -1.0] and out[1, 2, 1].item() == -5.0
    # same shape as inputs (e.g. a blurred copy of each image)
    blurred = inputs + 100
    out = mask_features(inputs, mask, blurred)
    assert torch.equal(out[mask], blurred[mask]) and torch.equal(out[~mask], inputs[~mask])
    assert out.dtype == inputs.dtype and inputs[0, 0, 0] == 0.0  # inputs not modified in place


# --------------------------------------------------------------------------------------------------
# Representation shift
# --------------------------------------------------------------------------------------------------


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )


def test_full_masking_gives_same_shift_for_every_attribution():
    encoder = _encoder()
    inputs = torch.randn(N_EXAMPLES, 3, 8, 8, generator=_generator(1))
    shifts = []
    for seed in range(3):
        attributions = torch.randn(inputs.shape, generator=_generator(10 + seed))
        masked = mask_features(inputs, top_feature_mask(attributions, 1.0), 0.0)
        assert torch.equal(masked, torch.zeros_like(inputs))
        shifts.append(representation_shift(encoder, inputs, masked, batch_size=4))
    for shift in shifts[1:]:
        torch.testing.assert_close(shift, shifts[0])


def test_representation_shift_matches_hand_computation_and_restores_modes():
    encoder = _encoder()
    encoder.train()
    encoder[3].eval()  # a mixed state must come back as it was
    modes = [module.training for module in encoder.modules()]
    inputs = torch.randn(7, 3, 8, 8, generator=_generator(2))
    masked = inputs.clone()
    masked[:, :, :4] = 0.0

    shift = representation_shift(encoder, inputs, masked, batch_size=3)

    assert [module.training for module in encoder.modules()] == modes
    encoder.eval()
    with torch.no_grad():
        expected = ((encoder(inputs) - encoder(masked)) ** 2).sum(dim=1)
    assert shift.shape == (7,) and shift.device.type == "cpu" and not shift.requires_grad
    torch.testing.assert_close(shift, expected)
    assert (shift > 0).all()


def test_representation_shift_flattens_latent_and_accepts_plain_callables():
    inputs = torch.randn(5, 4, generator=_generator(3))
    masked = torch.zeros_like(inputs)

    def encoder(x):  # a latent of shape [2, 4]
        return torch.stack([x, 2 * x], dim=1)

    shift = representation_shift(encoder, inputs, masked, batch_size=2)
    torch.testing.assert_close(shift, 5 * (inputs**2).sum(dim=1))
    assert representation_shift(encoder, inputs, inputs).eq(0).all()


# --------------------------------------------------------------------------------------------------
# Similarity rates
# --------------------------------------------------------------------------------------------------


def test_similarity_rates_hand_built_case():
    scores = torch.tensor(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0],  # ranking 0 1 2 3 4
            [1.0, 2.0, 3.0, 4.0, 5.0],  # ranking 4 3 2 1 0
            [0.3, 0.9, 0.1, 0.5, 0.7],  # ranking 1 4 3 0 2
        ]
    )
    train_labels = torch.tensor([0, 0, 1, 1, 2])
    test_labels = torch.tensor([0, 2, 1])
    top, bottom = similarity_rates(scores, test_labels, train_labels, m=2)
    # test 0 (label 0): top {0, 1} -> 2/2; bottom {4, 3} -> 0/2
    # test 1 (label 2): top {4, 3} -> 1/2; bottom {0, 1} -> 0/2
    # test 2 (label 1): top {1, 4} -> 0/2; bottom {2, 0} -> 1/2
    torch.testing.assert_close(top, torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(bottom, torch.tensor([0.0, 0.0, 0.5]))
    top, bottom = similarity_rates(scores, test_labels, train_labels, m=3)
    torch.testing.assert_close(top, torch.tensor([2 / 3, 1 / 3, 1 / 3]))  # {0,1,2}, {4,3,2}, {1,4,3}
    torch.testing.assert_close(bottom, torch.tensor([0.0, 0.0, 2 / 3]))  # {4,3,2}, {0,1,2}, {2,0,3}


def test_similarity_rates_at_full_m_equal_class_shares():
    n_test, n_train, n_classes = 40, 30, 4
    scores = torch.randn(n_test, n_train, generator=_generator(4))
    train_labels = torch.randint(n_classes, (n_train,), generator=_generator(5))
    test_labels = torch.randint(n_classes, (n_test,), generator=_generator(6))
    top, bottom = similarity_rates(scores, test_labels, train_labels, m=n_train)
    share = torch.bincount(train_labels, minlength=n_classes).float() / n_train
    torch.testing.assert_close(top, share[test_labels])
    torch.testing.assert_close(bottom, share[test_labels])


def test_percent_to_count():
    assert [percent_to_count(p, 1000) for p in [5, 10, 20, 50, 70, 100]] == [50, 100, 200, 500, 700, 1000]
    assert percent_to_count(0, 1000) == 1
    assert percent_to_count(1, 10) == 1
    assert percent_to_fraction(5) == 0.05 and percent_to_fraction(100) == 1.0


def test_higher_is_better_declared():
    assert HIGHER_IS_BETTER["representation_shift"] is True
    assert HIGHER_IS_BETTER["similarity_most"] is True
    assert HIGHER_IS_BETTER["similarity_least"] is False


# --------------------------------------------------------------------------------------------------
# Correlations
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("correlation", [pearson_matrix, spearman_matrix])
def test_correlation_identity_negation_independence(correlation):
    base = torch.randn(50_000, generator=_generator(7))
    other = torch.randn(50_000, generator=_generator(8))
    explanations = torch.stack([base, base, -base, other]).reshape(4, 500, 100)
    r = correlation(explanations)
    assert r.shape == (4, 4)
    torch.testing.assert_close(r.diagonal(), torch.ones(4, dtype=r.dtype))
    assert r[0, 1].item() == pytest.approx(1.0)
    assert r[0, 2].item() == pytest.approx(-1.0)
    assert abs(r[0, 3].item()) < 0.1
    torch.testing.assert_close(r, r.T)


def test_spearman_invariant_to_monotone_transforms():
    x = torch.randn(3, 200, generator=_generator(9))
    transformed = torch.stack([torch.exp(x[0]), x[1] ** 3, 2 * x[2] + 7])
    torch.testing.assert_close(spearman_matrix(transformed), spearman_matrix(x))
    assert spearman_matrix(torch.stack([x[0], torch.exp(x[0])]))[0, 1].item() == pytest.approx(1.0)


def test_correlations_match_scipy():
    gen = _generator(10)
    x = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    x[1] = 0.6 * x[0] + 0.4 * x[1]
    x[2] = torch.round(x[2] * 2)  # many ties
    x[3] = torch.round(x[0] * 2) + 0.3 * x[3]
    pearson, spearman = pearson_matrix(x), spearman_matrix(x)
    assert len(torch.unique(x[2])) < 15  # the tie handling is exercised
    x = x.numpy()
    for i in range(4):
        for j in range(4):
            assert pearson[i, j].item() == pytest.approx(scipy.stats.pearsonr(x[i], x[j])[0], abs=1e-10)
            assert spearman[i, j].item() == pytest.approx(scipy.stats.spearmanr(x[i], x[j])[0], abs=1e-10)


def test_constant_explanation_gives_nan_and_mean_off_diagonal():
    x = torch.randn(3, 50, generator=_generator(11))
    x[2] = 1.0
    for correlation in (pearson_matrix, spearman_matrix):
        r = correlation(x)
        assert torch.isnan(r[2]).all() and torch.isnan(r[:, 2]).all()
        assert not torch.isnan(r[:2, :2]).any()
        assert np.isnan(mean_off_diagonal(r))
        assert mean_off_diagonal(r, skip_nan=True) == pytest.approx(r[0, 1].item())
    matrix = torch.tensor([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    assert mean_off_diagonal(matrix) == pytest.approx(0.4)


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [-1, 120, 100.5, float("nan")])
def test_bad_percent(p):
    with pytest.raises(ValueError, match=r"p must be a percentage in \[0, 100\], got"):
        percent_to_fraction(p)
    with pytest.raises(ValueError, match=r"percentage in \[0, 100\]"):
        percent_to_count(p, 10)


def test_bad_inputs_raise_helpful_errors():
    with pytest.raises(ValueError, match=r"got 120"):
        percent_to_fraction(120)
    attributions = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        top_feature_mask(attributions, 1.5)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got -0.1"):
        top_feature_mask(attributions, -0.1)
    with pytest.raises(ValueError, match="channel_dim"):
        top_feature_mask(attributions, 0.5, channel_dim=0)
    with pytest.raises(ValueError, match="channel_dim"):
        top_feature_mask(attributions, 0.5, channel_dim=4)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        percent_to_count(10, 0)

    inputs = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="does not match inputs shape"):
        mask_features(inputs, torch.zeros(2, 1, 4, 3, dtype=torch.bool), 0.0)
    with pytest.raises(ValueError, match="boolean"):
        mask_features(inputs, torch.zeros(2, 1, 4, 4), 0.0)
    with pytest.raises(ValueError, match="cannot be broadcast"):
        mask_features(inputs, torch.zeros(2, 1, 4, 4, dtype=torch.bool), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="does not match masked_inputs shape"):
        representation_shift(nn.Flatten(), inputs, inputs[:1])

    scores = torch.randn(3, 1000)
    test_labels, train_labels = torch.zeros(3, dtype=torch.long), torch.zeros(1000, dtype=torch.long)
    with pytest.raises(ValueError, match="M = 1500 exceeds the 1000 training examples"):
        similarity_rates(scores, test_labels, train_labels, m=1500)
    with pytest.raises(ValueError, match="M must be at least 1"):
        similarity_rates(scores, test_labels, train_labels, m=0)
    with pytest.raises(ValueError, match="scores has 3 rows .* test_labels has 4"):
        similarity_rates(scores, torch.zeros(4, dtype=torch.long), train_labels, m=5)
    with pytest.raises(ValueError, match="scores has 1000 columns .* train_labels has 999"):
        similarity_rates(scores, test_labels, train_labels[:-1], m=5)

    with pytest.raises(ValueError, match="square"):
        mean_off_diagonal(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape \[k, \.\.\.\]"):
        pearson_matrix(torch.zeros(5))


def test_similarity_rate_curves_match_topk_for_every_m():
    """One sort for all M gives the rates of a direct top-M / bottom-M selection (distinct scores)."""
    from labelfree.metrics import similarity_rate_curves

    generator = torch.Generator().manual_seed(3)
    scores = torch.rand(40, 25, generator=generator)
    test_labels = torch.randint(3, (40,), generator=generator)
    train_labels = torch.randint(3, (25,), generator=generator)
    ms = [1, 2, 7, 24, 25]
    most, least = similarity_rate_curves(scores, test_labels, train_labels, ms)
    for row, m in enumerate(ms):
        top = scores.topk(m, dim=1).indices
        bottom = scores.topk(m, dim=1, largest=False).indices
        expected_most = (train_labels[top] == test_labels[:, None]).float().mean(dim=1)
        expected_least = (train_labels[bottom] == test_labels[:, None]).float().mean(dim=1)
        assert torch.allclose(most[row], expected_most) and torch.allclose(least[row], expected_least)


def test_top_feature_mask_fast_path_selects_the_top_k():
    """The CPU selection path marks exactly the k largest |attributions| of every example."""
    generator = torch.Generator().manual_seed(4)
    attributions = torch.randn(30, 1, 7, 7, generator=generator)
    mask = top_feature_mask(attributions, 0.2)
    k = round(0.2 * 49)
    flat = attributions.abs().reshape(30, -1)
    expected = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k, dim=1).indices, True)
    assert mask.shape == attributions.shape and torch.equal(mask.reshape(30, -1), expected)


def test_selection_and_rates_agree_across_dtypes():
    """bfloat16 (no numpy dtype) takes the torch path and gives the same masks and rates."""
    from labelfree.metrics import similarity_rate_curves

    generator = torch.Generator().manual_seed(5)
    attributions = torch.randperm(49, generator=generator).float().reshape(1, 1, 7, 7).repeat(3, 1, 1, 1)
    assert torch.equal(top_feature_mask(attributions, 0.3), top_feature_mask(attributions.bfloat16(), 0.3))
    scores = torch.randperm(12, generator=generator).float().reshape(3, 4)
    labels_test, labels_train = torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1, 1])
    expected = similarity_rate_curves(scores, labels_test, labels_train, [1, 2, 4])
    got = similarity_rate_curves(scores.bfloat16(), labels_test, labels_train, [1, 2, 4])
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def _rate_bounds(scores: torch.Tensor, same: torch.Tensor, m: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fewest and most label matches any top-m (bottom-m) selection can have when ties are broken either way."""
    values = scores if largest else -scores
    cut = values.topk(m, dim=1).values[:, -1:]  # the m-th largest value of each row
    above, tied = values > cut, values == cut
    needed = m - above.sum(dim=1)
    fixed = (same & above).sum(dim=1)
    tied_same, tied_other = (same & tied).sum(dim=1), (~same & tied).sum(dim=1)
    low = fixed + (needed - tied_other).clamp_min(0)
    high = fixed + torch.minimum(needed, tied_same)
    return low, high


def test_similarity_rate_curves_with_ties_at_the_cut_offs():
    """Ties straddling a cut-off (integer scores) take the argsort path: every rate is one that some
    tie-breaking gives, and ties away from the cut-offs leave the order-statistic path exact."""
    from labelfree.metrics import similarity_rate_curves

    generator = torch.Generator().manual_seed(6)
    scores = torch.randint(5, (30, 20), generator=generator).float()
    test_labels = torch.randint(3, (30,), generator=generator)
    train_labels = torch.randint(3, (20,), generator=generator)
    same = train_labels[None, :] == test_labels[:, None]
    ms = [1, 3, 10, 19, 20]
    most, least = similarity_rate_curves(scores, test_labels, train_labels, ms)
    for row, m in enumerate(ms):
        for rates, largest in ((most[row], True), (least[row], False)):
            low, high = _rate_bounds(scores, same, m, largest)
            counts = (rates * m).round()
            assert torch.allclose(rates * m, counts, atol=1e-4)
            assert ((counts >= low) & (counts <= high)).all()

    distinct = torch.rand(30, 20, generator=generator)
    distinct[:, 8:12] = 0.5  # ties in the middle ranks only; the cut-offs at 1, 3, 19 stay clear
    ordered = distinct.sort(dim=1).values
    assert (ordered[:, 2] < ordered[:, 3]).all() and (ordered[:, 16] < ordered[:, 17]).all()
    most, least = similarity_rate_curves(distinct, test_labels, train_labels, [1, 3, 20])
    for row, m in enumerate([1, 3, 20]):
        expected_most = same.gather(1, distinct.topk(m, dim=1).indices).float().mean(dim=1)
        expected_least = same.gather(1, distinct.topk(m, dim=1, largest=False).indices).float().mean(dim=1)
        assert torch.allclose(most[row], expected_most) and torch.allclose(least[row], expected_least)


def test_similarity_rate_curves_do_not_depend_on_the_comparison_block(monkeypatch):
    import labelfree.metrics.similarity as similarity

    generator = torch.Generator().manual_seed(7)
    scores = torch.rand(50, 40, generator=generator)
    test_labels, train_labels = torch.randint(2, (50,), generator=generator), torch.randint(2, (40,), generator=generator)
    expected = similarity.similarity_rate_curves(scores, test_labels, train_labels, [2, 5, 40])
    monkeypatch.setattr(similarity, "_COMPARISONS_PER_BLOCK", 7)
    got = similarity.similarity_rate_curves(scores, test_labels, train_labels, [2, 5, 40])
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_mask_ties_at_the_kth_value_take_the_exact_path():
    """Rows whose k-th largest value is tied give exactly k entries, all those strictly above it included."""
    attributions = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0, 0.0], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]).reshape(2, 1, 1, 6)
    mask = top_feature_mask(attributions, 3 / 6).reshape(2, 6)
    assert mask.sum(dim=1).tolist() == [3, 3]
    assert mask[0, 0] and not mask[0, 4:].any() and mask[0, 1:4].sum() == 2
    assert mask[1].tolist() == [True, True, True, False, False, False]


# --------------------------------------------------------------------------------------------------
# Layouts, and masks that would select nothing
# --------------------------------------------------------------------------------------------------


def test_layouts_name_the_channel_dimension():
    sequences = torch.rand(3, 140, 1, generator=_generator(1))
    mask = top_feature_mask(sequences, 0.1, layout="channels_last")
    assert mask.shape == sequences.shape and (mask.sum(dim=(1, 2)) == 14).all()
    assert torch.equal(mask, top_feature_mask(sequences, 0.1, channel_dim=-1))
    multichannel = torch.rand(3, 20, 4, generator=_generator(2))
    assert torch.equal(top_feature_mask(multichannel, 0.25, layout="channels_last"),
                       top_feature_mask(multichannel, 0.25, channel_dim=2))
    images = torch.rand(2, 3, 8, 8, generator=_generator(3))
    assert torch.equal(top_feature_mask(images, 0.2, layout="channels_first"), top_feature_mask(images, 0.2))
    assert torch.equal(top_feature_mask(images, 0.2, layout="none"), top_feature_mask(images, 0.2, channel_dim=None))
    both = top_feature_mask(images, 0.2, channel_dim=1, layout="channels_first")
    assert torch.equal(both, top_feature_mask(images, 0.2))


def test_a_mask_that_selects_no_feature_is_an_error():
    sequences = torch.rand(3, 140, 1, generator=_generator(1))
    with pytest.raises(ValueError, match=r"fraction 0.1 of 1 feature\(s\).*channels_first.*layout='channels_last'"):
        top_feature_mask(sequences, 0.1)
    with pytest.raises(ValueError, match=r"fraction 0.4 of 1 feature\(s\).*channel_dim=1"):
        top_feature_mask(sequences, 0.4, channel_dim=1)
    with pytest.raises(ValueError, match=r"fraction 0.01 of 20 feature\(s\).*layout='channels_last'"):
        top_feature_mask(torch.rand(2, 20, 1), 0.01, layout="channels_last")
    assert not top_feature_mask(sequences, 0.0).any()  # asking for none is not an error


def test_bad_layouts_raise_helpful_errors():
    with pytest.raises(ValueError, match=r"layout must be one of \['channels_first', 'channels_last', 'none'\]"):
        top_feature_mask(torch.rand(2, 5, 1), 0.5, layout="NHWC")
    with pytest.raises(ValueError, match="not both"):
        top_feature_mask(torch.rand(2, 5, 1), 0.5, channel_dim=1, layout="channels_last")
    with pytest.raises(ValueError, match="layout='none' for"):
        top_feature_mask(torch.rand(2, 5), 0.5, layout="channels_last")
