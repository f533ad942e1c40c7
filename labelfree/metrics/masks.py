"""Consistency of feature importance, first half: mask each input's top features by |attribution|
(:func:`top_feature_mask`, :func:`mask_features`). A random ranking is obtained by passing random
attributions (e.g. ``torch.rand_like(inputs)``) to :func:`top_feature_mask`."""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np
import torch
from torch import Tensor

from labelfree.metrics._rows import _by_rows, _numpy_friendly

__all__ = ["LAYOUTS", "top_feature_mask", "mask_features"]

#: Feature layouts of :func:`top_feature_mask`: the dimension holding channels (summed when ranking), or ``None``.
LAYOUTS: dict[str, int | None] = {
    "channels_first": 1,  # images [n, C, H, W]: a feature is a pixel, |attribution| summed over C
    "channels_last": -1,  # sequences [n, T, C]: a feature is a time step, summed over C
    "none": None,  # every entry is its own feature
}


class _Default:
    """Marks ``channel_dim`` as not given (then ``layout`` decides, else ``channels_first``)."""

    def __repr__(self) -> str:
        return "1"


_DEFAULT_CHANNEL_DIM: Any = _Default()


def _channel_dim(
    attributions: Tensor, channel_dim: int | None | _Default, layout: str | None
) -> tuple[int | None, str]:
    """The channel dimension to sum over and a description of the layout for messages."""
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        if not isinstance(channel_dim, _Default) and channel_dim != LAYOUTS[layout]:
            raise ValueError(f"give layout= or channel_dim=, not both (layout={layout!r} sums over "
                             f"{LAYOUTS[layout]}, channel_dim={channel_dim})")
        if LAYOUTS[layout] is not None and attributions.dim() < 3:
            raise ValueError(f"layout={layout!r} needs attributions [n, ...] with a channel dimension and at least one "
                             f"feature dimension (3 dims or more), got shape {tuple(attributions.shape)}; use "
                             "layout='none' for [n, d]")
        return LAYOUTS[layout], f"layout={layout!r}"
    if isinstance(channel_dim, _Default):
        return 1, "layout='channels_first' (the default: |attribution| summed over dim 1)"
    return channel_dim, f"channel_dim={channel_dim}"


def top_feature_mask(
    attributions: Tensor,
    fraction: float,
    channel_dim: int | None = _DEFAULT_CHANNEL_DIM,
    *,
    layout: str | None = None,
) -> Tensor:
    """Boolean mask of each example's top ``fraction`` of features by |attribution|.

    Args:
        attributions: ``[n, *shape]`` feature importances (images ``[n, C, H, W]``, sequences
            ``[n, T, C]``, ...).
        fraction: share of features to select, in [0, 1]; exactly
            ``k = round(fraction * n_features)`` features are selected per example, also when
            importances tie (ties are broken arbitrarily by ``torch.topk``). A fraction > 0 that selects no
            feature (k rounds to 0) is an error; ``fraction=0`` selects none.
        channel_dim: dimension of ``attributions`` (not 0, the examples) that holds channels; the
            importance of a feature is |attribution| summed over it, and a selected feature is masked
            in all its channels. ``None``: every entry is its own feature. Default 1 (``channels_first``).
            Kept for the configs (``dataset.channel_dim``); ``layout`` says the same by name.
        layout: ``"channels_first"`` (images ``[n, C, H, W]``: sum over dim 1, the default),
            ``"channels_last"`` (sequences ``[n, T, C]``: sum over the last dim) or ``"none"`` (every entry
            a feature); see :data:`LAYOUTS`. Not together with a different ``channel_dim``.

    Returns:
        ``Tensor[bool]`` shaped like ``attributions``; ``n_features`` counts features after the
        channel reduction, so each example has ``k * C`` True entries.

    Raises:
        ValueError: a fraction outside [0, 1], NaN attributions, an invalid ``channel_dim`` or ``layout``, or a
            fraction > 0 that selects no feature (naming the fraction, the number of features and the layout: e.g.
            a sequence ``[n, T, 1]`` ranked with the default ``channels_first`` layout has one feature).
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
    channel_dim, described = _channel_dim(attributions, channel_dim, layout)
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
    if k == 0 and fraction > 0:
        raise ValueError(
            f"top_feature_mask selects no feature: fraction {fraction:g} of {flat.shape[1]} feature(s) per example "
            f"rounds to 0 with {described} on attributions of shape {tuple(attributions.shape)}; for sequences "
            "[n, T, C] pass layout='channels_last', for one feature per entry layout='none', else a larger fraction"
        )
    mask = _top_k_mask(flat, k)
    if mask.shape == attributions.reshape(n, -1).shape:
        return mask.reshape(attributions.shape)
    return mask.reshape(importance.shape).expand_as(attributions).clone()


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

