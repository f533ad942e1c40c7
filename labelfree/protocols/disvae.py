"""Protocol: do the latent units of disentangled VAEs attend to distinct features? (Crabbé & van der Schaar, 2022, "VAEs")

A beta-VAE or beta-TCVAE is explained one latent unit at a time: the saliency map of unit j for an input x is
``S_j(x) = |mu_j(x) * a(mu_j, x)|`` with a = label-free Gradient Shap on the posterior mean mu_j and a black
baseline (:meth:`~labelfree.attribution.features.LabelFreeAttribution.attribute_units`). Channels are summed,
so a map has one value per pixel. The paper's claim: the correlation between the maps of different units does
not fall as beta grows, so disentangled units do not focus on distinct parts of the input.

Metrics per model (definitions in :mod:`labelfree.metrics`; ``value`` / ``std`` / ``n`` of each tidy row):

* ``pearson``, ``spearman``: per test image, the mean correlation over pairs of distinct units of their maps
  (over the pixels of that image), then the mean (``value``) and std over test images. Undefined pairs (a map
  that is constant on the image) are left out.
* ``pearson_pooled``, ``spearman_pooled``: the authors' code: each unit's maps of the first
  ``pooled_max_images`` test images flattened into one vector, mean off-diagonal correlation (std NaN).
* ``cosine``: per test image, the mean cosine similarity between the maps of distinct units; mean / std over images.
* ``entropy``: for every (image, pixel) with saliency, the entropy (nats, in [0, log d]) of the units' shares
  q_j = S_j / sum_k S_k of that pixel's saliency; mean / std over all such pixels (pixels without saliency,
  e.g. every black pixel under a black baseline, are left out, as in the authors' code).
* ``active_units``: for the same pixels, the number of units whose share exceeds 1/d; mean / std over pixels.
* ``collapsed_units``: latent units whose KL(q(z_j|x) || N(0, 1)), averaged over the test images, is below
  ``protocol.collapse_kl`` (units the posterior ignores; their maps are small but not zero).

Tidy rows: ``method, loss, beta, latent_dim, level (= beta), metric, value, std, n``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from captum.attr import Attribution
from torch import Tensor, nn

from labelfree.attribution.batched import BatchedAttribution
from labelfree.data.splits import Baseline
from labelfree.guards import check_finite
from labelfree.metrics import (
    active_units,
    pooled_unit_correlation,
    unit_correlation,
    unit_cosine,
    unit_entropy,
)
from labelfree.models.vae import gaussian_kl
from labelfree.modules import module_device

log = logging.getLogger(__name__)

TABLE = "disvae"
PER_IMAGE = ("pearson", "spearman", "cosine")
PER_PIXEL = ("entropy", "active_units")
POOLED = ("pearson_pooled", "spearman_pooled")
METRICS = ("pearson", "spearman", *POOLED, "cosine", *PER_PIXEL, "collapsed_units")


# ----------------------------------------------------------------------------------- pure functions
def unit_saliency(
    explainer: Attribution,
    x: Tensor,
    baseline: Baseline,
    attribute_kwargs: Mapping[str, Any],
    batch_size: int,
    channel_dim: int | None = 1,
) -> Iterator[Tensor]:
    """Per-unit saliency maps |mu_j(x) * a(mu_j, x)|, batch by batch: yields ``[b, d, *feature_shape]`` (CPU).

    ``explainer`` is a label-free attribution built on the encoder x -> mu (it must offer ``attribute_units``);
    ``baseline`` is the dataset's masking baseline (black pixels), handed to methods that take ``baselines``.
    ``channel_dim`` (of an input batch ``[b, *input_shape]``) is summed over, so a feature is a pixel.
    """
    if not hasattr(explainer, "attribute_units"):
        raise ValueError(f"{type(explainer).__name__} cannot explain latent units one by one (no attribute_units); "
                         "use a label-free Captum method such as gradient_shap")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = module_device(explainer.encoder)
    batched = BatchedAttribution(explainer, baseline, attribute_kwargs, batch_size, device, units=True)
    for xb, maps in batched.batches(x, desc="unit saliency"):
        maps = maps.abs()
        if channel_dim is not None:
            maps = maps.sum(dim=(channel_dim % xb.dim()) + 1)  # +1: the unit dim sits after the examples
        yield maps.cpu()


@dataclass
class _Moments:
    """Running mean / std of a stream of values (NaN left out)."""

    total: float = 0.0
    total_sq: float = 0.0
    count: int = 0

    def add(self, values: Tensor) -> None:
        values = values[~torch.isnan(values)].double()
        self.total += float(values.sum())
        self.total_sq += float(values.pow(2).sum())
        self.count += int(values.numel())

    def row(self, metric: str) -> dict[str, Any]:
        if self.count == 0:
            return {"metric": metric, "value": math.nan, "std": math.nan, "n": 0}
        mean = self.total / self.count
        var = max(self.total_sq / self.count - mean**2, 0.0) * self.count / max(self.count - 1, 1)
        return {"metric": metric, "value": mean, "std": math.sqrt(var), "n": self.count}


def disvae_metrics(maps: Iterable[Tensor], pooled_max_images: int | None = None) -> pd.DataFrame:
    """The unit-map metrics of one model from its saliency maps, streamed batch by batch.

    Args:
        maps: batches ``[b, d, *feature_shape]`` of non-negative per-unit maps (e.g. from :func:`unit_saliency`).
        pooled_max_images: the pooled correlations use the first this-many images (``None``: all), which
            bounds their memory (they rank every pixel of every image at once).

    Returns:
        Tidy rows ``metric, value, std, n`` for ``pearson, spearman, pearson_pooled, spearman_pooled, cosine,
        entropy, active_units`` (module docstring). ``n``: images (per-image metrics and pooled ones) or
        salient pixels (entropy, active units).
    """
    moments = {metric: _Moments() for metric in (*PER_IMAGE, *PER_PIXEL)}
    pooled: list[Tensor] = []
    kept = 0
    for batch in maps:
        moments["pearson"].add(unit_correlation(batch, "pearson"))
        moments["spearman"].add(unit_correlation(batch, "spearman"))
        moments["cosine"].add(unit_cosine(batch))
        moments["entropy"].add(unit_entropy(batch).flatten())
        moments["active_units"].add(active_units(batch).flatten())
        if pooled_max_images is None or kept < pooled_max_images:
            take = batch if pooled_max_images is None else batch[: pooled_max_images - kept]
            pooled.append(take)
            kept += len(take)
    if not pooled:
        raise ValueError("disvae_metrics needs at least one batch of unit maps")
    everything = torch.cat(pooled)
    rows = [moments[m].row(m) for m in ("pearson", "spearman")]
    rows += [{"metric": f"{method}_pooled", "value": pooled_unit_correlation(everything, method), "std": math.nan,
              "n": len(everything)} for method in ("pearson", "spearman")]
    rows += [moments[m].row(m) for m in ("cosine", *PER_PIXEL)]
    return pd.DataFrame(rows)


def kl_per_unit(encoder: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """KL(q(z_j|x) || N(0, 1)) of every latent unit, averaged over ``x``: ``[d]`` (``encoder.posterior`` gives mu, logvar)."""
    device = module_device(encoder)
    totals = None
    with torch.no_grad():
        for idx in torch.arange(len(x)).split(batch_size):
            mu, logvar = encoder.posterior(x[idx].to(device))
            per_unit = gaussian_kl(mu.reshape(-1, 1), logvar.reshape(-1, 1)).view_as(mu)  # one unit at a time
            part = per_unit.sum(dim=0).cpu()
            totals = part if totals is None else totals + part
    if totals is None:
        raise ValueError("kl_per_unit needs at least one input")
    return totals / len(x)


def disvae_unit_maps(
    explainer: Attribution,
    encoder: nn.Module,
    test_x: Tensor,
    baseline: Baseline,
    attribute_kwargs: Mapping[str, Any],
    batch_size: int,
    collapse_kl: float,
    channel_dim: int | None = 1,
    pooled_max_images: int | None = None,
    n_show: int = 0,
) -> tuple[pd.DataFrame, Tensor, Tensor]:
    """The protocol for one VAE: unit saliency maps of ``test_x``, their metrics and the collapsed units.

    Returns the tidy rows ``metric, value, std, n`` of :func:`disvae_metrics` plus ``collapsed_units`` (units
    whose mean KL on ``test_x`` is below ``collapse_kl``), the KL per unit ``[d]``, and the maps of the first
    ``n_show`` images ``[n_show, d, *feature_shape]`` for a figure.
    """
    shown: list[Tensor] = []

    def stream() -> Iterator[Tensor]:
        for maps in unit_saliency(explainer, test_x, baseline, attribute_kwargs, batch_size, channel_dim):
            kept = sum(map(len, shown))
            if kept < n_show:
                shown.append(maps[: n_show - kept])
            yield maps

    frame = disvae_metrics(stream(), pooled_max_images)
    kl = kl_per_unit(encoder, test_x, batch_size)
    collapsed = int((kl < float(collapse_kl)).sum())
    frame = pd.concat([frame, pd.DataFrame([{"metric": "collapsed_units", "value": float(collapsed), "std": math.nan,
                                             "n": len(kl)}])], ignore_index=True)
    # std is NaN for pooled metrics and counts, value NaN for a metric with no salient pixel (disvae_metrics)
    return check_finite("disvae", frame, allow_nan=("value", "std")), kl, torch.cat(shown) if shown else torch.zeros(0)
