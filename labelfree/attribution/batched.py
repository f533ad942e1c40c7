"""Label-free feature attributions of a whole tensor, batch by batch (the one loop every protocol shares)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from captum.attr import Attribution
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.data.splits import Baseline, baseline_like

__all__ = ["attribute_all", "attribute_features", "iter_attributions"]


def _accepts_baselines(explainer: Attribution) -> bool:
    method = getattr(explainer, "method", explainer)
    return "baselines" in inspect.signature(method.attribute).parameters


def attribute_features(
    explainer: Attribution, inputs: Tensor, baseline: Baseline, attribute_kwargs: Mapping[str, Any], units: bool = False
) -> Tensor:
    """Attributions of one batch, handing the dataset's ``baseline`` to methods that take one.

    Returns ``[n, *input_shape]``, or ``[n, d, *input_shape]`` with ``units`` (one map per latent unit,
    :meth:`~labelfree.attribution.features.LabelFreeAttribution.attribute_units`); detached.
    """
    kwargs = dict(attribute_kwargs)
    if _accepts_baselines(explainer) and "baselines" not in kwargs:
        # Gradient Shap samples its baselines from a distribution: one baseline per input is that distribution.
        kwargs["baselines"] = baseline_like(baseline, inputs)
    if units:
        if not hasattr(explainer, "attribute_units"):
            raise ValueError(f"{type(explainer).__name__} cannot explain latent units one by one (no attribute_units); "
                             "use a label-free Captum method such as gradient_shap")
        return explainer.attribute_units(inputs, **kwargs).detach()
    return explainer.attribute(inputs, **kwargs).detach()


def iter_attributions(
    explainer: Attribution,
    x: Tensor,
    baseline: Baseline,
    attribute_kwargs: Mapping[str, Any],
    batch_size: int,
    device: torch.device,
    units: bool = False,
    desc: str = "attributions",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x_batch, attributions)`` on ``device`` for consecutive batches of ``x [n, *input_shape]``."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for idx in tqdm(torch.arange(len(x)).split(int(batch_size)), desc=desc, leave=False):
        xb = x[idx].to(device)
        yield xb, attribute_features(explainer, xb, baseline, attribute_kwargs, units=units)


def attribute_all(
    explainer: Attribution,
    x: Tensor,
    baseline: Baseline,
    attribute_kwargs: Mapping[str, Any],
    batch_size: int,
    device: torch.device,
    absolute: bool = False,
    desc: str = "attributions",
) -> Tensor:
    """Attributions ``[n, *input_shape]`` of every input of ``x``, on the CPU (``absolute``: their magnitude)."""
    parts = [
        (a.abs() if absolute else a).cpu()
        for _, a in iter_attributions(explainer, x, baseline, attribute_kwargs, batch_size, device, desc=desc)
    ]
    return torch.cat(parts)
