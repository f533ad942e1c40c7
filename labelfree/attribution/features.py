"""Label-free feature importance (Crabbé & van der Schaar, 2022).

For an encoder f: X -> H and an input x, the auxiliary scalar function

    g_x(x~) = <f(x), f(x~)>

is explained with any Captum attribution method a: b_i(f, x) = a_i(g_x, x). The representation f(x)
is computed once, without gradients, and handed to the forward function through Captum's
``additional_forward_args``, so that Captum's own expansion of the batch (``n_steps`` of Integrated
Gradients, ``n_samples`` of Gradient Shap, ``perturbations_per_eval`` of Feature Ablation, ...)
keeps every row aligned with its own f(x).

Any encoder works: an ``nn.Module`` (explained in eval mode, every submodule's mode restored afterwards) or a
callable; one returning a tuple or dict takes ``output=`` (which part is the representation); inputs may be one
tensor or a tuple of tensors (``encoder(*inputs)``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Union

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

from labelfree.modules import OutputSelector, eval_mode, select_output

log = logging.getLogger(__name__)


#: What :meth:`LabelFreeAttribution.attribute` accepts as inputs: one tensor, or a tuple of tensors (the encoder is
#: then called as ``encoder(*inputs)``, as Captum calls a forward function).
Inputs = Union[Tensor, tuple[Tensor, ...]]


def _as_tuple(inputs: Inputs) -> tuple[Tensor, ...]:
    """``inputs`` as a non-empty tuple of tensors, or a ``TypeError`` naming what is accepted."""
    parts = inputs if isinstance(inputs, tuple) else (inputs,)
    if not parts or not all(isinstance(t, Tensor) for t in parts):
        kinds = [type(t).__name__ for t in parts]
        got = f"tuple of {kinds}" if isinstance(inputs, tuple) else type(inputs).__name__
        raise TypeError(f"LabelFreeAttribution inputs must be a Tensor [n, ...] or a tuple of Tensors [n, ...] (the "
                        f"encoder is called as encoder(*inputs)); got {got}")
    if len({len(t) for t in parts}) > 1:
        raise ValueError(f"the tensors of a tuple input must share their first (example) dimension, got "
                         f"{[tuple(t.shape) for t in parts]}")
    return parts


class AuxiliaryFunction(nn.Module):
    """g(x~; h) = <h, f(x~)> per row: ``x~ [n, *input_shape]`` (or several such tensors, ``f(*x~)``),
    ``h [n, *latent_shape]`` -> ``[n]``; ``output`` picks the representation from a tuple or dict output."""

    def __init__(self, encoder: nn.Module, output: OutputSelector = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.output = output

    def forward(self, *args: Tensor) -> Tensor:
        *inputs, representation = args
        return (select_output(self.encoder(*inputs), self.output) * representation).flatten(1).sum(dim=1)


class LabelFreeAttribution(Attribution):
    """Wraps a Captum attribution built on an encoder so that it explains g_x instead of f.

    Usage mirrors Captum's own wrappers (``NoiseTunnel``)::

        explainer = LabelFreeAttribution(IntegratedGradients(encoder))
        attributions = explainer.attribute(x, baselines=0.0)   # shaped like x

    The wrapped method's forward function is redirected once, at construction, to the auxiliary
    function g (an ``nn.Module``, so hook-based methods work too). Any input and latent shape.

    Args:
        method: a Captum attribution whose forward function is the encoder f (an ``nn.Module`` or a callable).
        output: for an encoder returning a tuple or dict, which part is the representation: an index
            (``output=0``), a key (``output="z"``) or a callable ``output -> Tensor``
            (:func:`labelfree.modules.select_output`); ``None``: the encoder returns a tensor.

    An ``nn.Module`` encoder is explained in eval mode (BatchNorm with its running statistics, no dropout), and
    the train/eval flag of every submodule is restored afterwards (:func:`labelfree.modules.eval_mode`), as
    the example explainers do; a plain callable is called as it is.
    """

    def __init__(self, method: Attribution, output: OutputSelector = None) -> None:
        encoder = method.forward_func
        if not callable(encoder):
            raise TypeError(f"{type(method).__name__} has no callable forward_func to explain")
        if isinstance(encoder, (AuxiliaryFunction, _FunctionAuxiliary)):
            raise ValueError("this attribution method is already wrapped by a LabelFreeAttribution")
        self.encoder = encoder
        self.method = method
        self.output = output
        self.auxiliary = (AuxiliaryFunction(encoder, output) if isinstance(encoder, nn.Module)
                          else _FunctionAuxiliary(encoder, output))
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

    def _eval(self) -> contextlib.AbstractContextManager[object]:
        """Eval mode for an ``nn.Module`` encoder (every submodule's flag restored after); nothing for a callable."""
        return eval_mode(self.encoder) if isinstance(self.encoder, nn.Module) else contextlib.nullcontext()

    def representation(self, inputs: Inputs) -> Tensor:
        """f(x) under ``torch.no_grad()`` (in eval mode): ``[n, *latent_shape]``."""
        with self._eval(), torch.no_grad():
            return select_output(self.encoder(*_as_tuple(inputs)), self.output).detach()

    def attribute(self, inputs: Inputs, **kwargs: Any) -> Inputs:  # type: ignore[override]
        """Label-free attributions b(f, x) = a(g_x, x), shaped like ``inputs`` ``[n, *input_shape]`` (a tuple of
        such tensors for a tuple input).

        Keyword arguments go to the wrapped method (``baselines``, ``n_steps``, ``n_samples``, ...);
        ``target`` and ``additional_forward_args`` are reserved: g_x is a scalar function of x~.
        """
        for reserved in ("target", "additional_forward_args"):
            if kwargs.get(reserved) is not None:
                raise ValueError(f"`{reserved}` cannot be set: label-free attribution explains the scalar g_x")
            kwargs.pop(reserved, None)
        _as_tuple(inputs)
        with self._eval():
            representation = self.representation(inputs)
            return self.method.attribute(inputs, additional_forward_args=(representation,), **kwargs)

    def attribute_units(self, inputs: Inputs, units: list[int] | None = None, **kwargs: Any) -> Inputs:
        """Per-latent-unit importance: ``[n, n_units, *input_shape]`` (a tuple of such tensors for a tuple input),
        entry j = f_j(x) * a(f_j, x).

        Explaining f_j is explaining g with the representation replaced by the unit vector e_j (same
        wrapper, same expansion). For an attribution rule that is linear in the explained function
        (Integrated Gradients, Gradient Shap, Feature Ablation), summing over all units gives
        :meth:`attribute`. Take ``abs()`` for the paper's saliency map |f_j(x) a(f_j, x)|.
        """
        parts = _as_tuple(inputs)
        with self._eval():
            representation = self.representation(inputs)
            latent = representation.flatten(1)
            n_units = latent.shape[1]
            units = list(range(n_units)) if units is None else list(units)
            bad = [u for u in units if not 0 <= u < n_units]
            if bad:
                raise ValueError(f"latent units {bad} do not exist; the representation has {n_units} units")
            maps: list[tuple[Tensor, ...]] = []
            for unit in units:  # one Captum call per latent unit (d is small: 3 to 10 in the paper)
                one_hot = torch.zeros_like(latent)
                one_hot[:, unit] = 1.0
                attribution = self.method.attribute(
                    inputs, additional_forward_args=(one_hot.view_as(representation),), **kwargs
                )
                attribution = attribution if isinstance(attribution, tuple) else (attribution,)
                maps.append(tuple(latent[:, unit].view(-1, *([1] * (a.dim() - 1))) * a for a in attribution))
        stacked = tuple(torch.stack([m[i] for m in maps], dim=1) for i in range(len(parts)))
        return stacked if isinstance(inputs, tuple) else stacked[0]


class _FunctionAuxiliary:
    """g for an encoder given as a plain callable instead of an ``nn.Module``."""

    def __init__(self, encoder: Any, output: OutputSelector = None) -> None:
        self.encoder = encoder
        self.output = output

    def __call__(self, *args: Tensor) -> Tensor:
        *inputs, representation = args
        return (select_output(self.encoder(*inputs), self.output) * representation).flatten(1).sum(dim=1)


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
