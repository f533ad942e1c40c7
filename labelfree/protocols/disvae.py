"""Protocol: do the latent units of disentangled VAEs attend to distinct features? (PAPER.md sections 2-3, "VAEs")

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
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from captum.attr import Attribution
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from labelfree.data.splits import Baseline, DataSplits, baseline_like
from labelfree.metrics import (
    active_units,
    pooled_unit_correlation,
    unit_correlation,
    unit_cosine,
    unit_entropy,
)
from labelfree.models.vae import gaussian_kl
from labelfree.plots import plot_unit_saliency
from labelfree.runner import Workbench, build_feature_explainers, identify, write_check
from labelfree.tracking import CSVTracker
from labelfree.training import seed_everything

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
    device = next(explainer.encoder.parameters()).device
    for idx in tqdm(torch.arange(len(x)).split(batch_size), desc="unit saliency", leave=False):
        xb = x[idx].to(device)
        maps = explainer.attribute_units(xb, baselines=baseline_like(baseline, xb), **attribute_kwargs).detach().abs()
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
    device = next(encoder.parameters()).device
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


# ------------------------------------------------------------------------------------------ runner
def model_config(cfg: DictConfig, data: DataSplits) -> DictConfig:
    """``cfg.model`` with ``dataset_size`` (N of the TC-VAE estimator) set to the training split's size when it is null."""
    if "dataset_size" in cfg.model and cfg.model.dataset_size is None:
        return OmegaConf.merge(cfg.model, {"dataset_size": len(data.train_x)})
    return cfg.model


def run_disvae(cfg: DictConfig, bench: Workbench, run_dir: Path, tracker: CSVTracker) -> dict[str, Any]:
    """Train or load the VAE of ``cfg.model``, explain each latent unit of its mean on test images, write the
    metric table ``disvae.csv`` with the unit-map figure, and return summary entries."""
    protocol = cfg.protocol
    # Trained VAEs produce denormal floats that make CPU convolutions (their backward pass above all) about
    # twice as slow. Flushing them to zero changes only values below 1.2e-38. Threads of the intra-op pool
    # inherit the setting when it is made before the pool starts (a fresh process: the protocol runs first).
    flush = bool(protocol.get("flush_denormal", False)) and torch.set_flush_denormal(True)
    try:
        return _run_disvae(cfg, bench, run_dir, tracker)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _run_disvae(cfg: DictConfig, bench: Workbench, run_dir: Path, tracker: CSVTracker) -> dict[str, Any]:
    protocol, seed = cfg.protocol, int(cfg.seed)
    start = time.perf_counter()
    data = bench.data("features")
    model_cfg = model_config(cfg, data)
    if "beta" not in model_cfg:
        raise ValueError(f"protocol disvae explains the latent units of a VAE (model=beta_vae or tc_vae), "
                         f"got model {model_cfg.name!r}")
    trained = bench.get("features", model_cfg)
    encoder = trained.model.encoder
    summary: dict[str, Any] = {"model_seconds": time.perf_counter() - start}

    start = time.perf_counter()
    seed_everything(seed)  # the same draws whether the model was trained now or loaded
    test_x = data.test_x
    if protocol.n_test is not None:
        order = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(seed))
        test_x = test_x[order[: int(protocol.n_test)]]
    explainers, kwargs = build_feature_explainers(cfg, [str(protocol.explainer)], encoder)
    explainer, attribute_kwargs = explainers[str(protocol.explainer)], kwargs[str(protocol.explainer)]
    n_show = min(int(protocol.figures.n_images), len(test_x))
    shown: list[Tensor] = []

    def stream() -> Iterator[Tensor]:
        for maps in unit_saliency(explainer, test_x, data.baseline, attribute_kwargs, int(protocol.batch_size),
                                  data.channel_dim):
            if sum(map(len, shown)) < n_show:
                shown.append(maps[: n_show - sum(map(len, shown))])
            yield maps

    pooled_max = protocol.get("pooled_max_images")
    frame = disvae_metrics(stream(), None if pooled_max is None else int(pooled_max))
    kl = kl_per_unit(encoder, test_x, int(protocol.batch_size))
    collapsed = int((kl < float(protocol.collapse_kl)).sum())
    frame = pd.concat([frame, pd.DataFrame([{"metric": "collapsed_units", "value": float(collapsed), "std": math.nan,
                                             "n": len(kl)}])], ignore_index=True)
    loss, beta = str(model_cfg.get("pretext") or model_cfg.name), float(model_cfg.beta)
    frame.insert(0, "method", str(protocol.explainer))
    frame.insert(1, "loss", loss)
    frame.insert(2, "beta", beta)
    frame.insert(3, "latent_dim", int(model_cfg.latent_dim))
    frame.insert(4, "level", beta)
    frame = identify(cfg, data, frame)
    title = f"{data.name}: {loss}, beta = {beta:g} (seed {seed}); |mu_j(x) * {protocol.explainer}| per latent unit"
    images = test_x[:n_show]
    figure = plot_unit_saliency(images, torch.cat(shown), title, unit_kl=kl.tolist())
    write_check(TABLE, frame, figure, run_dir, tracker)
    summary.update({f"{row.metric}": row.value for row in frame.itertuples(index=False)})
    summary.update({"explain_seconds": time.perf_counter() - start, "n_test": len(test_x), "loss": loss, "beta": beta,
                    "kl_per_unit": kl.tolist()})
    log.info("%s beta=%g seed %d: pearson %.3f, spearman %.3f, cosine %.3f, entropy %.3f, active units %.2f", loss, beta,
             seed, *(summary[m] for m in ("pearson", "spearman", "cosine", "entropy", "active_units")))
    return summary
