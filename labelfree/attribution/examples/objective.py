"""The objective that loss-based explainers differentiate, and its per-example gradients.

An :class:`Objective` is a per-example loss ``loss(model, x, y) -> Tensor[n]`` restricted to some of the
model's parameters (the encoder's by default, the paper's theta_f). Any ``nn.Module`` works: the project's
models bring their pretext loss, a user's model brings its own loss callable. Per-example gradients come, in eval
mode, from one batched backward with probes (:mod:`.per_example`) where every differentiated parameter belongs to
a module that supports it (``nn.Linear``, the LSTM layers), else from ``torch.func`` (``vmap(grad(functional_call))``);
Hessian products from :mod:`.hessian`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from labelfree.attribution.examples.base import check_positive_int, pretext_objective_loss
from labelfree.attribution.examples.hessian import HessianOptions, _LossModule, build_hessian
from labelfree.attribution.examples.per_example import ProbesDeclined, probe_per_example_grads, probe_plan
from labelfree.modules import eval_mode

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

__all__ = ["PER_EXAMPLE_METHODS", "LossFn", "Objective", "Wrt", "pretext_objective_loss"]

#: How :meth:`Objective.per_example_grads` differentiates: ``"auto"`` (probes where the model supports them, else
#: ``vmap``), ``"probes"`` (one batched backward, :mod:`.per_example`; an error where it cannot), ``"vmap"``.
PER_EXAMPLE_METHODS = ("auto", "probes", "vmap")

#: ``loss(model, x, y) -> Tensor[n]``, one loss per example; ``y`` is ``None`` when no labels are passed.
#: A loss that never uses labels may take only ``(model, x)``.
LossFn = Callable[..., Tensor]

#: What an :class:`Objective` differentiates: a dotted submodule name (``""``: the whole model), a submodule
#: object, or a sequence of parameter-name prefixes (``["encoder.0", "encoder.2.weight"]``).
Wrt = Union[str, nn.Module, Sequence[str]]


def _positional_arity(fn: Callable[..., object]) -> int | None:
    """How many positional arguments ``fn`` takes (``None``: any number, or unknown)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = [p.kind for p in parameters]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return None
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)


class _CheckedLoss:
    """The user's loss called as ``loss(model, x, y)`` (or ``loss(model, x)``), its output checked to be ``[n]``."""

    def __init__(self, fn: LossFn) -> None:
        arity = _positional_arity(fn)
        if arity is not None and arity < 2:
            raise TypeError(f"Objective loss must be a callable loss(model, x, y) -> Tensor[n] (or loss(model, x)); "
                            f"{getattr(fn, '__name__', fn)!r} takes {arity} positional argument(s)")
        self.fn = fn
        self.takes_labels = arity is None or arity >= 3
        self.__wrapped__ = fn

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor | None = None) -> Tensor:
        losses = self.fn(model, x, y) if self.takes_labels else self.fn(model, x)
        if not isinstance(losses, Tensor) or losses.shape != (len(x),):
            got = f"a tensor of shape {list(losses.shape)}" if isinstance(losses, Tensor) else type(losses).__name__
            scalar = isinstance(losses, Tensor) and losses.ndim == 0
            hint = (" (a scalar: the loss is reduced over the batch; return one loss per example, e.g. "
                    "F.mse_loss(..., reduction='none').flatten(1).mean(1))") if scalar else ""
            name = getattr(self.fn, "__name__", type(self.fn).__name__)
            raise ValueError(f"Objective loss {name!r} must return one loss per example, a Tensor of shape "
                             f"[n] = [{len(x)}] for a batch of {len(x)}; got {got}{hint}")
        return losses

    def __repr__(self) -> str:
        return f"checked({getattr(self.fn, '__qualname__', self.fn)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _CheckedLoss) and other.fn == self.fn

    def __hash__(self) -> int:
        return hash(self.fn)


@dataclasses.dataclass(frozen=True)
class Objective:
    """What loss-based explainers differentiate: ``loss(model, x, y) -> Tensor[n]`` w.r.t. ``wrt``.

    Args:
        model: the trained model, any ``nn.Module``.
        wrt: the differentiated parameters theta (the paper: the encoder's, theta_f); every other parameter and
            every buffer is held fixed. A dotted submodule name (default ``"encoder"``; ``""``: the whole model), the
            submodule itself (``model.encoder``; stored as its name), or a sequence of parameter-name prefixes
            (``["encoder.0", "head.weight"]``; a prefix matches a parameter name equal to it or starting with it
            and a dot).
        loss: per-example loss ``loss(model, x, y) -> Tensor[n]`` (or ``loss(model, x)`` for one that never uses
            labels); by default the model's deterministic pretext loss ``model.pretext_loss(x, y, perturb=False)``
            (the project's models). A loss that returns another shape (e.g. a scalar) stops with the shape expected.
        uses_labels: whether the loss needs labels. ``None`` (default): the model's ``uses_labels`` attribute for the
            default loss (the project's models; ``False`` when absent); for a given loss, ``False`` when it takes only
            ``(model, x)``, else labels are passed when given (and ``None`` when not). ``True``: labels are required.
            Labels given to an objective that does not use them are ignored with a warning.
        per_example: how per-example gradients are computed (the numbers agree to rounding): ``"auto"`` (default)
            takes one batched backward with probes (:mod:`.per_example`) when every differentiated parameter
            belongs to an ``nn.Linear`` or a module with ``record_per_example`` (the LSTM layers) and the first
            example of each call matches plain autograd on that example alone, else ``vmap``; ``"probes"`` requires
            the batched path (an error says why it cannot); ``"vmap"`` always uses ``vmap(grad(...))``.

    Gradients are flattened in parameter order (``model.get_submodule(wrt).named_parameters()``, or
    ``model.named_parameters()`` filtered by the prefixes) into vectors of length :attr:`n_params` (P). Everything
    runs in eval mode (BatchNorm uses its running statistics, so the loss of an example does not depend on the
    rest of the batch); every submodule's mode is restored afterwards.
    """

    model: nn.Module = dataclasses.field(repr=False)
    wrt: Wrt = "encoder"
    loss: LossFn = pretext_objective_loss
    uses_labels: bool | None = None
    per_example: Literal["auto", "probes", "vmap"] = "auto"

    def __post_init__(self) -> None:
        if self.per_example not in PER_EXAMPLE_METHODS:
            raise ValueError(f"Objective.per_example must be one of {PER_EXAMPLE_METHODS}, got {self.per_example!r}")
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"Objective.model must be an nn.Module, got {type(self.model).__name__}")
        if not getattr(self.model, "per_example_loss", True):
            raise ValueError(
                f"{type(self.model).__name__}'s pretext loss couples the examples of a batch (a contrastive "
                "loss), so loss-based example importance (influence functions, TracIn) is not defined for it; "
                "use a representation-based explainer (simplex, dknn)"
            )
        object.__setattr__(self, "wrt", self._normalised_wrt(self.wrt))
        if self.loss is pretext_objective_loss:
            if not callable(getattr(self.model, "pretext_loss", None)):
                raise TypeError(
                    f"{type(self.model).__name__} has no pretext_loss, so Objective needs loss=: a callable "
                    "loss(model, x, y) -> Tensor[n] giving one loss per example (y is None without labels)")
            if self.uses_labels is None:
                object.__setattr__(self, "uses_labels", bool(getattr(self.model, "uses_labels", False)))
        else:
            if not callable(self.loss):
                raise TypeError(f"Objective.loss must be callable loss(model, x, y) -> Tensor[n], got {self.loss!r}")
            checked = self.loss if isinstance(self.loss, _CheckedLoss) else _CheckedLoss(self.loss)
            object.__setattr__(self, "loss", checked)
            if self.uses_labels is None and not checked.takes_labels:
                object.__setattr__(self, "uses_labels", False)
            if self.uses_labels and not checked.takes_labels:
                raise ValueError("Objective(uses_labels=True) needs a loss taking labels: loss(model, x, y)")
        if not self._named_parameters():
            raise ValueError(f"Objective.wrt={self.wrt!r} selects no parameter; nothing to differentiate")

    def _normalised_wrt(self, wrt: Wrt) -> str | tuple[str, ...]:
        """``wrt`` as a dotted submodule name or a tuple of parameter-name prefixes, checked against the model."""
        model = self.model
        children = [name for name, _ in model.named_children()]
        if isinstance(wrt, nn.Module):
            for name, module in model.named_modules():
                if module is wrt:
                    return name
            raise ValueError(f"Objective.wrt: the {type(wrt).__name__} given is not a submodule of "
                             f"{type(model).__name__} (children: {children})")
        if isinstance(wrt, str):
            try:
                model.get_submodule(wrt)
            except AttributeError as error:
                raise ValueError(
                    f"Objective.wrt={wrt!r} is not a submodule of {type(model).__name__}; accepted: a dotted submodule "
                    f"name such as one of {children}, '' for the whole model, the submodule itself, or a list of "
                    "parameter-name prefixes"
                ) from error
            return wrt
        if isinstance(wrt, Sequence) and wrt and all(isinstance(p, str) and p for p in wrt):
            names = [name for name, _ in model.named_parameters()]
            unmatched = [p for p in wrt if not any(n == p or n.startswith(p + ".") for n in names)]
            if unmatched:
                raise ValueError(f"Objective.wrt prefixes {unmatched} match no parameter of {type(model).__name__} "
                                 f"(parameters: {names[:12]}{' ...' if len(names) > 12 else ''})")
            return tuple(wrt)
        raise TypeError(f"Objective.wrt must be a submodule name, a submodule, or a non-empty list of parameter-name "
                        f"prefixes; got {wrt!r}")

    def _named_parameters(self) -> dict[str, nn.Parameter]:
        """The differentiated parameters by their name in the model, in gradient order."""
        if isinstance(self.wrt, str):
            prefix = f"{self.wrt}." if self.wrt else ""
            return {prefix + name: p for name, p in self.model.get_submodule(self.wrt).named_parameters()}
        return {name: p for name, p in self.model.named_parameters()
                if any(name == q or name.startswith(q + ".") for q in self.wrt)}

    @property
    def n_params(self) -> int:
        """Number P of differentiated parameters (length of a flattened gradient)."""
        return sum(p.numel() for p in self._named_parameters().values())

    @property
    def device(self) -> torch.device:
        """Device of the differentiated parameters (where batches are moved)."""
        return next(iter(self._named_parameters().values())).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the differentiated parameters (of gradients and scores)."""
        return next(iter(self._named_parameters().values())).dtype

    def _split_state(self, wrapper: _LossModule) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Detached copies (no copy of data) of the differentiated parameters and of everything else.

        Passing every tensor explicitly to ``functional_call`` keeps plain autograd from building a
        graph through parameters that happen to have ``requires_grad=True``.
        """
        selected = self._named_parameters()
        params = {f"model.{name}": p.detach() for name, p in selected.items()}
        differentiated = {id(p) for p in selected.values()}
        fixed = {name: p.detach() for name, p in wrapper.named_parameters() if id(p) not in differentiated}
        fixed.update({name: b.detach() for name, b in wrapper.named_buffers()})
        return params, fixed

    def per_example_grads(self, x: Tensor, y: Tensor | None = None, chunk_size: int = 64) -> Tensor:
        """Per-example gradients ``grad_theta L(x_i)``, shape ``[n, P]``, on :attr:`device`.

        Args:
            x: inputs ``[n, ...]`` (any device; moved chunk by chunk to the model's device).
            y: labels ``[n]`` passed to the loss, or ``None``.
            chunk_size: examples per batched backward (or ``vmap`` call); bounds the memory to one forward
                and backward of ``chunk_size`` examples (default 64).

        The path is :attr:`per_example`'s (probes or ``vmap``); both give the same numbers to rounding.
        """
        check_positive_int("chunk_size", chunk_size)
        if y is not None and len(y) != len(x):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if self.per_example != "vmap":
            plan = probe_plan(self)
            if isinstance(plan, str):
                if self.per_example == "probes":
                    raise ValueError(f"Objective(per_example='probes') cannot batch these gradients: {plan}")
                logger.debug("per-example gradients by vmap: %s", plan)
            else:
                out = torch.empty(len(x), self.n_params, device=self.device, dtype=self.dtype)
                try:
                    with eval_mode(self.model), torch.no_grad():
                        probe_per_example_grads(self, plan, x, y, out, chunk_size)
                    return out
                except ProbesDeclined as error:
                    if self.per_example == "probes":
                        raise ValueError(f"Objective(per_example='probes'): {error}") from error
                    logger.warning("per-example gradients fall back to vmap: %s", error)
        wrapper = _LossModule(self.model, self.loss)
        device = self.device

        def example_loss(params: dict[str, Tensor], fixed: dict[str, Tensor], xi: Tensor, yi: Tensor | None) -> Tensor:
            return functional_call(wrapper, (params, fixed), (xi, yi, True))

        per_example = vmap(grad(example_loss), in_dims=(None, None, 0, None if y is None else 0))
        with eval_mode(self.model), torch.no_grad():
            params, fixed = self._split_state(wrapper)
            dtype = self.dtype
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
