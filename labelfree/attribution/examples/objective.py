"""The objective that loss-based explainers differentiate, and its per-example gradients.

An :class:`Objective` is the model's per-example pretext loss restricted to the parameters of one submodule
(the encoder by default, the paper's theta_f). Per-example gradients come from ``torch.func``
(``vmap(grad(functional_call))``) in eval mode; Hessian products from :mod:`.hessian`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from labelfree.attribution.examples.base import check_positive_int
from labelfree.attribution.examples.hessian import HessianOptions, _LossModule, build_hessian
from labelfree.models.base import PretextModel
from labelfree.modules import eval_mode, module_device

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["LossFn", "Objective", "pretext_objective_loss"]

LossFn = Callable[[nn.Module, Tensor, "Tensor | None"], Tensor]


def pretext_objective_loss(model: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
    """Default objective: the model's deterministic per-example pretext loss, shape ``[n]``."""
    return model.pretext_loss(x, y, perturb=False)


@dataclasses.dataclass(frozen=True)
class Objective:
    """What loss-based explainers differentiate: ``loss(model, x, y) -> Tensor[n]`` w.r.t. ``wrt``.

    Args:
        model: the trained model.
        wrt: dotted name of the submodule whose parameters theta are differentiated (the paper: the
            encoder, theta_f). Every other parameter and every buffer is held fixed. ``""`` means
            the whole model.
        loss: per-example loss ``loss(model, x, y) -> Tensor[n]``; by default the model's
            deterministic pretext loss ``model.pretext_loss(x, y, perturb=False)``.

    Gradients are flattened in ``model.get_submodule(wrt).named_parameters()`` order into vectors of
    length :attr:`n_params` (P). Everything runs in eval mode (BatchNorm uses its running
    statistics, so the loss of an example does not depend on the rest of the batch).
    """

    model: PretextModel = dataclasses.field(repr=False)
    wrt: str = "encoder"
    loss: LossFn = pretext_objective_loss

    def __post_init__(self) -> None:
        if not getattr(self.model, "per_example_loss", True):
            raise ValueError(
                f"{type(self.model).__name__}'s pretext loss couples the examples of a batch (a contrastive "
                "loss), so loss-based example importance (influence functions, TracIn) is not defined for it; "
                "use a representation-based explainer (simplex, dknn)"
            )
        try:
            submodule = self.model.get_submodule(self.wrt)
        except AttributeError as error:
            children = [name for name, _ in self.model.named_children()]
            raise ValueError(
                f"Objective.wrt={self.wrt!r} is not a submodule of {type(self.model).__name__}; "
                f"accepted: a dotted submodule name such as one of {children}, or '' for the whole model"
            ) from error
        if not any(True for _ in submodule.parameters()):
            raise ValueError(
                f"Objective.wrt={self.wrt!r} names a submodule without parameters; nothing to differentiate"
            )

    @property
    def n_params(self) -> int:
        """Number P of differentiated parameters (length of a flattened gradient)."""
        return sum(p.numel() for p in self.model.get_submodule(self.wrt).parameters())

    @property
    def device(self) -> torch.device:
        """Device of the differentiated parameters (where batches are moved)."""
        return module_device(self.model.get_submodule(self.wrt))

    def _split_state(self, wrapper: _LossModule) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Detached copies (no copy of data) of the differentiated parameters and of everything else.

        Passing every tensor explicitly to ``functional_call`` keeps plain autograd from building a
        graph through parameters that happen to have ``requires_grad=True``.
        """
        prefix = f"model.{self.wrt}." if self.wrt else "model."
        submodule = self.model.get_submodule(self.wrt)
        params = {prefix + name: p.detach() for name, p in submodule.named_parameters()}
        differentiated = {id(p) for p in submodule.parameters()}
        fixed = {name: p.detach() for name, p in wrapper.named_parameters() if id(p) not in differentiated}
        fixed.update({name: b.detach() for name, b in wrapper.named_buffers()})
        return params, fixed

    def per_example_grads(self, x: Tensor, y: Tensor | None = None, chunk_size: int = 64) -> Tensor:
        """Per-example gradients ``grad_theta L(x_i)``, shape ``[n, P]``, on :attr:`device`.

        Args:
            x: inputs ``[n, ...]`` (any device; moved chunk by chunk to the model's device).
            y: labels ``[n]`` passed to the loss, or ``None``.
            chunk_size: examples per ``vmap`` call; bounds the memory to ``chunk_size`` copies of
                the per-example forward/backward (default 64).
        """
        check_positive_int("chunk_size", chunk_size)
        if y is not None and len(y) != len(x):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        wrapper = _LossModule(self.model, self.loss)
        device = self.device

        def example_loss(params: dict[str, Tensor], fixed: dict[str, Tensor], xi: Tensor, yi: Tensor | None) -> Tensor:
            return functional_call(wrapper, (params, fixed), (xi, yi, True))

        per_example = vmap(grad(example_loss), in_dims=(None, None, 0, None if y is None else 0))
        with eval_mode(self.model), torch.no_grad():
            params, fixed = self._split_state(wrapper)
            dtype = next(iter(params.values())).dtype
            out = torch.empty(len(x), self.n_params, device=device, dtype=dtype)  # written in place, no concatenation
            for start in range(0, len(x), chunk_size):
                xc = x[start : start + chunk_size].to(device)
                yc = None if y is None else y[start : start + chunk_size].to(device)
                grads = per_example(params, fixed, xc, yc)
                offset = 0
                for g in grads.values():
                    size = g[0].numel()
                    out[start : start + len(xc), offset : offset + size].copy_(g.reshape(len(xc), size))
                    offset += size
        return out

    def hvp(self, x: Tensor, vectors: Tensor, y: Tensor | None = None, **options: Unpack[HessianOptions]) -> Tensor:
        """Hessian-matrix product ``H V``, shape ``[P, k]``, H the Hessian of the *mean* loss of ``x``.

        One-off form of :meth:`hessian` (``hessian(x, y, columns=k, **options).matmul(vectors)``); ``options``
        (``weights``, ``example_chunk_size``, ``vector_chunk_size``, ``split``) as there. ``split=None`` splits
        at the submodule's output when that is possible and cheaper for ``k`` columns.
        """
        if vectors.ndim != 2 or vectors.shape[0] != self.n_params:
            raise ValueError(f"vectors must have shape [P={self.n_params}, k], got {tuple(vectors.shape)}")
        return self.hessian(x, y, columns=vectors.shape[1], **options).matmul(vectors)

    #: ``hessian(x, y=None, ...) -> HessianOperator``: the Hessian of the mean loss of the batch ``x`` as an
    #: operator (``matmul(V) = H V``); :func:`~labelfree.attribution.examples.hessian.build_hessian` is this
    #: method (the arguments, the exact split at the submodule's output).
    hessian = build_hessian
