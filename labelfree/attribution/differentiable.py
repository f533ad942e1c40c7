"""Differentiable label-free attributions: feature importance that keeps its autograd graph.

Captum returns attributions detached from the model's parameters (its gradients are taken with
``create_graph=False``), so a loss built from them adds a constant and no gradient. The functions here compute
the same attributions with ``torch.autograd.grad(..., create_graph=True)``, so a penalty on them
(:mod:`labelfree.priors`) can be minimised by gradient descent (an *attribution prior*, Erion et al., 2021,
"Improving performance of deep learning models with axiomatic attribution priors and expected gradients").

Two path methods, each for any function ``func: x~ [m, *input_shape] -> [m, k]`` whose ``k`` outputs are
explained one at a time (a ``[m]`` output is one output):

* :func:`integrated_gradients`: a_i = (x_i - x'_i) * sum_s w_s * d func(x' + alpha_s (x - x')) / d x_i with
  Captum's quadrature (``method``: ``gausslegendre``, Captum's default, or ``riemann_left`` / ``_right`` /
  ``_middle`` / ``_trapezoid``): the alphas and weights come from Captum's own
  ``approximation_parameters``, so the values equal ``captum.attr.IntegratedGradients`` to float precision.
* :func:`expected_gradients`: the attribution-prior form of Erion et al.: per example and sample, one
  reference x' drawn from ``references`` and one alpha ~ U(0, 1); a = mean over samples of
  (x - x') * grad func(x' + alpha (x - x')). An unbiased one-sample estimate of Integrated Gradients averaged
  over the reference distribution.

Label-free wrappers (Crabbé & van der Schaar, 2022) on an encoder f (``encoder(x) -> [n, d]``):

* :func:`unit_attributions`: per latent unit j, ``mu_j(x) * a(mu_j, x)`` ``[n, d, *input_shape]`` (take the
  absolute value and sum the channels for the VAE study's unit saliency maps: :func:`unit_saliency_maps`);
* :func:`label_free_attributions`: a(g_x, x) with g_x(x~) = <f(x), f(x~)> ``[n, *input_shape]``.

f(x) is kept in the graph (both the weight mu_j(x) and the representation of g_x depend on the parameters),
so the gradient of a penalty is the derivative of the whole attribution. Outputs are explained by
replicating the path points once per output and differentiating the sum of each copy's own output, so one
backward pass gives every output's gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters
from torch import Tensor, nn

__all__ = [
    "ATTRIBUTION_METHODS",
    "expected_gradients",
    "integrated_gradients",
    "label_free_attributions",
    "quadrature",
    "unit_attributions",
    "unit_saliency_maps",
]

ATTRIBUTION_METHODS = ("integrated_gradients", "expected_gradients")
Baseline = float | Tensor


def quadrature(n_steps: int, method: str = "gausslegendre", dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Captum's alphas and step sizes of Integrated Gradients, each ``[n_steps]``."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"Unknown integration method {method!r}; accepted: {list(SUPPORTED_METHODS)}")
    step_sizes, alphas = approximation_parameters(method)
    as_tensor = lambda values: torch.tensor(values, dtype=dtype, device=device)  # noqa: E731
    return as_tensor(alphas(n_steps)), as_tensor(step_sizes(n_steps))


def _as_2d(output: Tensor, m: int) -> Tensor:
    if output.dim() == 1:
        return output.unsqueeze(1)
    if output.shape[0] != m:
        raise ValueError(f"func must return one row per input, got {tuple(output.shape)} for {m} inputs")
    return output.reshape(m, -1)


def _n_outputs(func: Callable[[Tensor], Tensor], x: Tensor) -> tuple[int, bool]:
    """(k, whether ``func`` returns ``[m]``), probed on the first input without a graph."""
    with torch.no_grad():
        probe = func(x[:1])
    return _as_2d(probe, 1).shape[1], probe.dim() == 1


def _path_gradients(func: Callable[[Tensor], Tensor], points: Tensor, k: int, create_graph: bool) -> Tensor:
    """Gradient of each of the ``k`` outputs of ``func`` at each point: ``points [m, *s]`` -> ``[m, k, *s]``.

    The points are replicated once per output; copy j differentiates its own output j, so one backward
    pass gives all k gradients (the copies share no term of the summed objective).
    """
    m = len(points)
    if not points.requires_grad:
        points = points.detach().requires_grad_(True)
    copies = points.unsqueeze(0).expand(k, *points.shape).reshape(k * m, *points.shape[1:])
    outputs = _as_2d(func(copies), k * m).view(k, m, k)
    total = torch.diagonal(outputs, dim1=0, dim2=2).sum()  # sum_j sum_i output[j-th copy of i, j]
    (grads,) = torch.autograd.grad(total, copies, create_graph=create_graph)
    return grads.view(k, m, *points.shape[1:]).transpose(0, 1)


def _baseline_like(baseline: Baseline, x: Tensor) -> Tensor:
    if isinstance(baseline, Tensor):
        return baseline.to(device=x.device, dtype=x.dtype).expand_as(x)
    return torch.full_like(x, float(baseline))


def integrated_gradients(func: Callable[[Tensor], Tensor], x: Tensor, baseline: Baseline = 0.0, n_steps: int = 50,
                         method: str = "gausslegendre", create_graph: bool = True) -> Tensor:
    """Integrated Gradients of every output of ``func`` with Captum's quadrature, differentiable.

    Args:
        func: ``[m, *input_shape] -> [m, k]`` (or ``[m]``: one output).
        x: inputs ``[n, *input_shape]``.
        baseline: a number or a tensor broadcastable to ``x`` (x').
        n_steps, method: as ``captum.attr.IntegratedGradients.attribute`` (Captum's defaults: 50, gausslegendre).
        create_graph: keep the graph of the gradients (a loss on the result can be differentiated).

    Returns:
        ``[n, k, *input_shape]`` (``[n, *input_shape]`` when ``func`` returns ``[m]``).
    """
    k, single = _n_outputs(func, x)
    base = _baseline_like(baseline, x)
    alphas, weights = quadrature(n_steps, method, x.dtype, x.device)
    shape = (n_steps, *([1] * x.dim()))
    points = (base.unsqueeze(0) + alphas.view(shape) * (x - base).unsqueeze(0)).reshape(n_steps * len(x), *x.shape[1:])
    grads = _path_gradients(func, points, k, create_graph)  # [steps * n, k, *s]
    grads = grads.view(n_steps, len(x), *grads.shape[1:])
    summed = (grads * weights.view(n_steps, *([1] * (grads.dim() - 1)))).sum(dim=0)  # [n, k, *s]
    out = summed * (x - base).unsqueeze(1)
    return out[:, 0] if single else out


def expected_gradients(func: Callable[[Tensor], Tensor], x: Tensor, references: Tensor | None = None,
                       n_samples: int = 1, generator: torch.Generator | None = None,
                       create_graph: bool = True) -> Tensor:
    """Expected gradients (Erion et al., 2021): per example and sample one reference and one alpha ~ U(0, 1).

    Args:
        func: ``[m, *input_shape] -> [m, k]`` (or ``[m]``).
        x: inputs ``[n, *input_shape]``.
        references: the reference distribution ``[r, *input_shape]`` (drawn uniformly with replacement);
            None: the batch ``x`` itself (the attribution-prior form: references from the training data).
        n_samples: references (and alphas) per example; the attribution is their mean.
        generator: draws of the references and alphas (CPU generator; default: the global one).

    Returns:
        ``[n, k, *input_shape]`` (``[n, *input_shape]`` when ``func`` returns ``[m]``).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    pool = x.detach() if references is None else references.to(device=x.device, dtype=x.dtype)
    if len(pool) == 0:
        raise ValueError("expected_gradients needs at least one reference")
    k, single = _n_outputs(func, x)
    n = len(x)
    index = torch.randint(len(pool), (n_samples, n), generator=generator).to(x.device)
    alphas = torch.rand(n_samples, n, generator=generator, dtype=x.dtype).to(x.device)
    base = pool[index.flatten()].view(n_samples, n, *x.shape[1:])
    diff = x.unsqueeze(0) - base  # [samples, n, *s]
    alpha = alphas.view(n_samples, n, *([1] * (x.dim() - 1)))
    points = (base + alpha * diff).reshape(n_samples * n, *x.shape[1:])
    grads = _path_gradients(func, points, k, create_graph).view(n_samples, n, k, *x.shape[1:])  # [S, n, k, *s]
    out = (grads * diff.unsqueeze(2)).mean(dim=0)
    return out[:, 0] if single else out


def _attributions(func: Callable[[Tensor], Tensor], x: Tensor, method: str, baseline: Baseline, n_steps: int,
                  integration: str, references: Tensor | None, generator: torch.Generator | None,
                  create_graph: bool) -> Tensor:
    if method == "integrated_gradients":
        return integrated_gradients(func, x, baseline, n_steps, integration, create_graph)
    if method == "expected_gradients":
        return expected_gradients(func, x, references, n_steps, generator, create_graph)
    raise ValueError(f"Unknown differentiable attribution {method!r}; accepted: {list(ATTRIBUTION_METHODS)}")


def unit_attributions(encoder: nn.Module | Callable[[Tensor], Tensor], x: Tensor,
                      method: str = "integrated_gradients", baseline: Baseline = 0.0, n_steps: int = 50,
                      integration: str = "gausslegendre", references: Tensor | None = None,
                      generator: torch.Generator | None = None, create_graph: bool = True) -> Tensor:
    """Per latent unit j: ``mu_j(x) * a(mu_j, x)``, ``[n, d, *input_shape]`` (signed; differentiable).

    The label-free attribution of unit j explains g(x~) = <e_j, f(x~)> = f_j(x~) and is weighted by f_j(x),
    as :meth:`~labelfree.attribution.features.LabelFreeAttribution.attribute_units`. ``method``:
    ``integrated_gradients`` (``n_steps`` quadrature points of ``integration``, from ``baseline``) or
    ``expected_gradients`` (``n_steps`` samples per example, references from ``references`` or the batch).
    """
    latent = encoder(x).flatten(1)  # [n, d], in the graph
    per_unit = _attributions(lambda z: encoder(z).flatten(1), x, method, baseline, n_steps, integration,
                             references, generator, create_graph)
    return latent.view(*latent.shape, *([1] * (x.dim() - 1))) * per_unit


def label_free_attributions(encoder: nn.Module | Callable[[Tensor], Tensor], x: Tensor,
                            method: str = "integrated_gradients", baseline: Baseline = 0.0, n_steps: int = 50,
                            integration: str = "gausslegendre", references: Tensor | None = None,
                            generator: torch.Generator | None = None, create_graph: bool = True) -> Tensor:
    """a(g_x, x) with g_x(x~) = <f(x), f(x~)>: ``[n, *input_shape]`` (differentiable; arguments as
    :func:`unit_attributions`). Each path point is paired with the f(x) of its own example."""
    representation = encoder(x).flatten(1)  # [n, d], in the graph
    n = len(x)

    def g(points: Tensor) -> Tensor:
        # path points come in blocks of n (steps or samples outer, examples inner): row r belongs to example r % n
        rows = torch.arange(len(points), device=points.device) % n
        return (encoder(points).flatten(1) * representation[rows]).sum(dim=1)

    return _attributions(g, x, method, baseline, n_steps, integration, references, generator, create_graph)


def unit_saliency_maps(attributions: Tensor, channel_dim: int | None = 1) -> Tensor:
    """``|attributions|`` summed over the channels: ``[n, d, C, H, W]`` -> ``[n, d, H, W]`` (the VAE study's
    unit maps); ``channel_dim`` indexes an input ``[n, *input_shape]`` (None: no channel)."""
    maps = attributions.abs()
    if channel_dim is None:
        return maps
    return maps.sum(dim=(channel_dim % (attributions.dim() - 1)) + 1)
