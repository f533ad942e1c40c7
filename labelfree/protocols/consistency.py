"""Protocol: consistency of label-free feature importance (PAPER.md section 2).

Mask the top p% features of each test input (ranked by |attribution| summed over channels) with a
baseline and measure the representation shift ||f(x) - f(x_masked)||^2. A faithful explainer shifts
the representation more than a random ranking.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from captum.attr import Attribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from labelfree.data.splits import baseline_like
from labelfree.metrics import mask_features, percent_to_fraction, representation_shift, top_feature_mask

log = logging.getLogger(__name__)


def _accepts_baselines(explainer: Attribution) -> bool:
    method = getattr(explainer, "method", explainer)
    return "baselines" in inspect.signature(method.attribute).parameters


def attribute_features(
    explainer: Attribution, inputs: Tensor, baseline: float | Tensor, attribute_kwargs: Mapping[str, Any]
) -> Tensor:
    """Attributions ``[n, *input_shape]`` of one batch, handing the dataset's baseline to methods that take one."""
    kwargs = dict(attribute_kwargs)
    if _accepts_baselines(explainer) and "baselines" not in kwargs:
        base = baseline_like(baseline, inputs)
        # Gradient Shap samples its baselines from a distribution: one baseline per input is that distribution.
        kwargs["baselines"] = base
    return explainer.attribute(inputs, **kwargs).detach()


def consistency_features(
    encoder: nn.Module,
    test_x: Tensor,
    baseline: float | Tensor,
    explainers: Mapping[str, Attribution],
    attribute_kwargs: Mapping[str, Mapping[str, Any]],
    percents: Sequence[float],
    channel_dim: int | None = 1,
    batch_size: int = 500,
) -> pd.DataFrame:
    """Representation shift per (method, p); tidy rows with mean, std and count over test examples.

    ``encoder`` is explained in eval mode; ``test_x [n, *input_shape]``. Returns columns
    ``method, level, metric, value, std, n`` (level = p in percent, metric = representation_shift).
    """
    fractions = [percent_to_fraction(p) for p in percents]
    if not explainers:
        raise ValueError("consistency_features needs at least one feature explainer")
    device = next(encoder.parameters()).device
    encoder.eval()
    shifts: dict[tuple[str, float], list[Tensor]] = {}
    batches = list(torch.arange(len(test_x)).split(batch_size))
    for name, explainer in explainers.items():
        for idx in tqdm(batches, desc=f"features {name}", leave=False):
            x = test_x[idx].to(device)
            attributions = attribute_features(explainer, x, baseline, attribute_kwargs.get(name, {}))
            base = baseline_like(baseline, x)
            for p, fraction in zip(percents, fractions):
                mask = top_feature_mask(attributions, fraction, channel_dim=channel_dim)
                shift = representation_shift(encoder, x, mask_features(x, mask, base))
                shifts.setdefault((name, float(p)), []).append(shift.cpu())
        log.info("features %s done", name)
    rows = []
    for (name, p), parts in shifts.items():
        values = torch.cat(parts)
        rows.append(
            {
                "method": name,
                "level": p,
                "metric": "representation_shift",
                "value": float(values.mean()),
                "std": float(values.std()) if len(values) > 1 else 0.0,
                "n": len(values),
            }
        )
    return pd.DataFrame(rows)
