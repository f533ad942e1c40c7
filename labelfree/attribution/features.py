"""Label-free feature importance (PAPER.md section 1).

For an encoder f: X -> H and an input x, the auxiliary scalar function

    g_x(x~) = <f(x), f(x~)>

is explained with any Captum attribution method a: b_i(f, x) = a_i(g_x, x). The representation f(x)
is computed once, without gradients, and handed to the forward function through Captum's
``additional_forward_args``, so that Captum's own expansion of the batch (``n_steps`` of Integrated
Gradients, ``n_samples`` of Gradient Shap, ``perturbations_per_eval`` of Feature Ablation, ...)
keeps every row aligned with its own f(x).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from captum.attr import (
    Attribution,
    FeatureAblation,
    GradientShap,
    IntegratedGradients,
    Occlusion,
    Saliency,
)
from torch import Tensor, nn

log = logging.getLogger(__name__)


class AuxiliaryFunction(nn.Module):
    """g(x~; h) = <h, f(x~)> per row: ``x~ [n, *input_shape]``, ``h [n, *latent_shape]`` -> ``[n]``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, inputs: Tensor, representation: Tensor) -> Tensor:
        return (self.encoder(inputs) * representation).flatten(1).sum(dim=1)


class LabelFreeAttribution(Attribution):
    """Wraps a Captum attribution built on an encoder so that it explains g_x instead of f.

    Usage mirrors Captum's own wrappers (``NoiseTunnel``)::

        explainer = LabelFreeAttribution(IntegratedGradients(encoder))
        attributions = explainer.attribute(x, baselines=0.0)   # shaped like x

    The wrapped method's forward function is redirected once, at construction, to the auxiliary
    function g (an ``nn.Module``, so hook-based methods work too). Any input and latent shape.
    """

    def __init__(self, method: Attribution) -> None:
        encoder = method.forward_func
        if not callable(encoder):
            raise TypeError(f"{type(method).__name__} has no callable forward_func to explain")
        if isinstance(encoder, AuxiliaryFunction):
            raise ValueError("this attribution method is already wrapped by a LabelFreeAttribution")
        self.encoder = encoder
        self.method = method
        self.auxiliary = AuxiliaryFunction(encoder) if isinstance(encoder, nn.Module) else _FunctionAuxiliary(encoder)
        # Redirect every level of a wrapped chain (e.g. NoiseTunnel(IntegratedGradients(f))).
        inner: Any = method
        while inner is not None:
            if getattr(inner, "forward_func", None) is encoder:
                inner.forward_func = self.auxiliary
            if getattr(inner, "model", None) is encoder:  # hook-based methods (DeepLift) keep `model`
                inner.model = self.auxiliary
            inner = getattr(inner, "attribution_method", None)
        super().__init__(self.auxiliary)

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.method.has_convergence_delta()

    def representation(self, inputs: Tensor) -> Tensor:
        """f(x) under ``torch.no_grad()``: ``[n, *latent_shape]``."""
        with torch.no_grad():
            return self.encoder(inputs).detach()

    def attribute(self, inputs: Tensor, **kwargs: Any) -> Tensor:  # type: ignore[override]
        """Label-free attributions b(f, x) = a(g_x, x), shaped like ``inputs`` ``[n, *input_shape]``.

        Keyword arguments go to the wrapped method (``baselines``, ``n_steps``, ``n_samples``, ...);
        ``target`` and ``additional_forward_args`` are reserved: g_x is a scalar function of x~.
        """
        for reserved in ("target", "additional_forward_args"):
            if kwargs.get(reserved) is not None:
                raise ValueError(f"`{reserved}` cannot be set: label-free attribution explains the scalar g_x")
            kwargs.pop(reserved, None)
        representation = self.representation(inputs)
        return self.method.attribute(inputs, additional_forward_args=(representation,), **kwargs)

    def attribute_units(self, inputs: Tensor, units: list[int] | None = None, **kwargs: Any) -> Tensor:
        """Per-latent-unit importance: ``[n, n_units, *input_shape]``, entry j = f_j(x) * a(f_j, x).

        Explaining f_j is explaining g with the representation replaced by the unit vector e_j (same
        wrapper, same expansion). For an attribution rule that is linear in the explained function
        (Integrated Gradients, Gradient Shap, Feature Ablation), summing over all units gives
        :meth:`attribute`. Take ``abs()`` for the paper's saliency map |f_j(x) a(f_j, x)|.
        """
        representation = self.representation(inputs)
        latent = representation.flatten(1)
        n_units = latent.shape[1]
        units = list(range(n_units)) if units is None else list(units)
        bad = [u for u in units if not 0 <= u < n_units]
        if bad:
            raise ValueError(f"latent units {bad} do not exist; the representation has {n_units} units")
        maps = []
        for unit in units:  # one Captum call per latent unit (d is small: 3 to 10 in the paper)
            one_hot = torch.zeros_like(latent)
            one_hot[:, unit] = 1.0
            attribution = self.method.attribute(
                inputs, additional_forward_args=(one_hot.view_as(representation),), **kwargs
            )
            weight = latent[:, unit].view(-1, *([1] * (inputs.dim() - 1)))
            maps.append(weight * attribution)
        return torch.stack(maps, dim=1)


class _FunctionAuxiliary:
    """g for an encoder given as a plain callable instead of an ``nn.Module``."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def __call__(self, inputs: Tensor, representation: Tensor) -> Tensor:
        return (self.encoder(inputs) * representation).flatten(1).sum(dim=1)


class RandomAttribution(Attribution):
    """Random ranking baseline: i.i.d. uniform attributions shaped like ``inputs``, fixed by ``seed``."""

    def __init__(self, forward_func: Any = None, seed: int = 0) -> None:
        super().__init__(forward_func)
        self.seed = seed

    def attribute(self, inputs: Tensor, **kwargs: Any) -> Tensor:  # type: ignore[override]
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(inputs.shape, generator=generator, dtype=inputs.dtype).to(inputs.device)


CAPTUM_METHODS: dict[str, type[Attribution]] = {
    "integrated_gradients": IntegratedGradients,
    "gradient_shap": GradientShap,
    "saliency": Saliency,
    "feature_ablation": FeatureAblation,
    "occlusion": Occlusion,
}
FEATURE_EXPLAINERS = sorted([*CAPTUM_METHODS, "random"])


def make_feature_explainer(name: str, encoder: nn.Module, seed: int = 0) -> Attribution:
    """The label-free version of the Captum method called ``name`` on ``encoder`` (or the random baseline)."""
    if name == "random":
        return RandomAttribution(encoder, seed=seed)
    if name not in CAPTUM_METHODS:
        raise ValueError(f"Unknown feature explainer {name!r}; accepted: {FEATURE_EXPLAINERS}")
    return LabelFreeAttribution(CAPTUM_METHODS[name](encoder))
