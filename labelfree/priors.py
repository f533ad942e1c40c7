"""Attribution priors: penalties on a model's label-free attributions, as a term of its training loss.

An attribution prior (Erion et al., 2021, "Improving performance of deep learning models with axiomatic
attribution priors and expected gradients") adds ``weight * Omega(attributions)`` to the loss. Here the
attributions are the label-free ones of the encoder (Crabbé & van der Schaar, 2022), computed with their autograd
graph (:mod:`labelfree.attribution.differentiable`): with Captum's detached attributions the penalty would add a
constant and no gradient, and training with it would change nothing.

What is penalised (``target``):

* ``units`` (default): the VAE study's unit saliency maps S_j(x) = sum_channels |mu_j(x) * a(mu_j, x)|,
  ``[n, d, H, W]``;
* ``label_free``: the map of the label-free scalar g_x, sum_channels |a(g_x, x)|, ``[n, 1, H, W]``.

Penalties per example (``kind``), each summed over the maps of the example (``[n]``):

* ``total_variation``: sum over neighbouring pixels of |S(p) - S(p')| (anisotropic TV, every spatial axis):
  smooth maps (the reproduction's choice);
* ``sparsity``: 1 - Gini(S) of each map (Erion et al.'s sparsity prior maximises the Gini coefficient; 1 - Gini
  is in [0, 1], 0 for a map on one pixel, and does not change when the map is scaled);
* ``l1``: sum of S (a plain L1 penalty; it also shrinks the representation).

Attributions: ``method`` = ``integrated_gradients`` (``n_steps`` points of Captum's ``integration`` rule from the
constant ``baseline``; deterministic) or ``expected_gradients`` (``n_steps`` samples per example, each one
reference from the batch and one alpha ~ U(0, 1); Erion et al.'s training-time form, random).

Cost: the penalty needs the encoder's gradient at ``n_steps`` path points per example and latent unit, kept in the
graph and differentiated again (double backward). :func:`step_seconds` measures a training step with and without
it; ``max_examples`` computes it on the first examples of each batch only (the trainer shuffles batches, so that is
a random subset) and adds their mean to every example's loss, an unbiased estimate of the batch's mean penalty.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS
from torch import Tensor, nn

from labelfree.attribution.differentiable import (
    ATTRIBUTION_METHODS,
    label_free_attributions,
    unit_attributions,
    unit_saliency_maps,
)

__all__ = ["AttributionPrior", "PRIOR_KINDS", "PRIOR_TARGETS", "gini", "step_seconds", "total_variation"]

PRIOR_KINDS = ("total_variation", "sparsity", "l1")
PRIOR_TARGETS = ("units", "label_free")


def total_variation(maps: Tensor) -> Tensor:
    """Anisotropic total variation of each map: ``[n, k, *spatial]`` -> ``[n, k]`` (sum over every spatial axis of
    the absolute differences between neighbours)."""
    total = maps.new_zeros(maps.shape[:2])
    for axis in range(2, maps.dim()):
        total = total + maps.diff(dim=axis).abs().flatten(2).sum(dim=2)
    return total


def gini(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Gini coefficient of each non-negative map: ``[n, k, *spatial]`` -> ``[n, k]`` in [0, 1 - 1/p] (p pixels);
    0 for a uniform map (and for an all-zero one), 1 - 1/p when one pixel holds everything."""
    values = maps.flatten(2).sort(dim=2).values
    p = values.shape[2]
    ranks = torch.arange(1, p + 1, device=maps.device, dtype=maps.dtype)
    weighted = ((2 * ranks - p - 1) * values).sum(dim=2)
    return weighted / (p * values.sum(dim=2) + eps)


@dataclass(frozen=True)
class AttributionPrior:
    """A penalty on label-free attributions (module docstring); the config node ``model.prior``.

    Attributes:
        kind: ``total_variation``, ``sparsity`` (1 - Gini) or ``l1``.
        weight: lambda, the penalty's weight in the loss (0: no prior; the registry then builds the plain model).
        method: ``integrated_gradients`` or ``expected_gradients``.
        n_steps: quadrature points (integrated gradients) or samples per example (expected gradients).
        integration: Captum's quadrature rule of integrated gradients (``gausslegendre``, Captum's default).
        target: ``units`` (one map per latent unit) or ``label_free`` (the map of g_x).
        baseline: the constant baseline of integrated gradients (0: black pixels, the dataset's baseline).
        max_examples: compute the penalty on at most this many examples of a training batch (None: all).
        channel_dim: the channel axis of an input ``[n, *input_shape]``, summed over (None: no channel).
    """

    kind: str = "total_variation"
    weight: float = 0.0
    method: str = "integrated_gradients"
    n_steps: int = 8
    integration: str = "gausslegendre"
    target: str = "units"
    baseline: float = 0.0
    max_examples: int | None = None
    channel_dim: int | None = 1

    def __post_init__(self) -> None:
        checks = (("kind", PRIOR_KINDS), ("method", ATTRIBUTION_METHODS), ("target", PRIOR_TARGETS),
                  ("integration", tuple(SUPPORTED_METHODS)))
        for name, accepted in checks:
            if getattr(self, name) not in accepted:
                raise ValueError(f"prior.{name}={getattr(self, name)!r} is not accepted; expected one of {list(accepted)}")
        if not (isinstance(self.weight, (int, float)) and self.weight >= 0):
            raise ValueError(f"prior.weight (lambda) must be a number >= 0, got {self.weight!r}")
        if int(self.n_steps) < 1:
            raise ValueError(f"prior.n_steps must be >= 1, got {self.n_steps!r}")
        if self.max_examples is not None and int(self.max_examples) < 1:
            raise ValueError(f"prior.max_examples must be >= 1 or null, got {self.max_examples!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AttributionPrior:
        """The prior of a config mapping (``model.prior``); unknown keys are refused, naming the accepted ones."""
        accepted = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - accepted)
        if unknown:
            raise ValueError(f"model.prior has unknown keys {unknown}; accepted: {sorted(accepted)}")
        values = dict(config)
        for key, cast in (("weight", float), ("n_steps", int), ("baseline", float)):
            if key in values:
                values[key] = cast(values[key])
        if values.get("max_examples") is not None:
            values["max_examples"] = int(values["max_examples"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def maps(self, encoder: nn.Module, x: Tensor, generator: torch.Generator | None = None,
             create_graph: bool = True) -> Tensor:
        """The penalised maps: ``[n, d, *spatial]`` (``units``) or ``[n, 1, *spatial]`` (``label_free``)."""
        settings = dict(method=self.method, baseline=self.baseline, n_steps=int(self.n_steps),
                        integration=self.integration, generator=generator, create_graph=create_graph)
        if self.target == "units":
            attributions = unit_attributions(encoder, x, **settings)
        else:
            attributions = label_free_attributions(encoder, x, **settings).unsqueeze(1)
        return unit_saliency_maps(attributions, self.channel_dim)

    def penalty(self, maps: Tensor) -> Tensor:
        """The penalty of each example ``[n]`` from its maps ``[n, k, *spatial]`` (summed over the k maps)."""
        if self.kind == "total_variation":
            per_map = total_variation(maps)
        elif self.kind == "sparsity":
            per_map = 1.0 - gini(maps)
        else:
            per_map = maps.flatten(2).sum(dim=2)
        return per_map.sum(dim=1)

    def __call__(self, encoder: nn.Module, x: Tensor, generator: torch.Generator | None = None,
                 create_graph: bool | None = None) -> Tensor:
        """Omega(x) per example ``[n]`` (unweighted). Works under ``torch.no_grad()`` too (the attributions
        need input gradients; the result then carries no graph). ``create_graph``: default, whether gradients
        are enabled by the caller (training: the penalty can be differentiated)."""
        graph = torch.is_grad_enabled() if create_graph is None else create_graph
        with torch.enable_grad():
            value = self.penalty(self.maps(encoder, x, generator, create_graph=graph))
        return value if graph else value.detach()


def step_seconds(model: nn.Module, x: Tensor, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time (s) of one training step's loss and backward pass of ``model`` on the batch ``x``:
    ``model.pretext_loss(x, perturb=True).mean().backward()`` in train mode. No optimiser step: the weights do
    not change (their ``.grad`` is reset afterwards, the train/eval flags are restored)."""
    flags = {m: m.training for m in model.modules()}
    times = []
    try:
        model.train()
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model.pretext_loss(x, None, perturb=True).mean().backward()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        model.zero_grad(set_to_none=True)
        for module, flag in flags.items():
            module.train(flag)
    return sorted(times)[len(times) // 2]
