"""Label-free feature attributions of a whole tensor, batch by batch (the one loop every protocol shares)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.attr import Attribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from labelfree.data.splits import Baseline, baseline_like
from labelfree.guards import check_finite
from labelfree.modules import module_device

__all__ = ["BatchedAttribution", "attribute_features"]


def _accepts_baselines(explainer: Attribution) -> bool:
    method = getattr(explainer, "method", explainer)
    return "baselines" in inspect.signature(method.attribute).parameters


def _explainer_device(explainer: Attribution) -> torch.device:
    """Device of the encoder a (label-free) explainer explains; the CPU when it is not an ``nn.Module``."""
    encoder = getattr(explainer, "encoder", getattr(explainer, "forward_func", None))
    return module_device(encoder) if isinstance(encoder, nn.Module) else torch.device("cpu")


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


@dataclass(frozen=True)
class BatchedAttribution:
    """A label-free feature explainer applied to a whole tensor, ``batch_size`` inputs at a time on ``device``.

    Args:
        explainer: e.g. ``LabelFreeAttribution(IntegratedGradients(encoder))``.
        baseline: handed to methods that take ``baselines`` (a number, a tensor broadcastable to a batch, or a
            function of the batch); default 0.
        attribute_kwargs: further keyword arguments of ``explainer.attribute`` (``n_steps``, ...).
        batch_size: inputs per call (default 256).
        device: where batches go; ``None``: the device of the explained encoder (CPU for a plain callable).
        units: one map per latent unit (``[n, d, *input_shape]``) instead of one per input.
    """

    explainer: Attribution
    baseline: Baseline = 0.0
    attribute_kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 256
    device: torch.device | None = None
    units: bool = False

    def __post_init__(self) -> None:
        size = self.batch_size
        if isinstance(size, bool) or int(size) != size or size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {size!r}")

    def batches(self, x: Tensor, desc: str = "attributions") -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x_batch, attributions)`` on ``device`` for consecutive batches of ``x [n, *input_shape]``."""
        device = self.device if self.device is not None else _explainer_device(self.explainer)
        for idx in tqdm(torch.arange(len(x)).split(int(self.batch_size)), desc=desc, leave=False):
            xb = x[idx].to(device)
            attributions = attribute_features(self.explainer, xb, self.baseline, self.attribute_kwargs, units=self.units)
            yield xb, check_finite(f"attributions by {type(getattr(self.explainer, 'method', self.explainer)).__name__} "
                                   f"(inputs {int(idx[0])}..{int(idx[-1])})", attributions)

    def all(self, x: Tensor, absolute: bool = False, desc: str = "attributions") -> Tensor:
        """Attributions of every input of ``x``, on the CPU (``absolute``: their magnitude)."""
        return torch.cat([(a.abs() if absolute else a).cpu() for _, a in self.batches(x, desc)])
