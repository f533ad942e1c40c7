"""Metrics of the paper (Section 2 of PAPER.md): pure, vectorised tensor functions.

* Consistency of feature importance: mask each input's top features by |attribution|
  (:func:`top_feature_mask`, :func:`mask_features`) and measure the representation shift
  ||f(x) - f(x_masked)||^2 (:func:`representation_shift`). A random ranking is obtained by passing
  random attributions (e.g. ``torch.rand_like(inputs)``) to :func:`top_feature_mask`.
* Consistency of example importance: the share of a test example's M most (and M least) important
  training examples that carry its label (:func:`similarity_rates`).
* Agreement between explanations: Pearson / Spearman correlation between flattened importance arrays
  (:func:`pearson_matrix`, :func:`spearman_matrix`), averaged over off-diagonal pairs
  (:func:`mean_off_diagonal`).

:data:`HIGHER_IS_BETTER` says, for every metric, whether a higher value is better.
No function loops over examples or features in Python; only :func:`representation_shift` loops over
batches, to bound memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from numbers import Real

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "HIGHER_IS_BETTER",
    "percent_to_fraction",
    "percent_to_count",
    "top_feature_mask",
    "mask_features",
    "representation_shift",
    "similarity_rates",
    "similarity_rate_curves",
    "pearson_matrix",
    "spearman_matrix",
    "mean_off_diagonal",
]

#: Whether a higher value of each metric is better. ``None``: descriptive, no preferred direction
#: (correlations between explanations are reported, not optimised: the pretext experiment reads a
#: moderate correlation, the VAE experiment asks whether it falls with beta).
HIGHER_IS_BETTER: dict[str, bool | None] = {
    # masking the most important features should move the representation the most
    "representation_shift": True,
    # the most important training examples should share the test example's label
    "similarity_most": True,
    # the least important training examples should rarely share it
    "similarity_least": False,
    "pearson": None,
    "spearman": None,
}

_PERCENT_MAX = 100.0


# --------------------------------------------------------------------------------------------------
# Percentages
# --------------------------------------------------------------------------------------------------


def _check_percent(p: float, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, Real) or math.isnan(float(p)) or not 0 <= p <= _PERCENT_MAX:
        raise ValueError(f"{name} must be a percentage in [0, 100], got {p!r}")
    return float(p)


def percent_to_fraction(p: float) -> float:
    """Convert a percentage ``p`` in [0, 100] (the configs' unit) to a fraction in [0, 1]."""
    return _check_percent(p) / _PERCENT_MAX


def percent_to_count(percent: float, n: int) -> int:
    """Number of items that make ``percent`` % of ``n``: ``round(percent / 100 * n)``, at least 1.

    Used for the similarity rate's M, given in the paper as a percentage of the training subset.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (the number of items), got {n!r}")
    if isinstance(percent, (int, float)) and percent > _PERCENT_MAX:
        raise ValueError(
            f"M = {percent}% exceeds the {n} training examples of the subset; M is a percentage in [0, 100]"
        )
    percent = _check_percent(percent, "percent")
    return max(1, round(percent / _PERCENT_MAX * n))


# --------------------------------------------------------------------------------------------------
# Consistency of feature importance
# --------------------------------------------------------------------------------------------------


def top_feature_mask(attributions: Tensor, fraction: float, channel_dim: int | None = 1) -> Tensor:
    """Boolean mask of each example's top ``fraction`` of features by |attribution|.

    Args:
        attributions: ``[n, *shape]`` feature importances (images ``[n, C, H, W]``, sequences
            ``[n, T, C]``, ...).
        fraction: share of features to select, in [0, 1]; exactly
            ``k = round(fraction * n_features)`` features are selected per example, also when
            importances tie (ties are broken arbitrarily by ``torch.topk``).
        channel_dim: dimension of ``attributions`` (not 0, the examples) that holds channels; the
            importance of a feature is |attribution| summed over it, and a selected feature is masked
            in all its channels. ``None``: every entry is its own feature. For a time series
            ``[n, T, 1]`` pass ``2`` or ``-1``.

    Returns:
        ``Tensor[bool]`` shaped like ``attributions``; ``n_features`` counts features after the
        channel reduction, so each example has ``k * C`` True entries.
    """
    if attributions.dim() < 2:
        raise ValueError(
            f"attributions must have shape [n, *feature_shape] with at least 2 dims, got shape "
            f"{tuple(attributions.shape)}"
        )
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction <= 1:
        raise ValueError(
            f"fraction must be in [0, 1], got {fraction!r} (for a percentage p in [0, 100] use "
            f"percent_to_fraction(p))"
        )
    importance = attributions.abs()
    if torch.isnan(importance.sum()):  # |a| >= 0, so the sum is NaN only if some entry is
        raise ValueError("attributions contain NaN; importances cannot be ranked")
    if channel_dim is not None:
        ndim = attributions.dim()
        if not -ndim <= channel_dim < ndim or channel_dim % ndim == 0:
            raise ValueError(
                f"channel_dim must be a feature dimension of attributions with shape "
                f"{tuple(attributions.shape)} (1 to {ndim - 1}, or -{ndim - 1} to -1), or None; "
                f"got {channel_dim}"
            )
        if importance.shape[channel_dim] > 1:
            importance = importance.sum(dim=channel_dim, keepdim=True)

    n = importance.shape[0]
    flat = importance.reshape(n, -1)
    k = round(fraction * flat.shape[1])
    mask = _top_k_mask(flat, k)
    if mask.shape == attributions.reshape(n, -1).shape:
        return mask.reshape(attributions.shape)
    return mask.reshape(importance.shape).expand_as(attributions).clone()


_POOL: ThreadPoolExecutor | None = None
_MIN_ROWS_PER_THREAD = 64  # below this, a thread costs more than it saves


def _by_rows(function: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
    """``function(*blocks)`` on blocks of rows of ``arrays`` (split alike) on ``torch.get_num_threads()`` threads.

    numpy's sort and selection release the GIL, so the blocks run in parallel; ``function`` must act on
    each row independently (the result equals ``function(*arrays)``).
    """
    global _POOL
    threads = min(torch.get_num_threads(), len(arrays[0]) // _MIN_ROWS_PER_THREAD)
    if threads <= 1:
        return function(*arrays)
    if _POOL is None or _POOL._max_workers < threads:  # noqa: SLF001
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="labelfree-metrics")
    blocks = [np.array_split(array, threads) for array in arrays]
    return np.concatenate(list(_POOL.map(function, *blocks)))


def _numpy_friendly(tensor: Tensor) -> bool:
    """Whether ``tensor`` can take numpy's SIMD selection/sort: on the CPU, a float or integer dtype numpy has."""
    return tensor.device.type == "cpu" and tensor.dtype in _NUMPY_DTYPES


_NUMPY_DTYPES = frozenset({torch.float16, torch.float32, torch.float64, torch.int32, torch.int64})


def _top_k_mask(flat: Tensor, k: int) -> Tensor:
    """Boolean ``[n, m]`` mask of the ``k`` largest entries of each row of ``flat`` (exactly ``k`` per row).

    On the CPU each row's k-th largest value comes from numpy's ``partition`` (a SIMD selection of values,
    O(m) per row; 2x faster than ``argpartition``, which also tracks indices) and the mask is ``row >= it``;
    rows where that is not exactly k entries (ties at the k-th value) take ``argpartition``.
    Elsewhere ``torch.topk``. Ties are broken arbitrarily.
    """
    n, m = flat.shape
    if k == 0 or k == m:
        return torch.full((n, m), k == m, dtype=torch.bool, device=flat.device)
    if _numpy_friendly(flat):
        values = flat.detach().contiguous().numpy()
        mask = _by_rows(lambda rows: rows >= np.partition(rows, m - k, axis=1)[:, m - k : m - k + 1], values)
        uneven = np.flatnonzero(mask.sum(axis=1) != k)
        if len(uneven):
            top = np.argpartition(values[uneven], m - k, axis=1)[:, m - k :]
            mask[uneven] = False
            mask[uneven[:, None], top] = True
        return torch.from_numpy(mask)
    top = flat.topk(k, dim=1, sorted=False).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, top, True)


def mask_features(inputs: Tensor, mask: Tensor, baseline: float | Tensor) -> Tensor:
    """Replace the entries of ``inputs`` where ``mask`` is True by ``baseline``.

    Args:
        inputs: ``[n, *shape]``.
        mask: boolean, same shape as ``inputs`` (e.g. from :func:`top_feature_mask`).
        baseline: a scalar (0 = black pixels for MNIST), a tensor broadcastable to one example's
            shape (the mean normal heartbeat ``[T, 1]`` for ECG5000), or a tensor shaped like
            ``inputs`` (a blurred copy of each CIFAR-10 image).

    Returns:
        ``x_masked = where(mask, baseline, inputs)``, shaped and typed like ``inputs``.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
    if mask.shape != inputs.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match inputs shape {tuple(inputs.shape)}"
        )
    baseline = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device)
    try:
        broadcast = torch.broadcast_shapes(baseline.shape, inputs.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != inputs.shape:
        raise ValueError(
            f"baseline shape {tuple(baseline.shape)} cannot be broadcast to inputs shape "
            f"{tuple(inputs.shape)}; give a scalar, one example's shape {tuple(inputs.shape[1:])} "
            f"or the inputs' shape"
        )
    return torch.where(mask.to(inputs.device), baseline, inputs)


def _module_device(module: object) -> torch.device | None:
    if isinstance(module, nn.Module):
        parameter = next(module.parameters(), None)
        if parameter is not None:
            return parameter.device
    return None


def representation_shift(
    encoder: Callable[[Tensor], Tensor],
    inputs: Tensor,
    masked_inputs: Tensor,
    batch_size: int = 256,
) -> Tensor:
    """Representation shift ||f(x) - f(x_masked)||^2 of every example (higher is better).

    The squared L2 norm is taken over the flattened latent. Computed without gradients, batch by
    batch. If ``encoder`` is an ``nn.Module`` it is put in eval mode for the computation and every
    submodule's train/eval flag is restored afterwards; batches are moved to the device of its
    parameters. A plain callable is called as given (the caller is responsible for its mode).

    Args:
        encoder: f, maps ``[b, *shape]`` to ``[b, *latent_shape]``.
        inputs, masked_inputs: ``[n, *shape]``, same shape.
        batch_size: examples per forward pass.

    Returns:
        ``Tensor[n]`` on the CPU.
    """
    if inputs.shape != masked_inputs.shape:
        raise ValueError(
            f"inputs shape {tuple(inputs.shape)} does not match masked_inputs shape "
            f"{tuple(masked_inputs.shape)}"
        )
    if inputs.dim() < 1:
        raise ValueError("inputs must have a leading example dimension, got a scalar")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    device = _module_device(encoder)
    modes = {}
    if isinstance(encoder, nn.Module):
        modes = {module: module.training for module in encoder.modules()}
        encoder.eval()
    try:
        shifts = []
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                x = inputs[start : start + batch_size]
                x_masked = masked_inputs[start : start + batch_size]
                if device is not None:
                    x, x_masked = x.to(device), x_masked.to(device)
                h, h_masked = encoder(x), encoder(x_masked)
                if not isinstance(h, Tensor) or h.shape[:1] != x.shape[:1]:
                    raise ValueError(
                        "encoder must return a tensor [batch, *latent_shape]; got "
                        f"{type(h).__name__} {tuple(getattr(h, 'shape', ()))} for a batch of {len(x)}"
                    )
                shifts.append((h - h_masked).reshape(len(x), -1).pow(2).sum(dim=1).cpu())
    finally:
        for module, training in modes.items():
            module.training = training
    if not shifts:
        return torch.zeros(0)
    return torch.cat(shifts)


# --------------------------------------------------------------------------------------------------
# Consistency of example importance
# --------------------------------------------------------------------------------------------------


def similarity_rates(
    scores: Tensor, test_labels: Tensor, train_labels: Tensor, m: int
) -> tuple[Tensor, Tensor]:
    """Similarity rates of the ``m`` most and ``m`` least important training examples.

    For each test example i, among the ``m`` training examples with the highest ``scores[i]`` the
    fraction whose label equals ``test_labels[i]`` (``similarity_most``, higher is better), and the
    same among the ``m`` lowest-scored (``similarity_least``, lower is better). Labels are used
    here only, never to compute the scores. Ties in scores are broken arbitrarily.
    For several values of M use :func:`similarity_rate_curves` (one sort for all of them).

    Args:
        scores: ``[n_test, n_train]`` example importances (rows = test examples).
        test_labels: ``[n_test]``.
        train_labels: ``[n_train]``.
        m: number of training examples kept, ``1 <= m <= n_train`` (see :func:`percent_to_count`).

    Returns:
        ``(similarity_most, similarity_least)``, each a float ``Tensor[n_test]`` on ``scores``' device.
    """
    most, least = similarity_rate_curves(scores, test_labels, train_labels, [m])
    return most[0], least[0]


_COMPARISONS_PER_BLOCK = 1 << 22  # bounds the [rows, columns, len(ms)] comparison block (4 MiB of bools)


def _rate_counts_by_threshold(
    scores: np.ndarray, test_labels: np.ndarray, train_labels: np.ndarray, ms: Sequence[int]
) -> tuple[Tensor, Tensor] | None:
    """Label matches among each row's top-m and bottom-m entries, ``(most, least)``, each ``[len(ms), n_test]``,
    from order statistics instead of an argsort; ``None`` when a tie straddles a cut-off.

    Sorting values only (no indices) is 3x faster than ``argsort`` with numpy's SIMD sort. Without ties at
    the cut-offs, the top m of row i are exactly the entries ``>= t_i(m)``, its m-th largest value (and
    the bottom m those ``<= b_i(m)``); the label matches among them are counted where they can occur,
    in the block of rows and columns of each label.
    """
    n_test, n_train = scores.shape
    ordered = _by_rows(lambda rows: np.sort(rows, axis=1), scores)
    m = np.asarray(ms, dtype=np.int64)
    inner = m[m < n_train]
    if np.any(ordered[:, n_train - inner] == ordered[:, n_train - inner - 1]) or np.any(
        ordered[:, inner - 1] == ordered[:, inner]
    ):
        return None  # which of the tied entries count is arbitrary: the argsort path decides
    top = np.ascontiguousarray(ordered[:, n_train - m].T)  # [len(ms), n_test]: the m-th largest of each row
    bottom = np.ascontiguousarray(ordered[:, m - 1].T)  # the m-th smallest
    most = np.zeros((len(m), n_test), dtype=np.int64)
    least = np.zeros((len(m), n_test), dtype=np.int64)
    for label in np.unique(test_labels):
        rows, columns = np.flatnonzero(test_labels == label), np.flatnonzero(train_labels == label)
        if len(columns) == 0:
            continue
        step = max(1, _COMPARISONS_PER_BLOCK // (len(columns) * len(m)))
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            block = scores[np.ix_(part, columns)][None]  # [1, r, q]; counted along the contiguous last axis
            most[:, part] = np.count_nonzero(block >= top[:, part, None], axis=2)
            least[:, part] = np.count_nonzero(block <= bottom[:, part, None], axis=2)
    return torch.from_numpy(most), torch.from_numpy(least)


def similarity_rate_curves(
    scores: Tensor, test_labels: Tensor, train_labels: Tensor, ms: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """:func:`similarity_rates` for every ``m`` in ``ms`` at once: ``(most, least)``, each ``[len(ms), n_test]``.

    On the CPU, each row's values are sorted once and the matches counted against its order statistics
    (see :func:`_rate_counts_by_threshold`); when a tie straddles a cut-off, and on other devices, each
    row is argsorted once (ascending) and ``same[i, r] = 1`` when the training example of rank r carries test
    example i's label, and its running sum ``c`` gives every rate: least(m) = c[m - 1] / m and
    most(m) = (c[n - 1] - c[n - m - 1]) / m.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [n_test, n_train], got shape {tuple(scores.shape)}")
    if test_labels.dim() != 1 or train_labels.dim() != 1:
        raise ValueError(
            f"labels must be 1-D, got test_labels {tuple(test_labels.shape)} and train_labels "
            f"{tuple(train_labels.shape)}"
        )
    n_test, n_train = scores.shape
    if len(test_labels) != n_test:
        raise ValueError(
            f"scores has {n_test} rows (test examples) but test_labels has {len(test_labels)} entries"
        )
    if len(train_labels) != n_train:
        raise ValueError(
            f"scores has {n_train} columns (training examples) but train_labels has "
            f"{len(train_labels)} entries"
        )
    ms = list(ms)
    for m in ms:
        if isinstance(m, bool) or not isinstance(m, int):
            raise ValueError(f"M must be an integer number of training examples, got {m!r}")
        if m > n_train:
            raise ValueError(
                f"M = {m} exceeds the {n_train} training examples (columns of scores); "
                f"choose 1 <= M <= {n_train}"
            )
        if m < 1:
            raise ValueError(f"M must be at least 1, got {m}")
    if not torch.isfinite(scores.sum()) and torch.isnan(scores).any():  # the sum is finite without NaN (fast path)
        raise ValueError("scores contain NaN; training examples cannot be ranked")

    device = scores.device
    if _numpy_friendly(scores) and _numpy_friendly(train_labels) and _numpy_friendly(test_labels):
        counted = _rate_counts_by_threshold(scores.detach().contiguous().numpy(), test_labels.numpy(),
                                            train_labels.numpy(), ms)
        if counted is not None:
            index = torch.tensor(ms, dtype=torch.float32)
            return counted[0].float() / index[:, None], counted[1].float() / index[:, None]
        train_np = train_labels.numpy()

        def matches(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
            # [rows, n_train]: whether the training example of each rank (ascending score) has the row's label
            return train_np[np.argsort(rows, axis=1)] == labels[:, None]

        same = torch.from_numpy(_by_rows(matches, scores.detach().contiguous().numpy(), test_labels.numpy()))
    else:
        order = scores.argsort(dim=1)
        same = train_labels.to(device)[order] == test_labels.to(device).unsqueeze(1)
    counts = same.cumsum(dim=1, dtype=torch.int32)
    total = counts[:, -1]
    index = torch.tensor(ms, device=device)
    least = counts[:, index - 1].T.float() / index[:, None]
    below = torch.where(index[:, None] < n_train, counts[:, (n_train - index - 1).clamp_min(0)].T, 0)
    most = (total[None, :] - below).float() / index[:, None]
    return most, least


# --------------------------------------------------------------------------------------------------
# Correlation between explanations
# --------------------------------------------------------------------------------------------------


def _flatten_explanations(explanations: Tensor) -> Tensor:
    if explanations.dim() < 2:
        raise ValueError(
            f"explanations must have shape [k, ...] (k explanations, each flattened), got shape "
            f"{tuple(explanations.shape)}"
        )
    flat = explanations.reshape(len(explanations), -1)
    if flat.shape[1] < 2:
        raise ValueError(f"each explanation needs at least 2 entries to correlate, got {flat.shape[1]}")
    return flat.double()


def _pearson_rows(flat: Tensor) -> Tensor:
    centred = flat - flat.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    # a constant row has zero norm: 0 / 0 = NaN, the correlation is undefined
    return ((centred @ centred.T) / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)


def pearson_matrix(explanations: Tensor) -> Tensor:
    """Pearson correlation between every pair of ``k`` flattened explanations.

    Args:
        explanations: ``[k, ...]``; explanation i is ``explanations[i]`` flattened (e.g. the
            saliency maps of one model over the whole test set, or of one latent unit).

    Returns:
        ``Tensor[k, k]`` (float64): r_ij = cov(e_i, e_j) / (std(e_i) std(e_j)). A constant
        explanation (e.g. the all-zero map of a collapsed VAE unit) has no defined correlation:
        its row and column are NaN (the diagonal too). NaN entries propagate.
    """
    return _pearson_rows(_flatten_explanations(explanations))


def _average_ranks(flat: Tensor) -> Tensor:
    """Ranks 1..N of every row, tied values sharing their average rank (rows with NaN: NaN)."""
    k, n = flat.shape
    sorted_values, order = flat.sort(dim=1)
    starts_group = torch.ones_like(sorted_values, dtype=torch.bool)
    starts_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    # a group id unique across rows, so one scatter handles every row
    group = starts_group.long().cumsum(dim=1) - 1 + n * torch.arange(k, device=flat.device)[:, None]
    positions = torch.arange(1, n + 1, dtype=flat.dtype, device=flat.device).expand(k, n)
    sums = torch.zeros(k * n, dtype=flat.dtype, device=flat.device).scatter_add_(
        0, group.reshape(-1), positions.reshape(-1)
    )
    counts = torch.zeros(k * n, dtype=flat.dtype, device=flat.device).scatter_add_(
        0, group.reshape(-1), torch.ones(k * n, dtype=flat.dtype, device=flat.device)
    )
    # a tie group occupies consecutive sorted positions, so its mean position is its average rank
    mean_rank = sums[group] / counts[group]
    ranks = torch.empty_like(flat).scatter_(1, order, mean_rank)
    ranks[torch.isnan(flat).any(dim=1)] = math.nan
    return ranks


def spearman_matrix(explanations: Tensor) -> Tensor:
    """Spearman rank correlation between every pair of ``k`` flattened explanations.

    The Pearson correlation (:func:`pearson_matrix`) of the ranks, tied values receiving their
    average rank (as ``scipy.stats.spearmanr``). Invariant to strictly increasing transforms of an
    explanation. A constant explanation, or one containing NaN, gives NaN rows and columns.

    Returns:
        ``Tensor[k, k]`` (float64).
    """
    return _pearson_rows(_average_ranks(_flatten_explanations(explanations)))


def mean_off_diagonal(matrix: Tensor, skip_nan: bool = False) -> float:
    """Mean of the off-diagonal entries (i != j) of a square ``[k, k]`` matrix, k >= 2.

    The paper's summary of a correlation matrix (average over pairs of models or latent units).
    With ``skip_nan=False`` a NaN entry (a constant explanation) makes the result NaN; with
    ``skip_nan=True`` NaN entries are left out (NaN if all are).
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square [k, k], got shape {tuple(matrix.shape)}")
    k = matrix.shape[0]
    if k < 2:
        raise ValueError(f"a {k}x{k} matrix has no off-diagonal entries; need k >= 2")
    off_diagonal = matrix[~torch.eye(k, dtype=torch.bool, device=matrix.device)].double()
    return float(off_diagonal.nanmean() if skip_nan else off_diagonal.mean())


# --------------------------------------------------------------------------------------------------
# Saliency maps of latent units (disentangled VAEs, PAPER.md section 2)
# --------------------------------------------------------------------------------------------------
# ``maps`` are per-unit saliency maps ``[n, d, *feature_shape]``: entry (i, j) is the map of latent unit
# j for example i, |mu_j(x_i) * a(mu_j, x_i)| (non-negative). Features are flattened (channels included).
# Per-example values of the correlations and the cosine skip undefined pairs (a constant map); per-pixel
# values of the entropy and the active-unit count are NaN where the pixel carries no saliency at all
# (sum over units = 0; with a black baseline every black pixel), and summaries leave those out.

__all__ += [
    "unit_correlation",
    "pooled_unit_correlation",
    "unit_cosine",
    "unit_shares",
    "unit_entropy",
    "active_units",
]

HIGHER_IS_BETTER.update({
    # descriptive (the VAE study asks whether they fall as beta grows), no preferred direction
    "pearson_pooled": None,
    "spearman_pooled": None,
    "cosine": None,
    "entropy": None,
    "active_units": None,
})

UNIT_CORRELATIONS = ("pearson", "spearman")


def _unit_maps(maps: Tensor) -> Tensor:
    """``[n, d, *feature_shape]`` -> ``[n, d, P]`` float64, checked (d >= 2 units, P >= 2 features, no NaN)."""
    if maps.dim() < 3:
        raise ValueError(
            f"unit saliency maps must have shape [n, d, *feature_shape] (n examples, d latent units), got shape "
            f"{tuple(maps.shape)}"
        )
    n, d = maps.shape[:2]
    flat = maps.reshape(n, d, -1).double()
    if d < 2:
        raise ValueError(f"comparing the maps of latent units needs d >= 2 units, got {d}")
    if flat.shape[2] < 2:
        raise ValueError(f"each unit map needs at least 2 features, got {flat.shape[2]}")
    if torch.isnan(flat).any():
        raise ValueError("unit saliency maps contain NaN")
    return flat


def _mean_off_diagonal_rows(matrices: Tensor) -> Tensor:
    """``[n, d, d] -> [n]``: the mean of each matrix's off-diagonal entries, NaN entries left out."""
    d = matrices.shape[1]
    off = ~torch.eye(d, dtype=torch.bool, device=matrices.device)
    return matrices[:, off].nanmean(dim=1)


def _batched_pearson(flat: Tensor) -> Tensor:
    """``[n, d, P] -> [n, d, d]``: Pearson correlation between the d rows of every example (NaN: constant row)."""
    centred = flat - flat.mean(dim=2, keepdim=True)
    norms = centred.norm(dim=2)
    return ((centred @ centred.transpose(1, 2)) / (norms[:, :, None] * norms[:, None, :])).clamp(-1.0, 1.0)


def _ranked(flat: Tensor) -> Tensor:
    """Average ranks of every row of ``[n, d, P]`` along P (ties share their average rank)."""
    n, d, p = flat.shape
    return _average_ranks(flat.reshape(n * d, p)).reshape(n, d, p)


def unit_correlation(maps: Tensor, method: str = "pearson") -> Tensor:
    """Per example, the mean correlation between the saliency maps of distinct latent units.

    For example i, r_jk = corr(S_ij, S_ik) over the P features (Pearson, or Spearman = Pearson of average
    ranks), and the value is mean_{j != k} r_jk. A constant map (e.g. a unit whose mu_j(x) = 0) has no
    defined correlation; its pairs are left out (NaN when no pair is defined).

    Args:
        maps: ``[n, d, *feature_shape]``, d >= 2.
        method: ``pearson`` or ``spearman``.

    Returns:
        ``Tensor[n]`` (float64). Identical unit maps give 1.
    """
    if method not in UNIT_CORRELATIONS:
        raise ValueError(f"Unknown correlation {method!r}; accepted: {list(UNIT_CORRELATIONS)}")
    flat = _unit_maps(maps)
    if method == "spearman":
        flat = _ranked(flat)
    return _mean_off_diagonal_rows(_batched_pearson(flat))


def pooled_unit_correlation(maps: Tensor, method: str = "pearson") -> float:
    """The correlation between unit maps pooled over examples (the authors' code): each unit's maps of all
    ``n`` examples are flattened into one vector of n * P entries, and the mean off-diagonal entry of the
    d x d correlation matrix is returned (pairs with a constant unit left out)."""
    if method not in UNIT_CORRELATIONS:
        raise ValueError(f"Unknown correlation {method!r}; accepted: {list(UNIT_CORRELATIONS)}")
    flat = _unit_maps(maps)
    per_unit = flat.transpose(0, 1).reshape(1, flat.shape[1], -1)
    if method == "spearman":
        per_unit = _ranked(per_unit)
    return float(_mean_off_diagonal_rows(_batched_pearson(per_unit))[0])


def unit_cosine(maps: Tensor) -> Tensor:
    """Per example, the mean cosine similarity <S_ij, S_ik> / (|S_ij| |S_ik|) over pairs of distinct units j != k.

    ``maps [n, d, *feature_shape]`` -> ``Tensor[n]`` (float64); pairs with an all-zero map are left out.
    """
    flat = _unit_maps(maps)
    norms = flat.norm(dim=2)
    cosine = (flat @ flat.transpose(1, 2)) / (norms[:, :, None] * norms[:, None, :])
    return _mean_off_diagonal_rows(cosine)


def unit_shares(maps: Tensor) -> Tensor:
    """Each unit's share of every feature's saliency: q_j(i, p) = S_ij(p) / sum_k S_ik(p).

    ``maps [n, d, *feature_shape]`` (non-negative) -> ``Tensor[n, P, d]`` (float64), the distribution over
    units of each feature; NaN for a feature that carries no saliency (sum over units = 0).
    """
    flat = _unit_maps(maps)
    if (flat < 0).any():
        raise ValueError("unit saliency maps must be non-negative (take |mu_j(x) * attribution|)")
    per_feature = flat.transpose(1, 2)
    total = per_feature.sum(dim=2, keepdim=True)
    return torch.where(total > 0, per_feature / total, torch.full_like(per_feature, math.nan))


def unit_entropy(maps: Tensor) -> Tensor:
    """Entropy (natural log) of the distribution over units of every feature's saliency (:func:`unit_shares`).

    H(i, p) = -sum_j q_j log q_j, between 0 (one unit carries the feature) and log d (all units share it
    equally). ``Tensor[n, P]`` (float64), NaN for features without saliency.
    """
    shares = unit_shares(maps)
    return 0.0 - torch.special.xlogy(shares, shares).sum(dim=2)  # (0 - x: no negative zeros)


def active_units(maps: Tensor) -> Tensor:
    """Number of "active" units of every feature: units whose share of its saliency exceeds 1/d (strictly).

    ``Tensor[n, P]`` (float64): between 0 (every unit exactly 1/d) and d - 1; 1 when one unit carries the
    feature. NaN for features without saliency.
    """
    shares = unit_shares(maps)
    count = (shares > 1.0 / shares.shape[2]).sum(dim=2).double()
    return torch.where(torch.isnan(shares[:, :, 0]), torch.full_like(count, math.nan), count)
