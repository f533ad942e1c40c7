"""Protocol: RemOve And Retrain (ROAR; Crabbé & van der Schaar, 2022, appendix).

Rank the pixels of every *training* image by a label-free feature importance, remove (replace by the
baseline) the top k% of them, retrain the model from the same initial weights on the degraded images,
and report its reconstruction loss on the clean test set. If an explainer finds the pixels the model
relies on, removing them hurts more than removing random ones (a higher test loss).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from captum.attr import Attribution
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.attribution.batched import BatchedAttribution
from labelfree.data.splits import Baseline, baseline_like
from labelfree.guards import check_finite
from labelfree.metrics import mask_features, percent_to_fraction, top_feature_mask
from labelfree.models.base import PretextModel
from labelfree.modules import module_device
from labelfree.training import TrainConfig, train

log = logging.getLogger(__name__)

UNMASKED = "unmasked"


def feature_importances(
    explainers: Mapping[str, Attribution],
    attribute_kwargs: Mapping[str, Mapping[str, Any]],
    x: Tensor,
    baseline: Baseline,
    batch_size: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """Attributions ``[n, *input_shape]`` (on the CPU) of every input of ``x`` for each explainer."""
    return {
        name: BatchedAttribution(explainer, baseline, attribute_kwargs.get(name, {}), batch_size, device).all(
            x, desc=f"ROAR importances {name}")
        for name, explainer in explainers.items()
    }


def remove_top_features(
    x: Tensor, attributions: Tensor, percent: float, baseline: Baseline, channel_dim: int | None = 1
) -> Tensor:
    """``x`` with its top ``percent`` % features (by |attribution| summed over ``channel_dim``) set to the baseline."""
    mask = top_feature_mask(attributions, percent_to_fraction(percent), channel_dim=channel_dim)
    return mask_features(x, mask, baseline_like(baseline, x))


def roar(
    make_model: Callable[[], PretextModel],
    init_state: Mapping[str, Tensor],
    train_x: Tensor,
    val_x: Tensor,
    test_x: Tensor,
    train_importances: Mapping[str, Tensor],
    val_importances: Mapping[str, Tensor],
    percents: Sequence[float],
    config: TrainConfig,
    seed: int,
    baseline: Baseline = 0.0,
    channel_dim: int | None = 1,
    include_unmasked: bool = True,
) -> pd.DataFrame:
    """Test loss after retraining on images without their top-k% features, per (method, k).

    Every retraining starts from ``init_state`` with the same seed, so methods differ only in the
    pixels removed. Removing 100 % leaves the same (all-baseline) images for every method: that
    model is trained once and its result shared. Returns tidy rows ``method, level, metric, value,
    std, n`` with ``metric == "test_loss"`` (mean clean-test pretext loss, std over test examples);
    with ``include_unmasked`` a ``level == 0`` row per method gives the loss after retraining on the
    intact images (the reference every curve starts from).
    """
    if not train_importances:
        raise ValueError("roar needs at least one feature explainer's importances")
    cache: dict[str, tuple[float, float, int]] = {}

    def retrain(key: str, fit_x: Tensor, check_x: Tensor) -> tuple[float, float, int]:
        if key not in cache:
            model = make_model()
            model.load_state_dict(copy.deepcopy(dict(init_state)))
            train(model, fit_x, check_x, config, seed=seed)
            with torch.no_grad():
                device = module_device(model)
                losses = torch.cat([
                    model.pretext_loss(test_x[idx].to(device), None, perturb=False).cpu()
                    for idx in torch.arange(len(test_x)).split(config.eval_batch_size)
                ])
            cache[key] = (float(losses.mean()), float(losses.std()) if len(losses) > 1 else 0.0, len(losses))
        return cache[key]

    rows = []
    levels = ([0.0] if include_unmasked else []) + [float(p) for p in percents]
    for method in train_importances:
        for p in tqdm(levels, desc=f"ROAR {method}", leave=False):
            if p == 0:
                key, fit_x, check_x = UNMASKED, train_x, val_x
            else:
                key = f"all@{p}" if percent_to_fraction(p) >= 1 else f"{method}@{p}"
                fit_x = remove_top_features(train_x, train_importances[method], p, baseline, channel_dim)
                check_x = remove_top_features(val_x, val_importances[method], p, baseline, channel_dim)
            start = time.perf_counter()
            mean, std, n = retrain(key, fit_x, check_x)
            log.info("ROAR %s at %g%%: test loss %.5g (%.1f s)", method, p, mean, time.perf_counter() - start)
            rows.append({"method": method, "level": p, "metric": "test_loss", "value": mean, "std": std, "n": n})
    return check_finite("roar", pd.DataFrame(rows))
