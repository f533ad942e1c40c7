"""Hessian-matrix products of an :class:`~labelfree.attribution.examples.objective.Objective`'s loss.

:meth:`Objective.hessian` builds a :class:`HessianOperator` (``V -> H V``) here, by reverse-over-reverse
differentiation with ``torch.func``, optionally *split* at the output of the differentiated submodule
(exact; see :func:`build_hessian`). Also home of the wrapper through which ``torch.func`` differentiates the
loss (:class:`_LossModule`), shared with the per-example gradients.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypedDict

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap

from labelfree.attribution.examples.base import check_positive_int, pretext_objective_loss
from labelfree.modules import eval_mode

if TYPE_CHECKING:
    from labelfree.attribution.examples.objective import LossFn, Objective

logger = logging.getLogger(__name__)

__all__ = ["HessianOperator", "HessianOptions", "WrittenHessian", "build_hessian"]

#: Largest relative difference allowed by the checks of a split (:func:`build_hessian`): the loss's gradient
#: against the surrogate's, and the head's product with a random probe against its block-diagonal part. Float32
#: rounding gives about 1e-6; a loss that reads the parameters elsewhere, or a head that couples examples, O(1).
_SPLIT_CHECK_RTOL = 1e-3

#: Largest relative difference allowed between a model's written-out Hessian product and autograd's on a random
#: probe (:func:`build_hessian`, ``written``). Float32 rounding through a 140-step LSTM gives about 1e-6; a model
#: whose loss differs from the one the written product assumes, O(1).
_WRITTEN_CHECK_RTOL = 1e-3

#: Examples on which a written-out product is checked against autograd (a few: autograd's product is the slow one).
_WRITTEN_CHECK_EXAMPLES = 4

#: Auto splits when the operator will multiply at least this many columns per output entry d. Building a split
#: costs d head products; each column then saves the head's share of a direct product. Measured break-even on the
#: 2-core CPU for the ECG LSTM autoencoder (d = 64, 50 examples, 4 vectors per vmap): 112 columns (1.75 d); at
#: 128 the split is 1.13x faster, at 256 1.3x; for the MNIST autoencoder (d = 4) 200 columns give 2x.
_SPLIT_COLUMNS_PER_OUTPUT = 2


class HessianOptions(TypedDict, total=False):
    """The keyword options of :func:`build_hessian` that :meth:`Objective.hvp` passes on (see there)."""

    weights: Tensor | None
    example_chunk_size: int | None
    vector_chunk_size: int | None
    split: bool | None
    written: bool | None


class WrittenHessian(Protocol):
    """What a model's ``written_hessian(wrt, x, weights)`` returns: the Hessian in ``wrt``'s parameters of
    ``sum_b weights_b * pretext_loss_b`` on the batch ``x``, with its second-order product written out."""

    def matmul(self, vectors: Tensor) -> Tensor:
        """``H V`` ``[P, k]`` for ``V`` ``[P, k]`` (the objective's parameter order)."""
        ...


#: Verdicts of the written-out products' checks (:func:`_written_hessian`), per model, keyed by what was
#: differentiated and the parameters' storage and version (new weights are checked again).
_WRITTEN_CHECKED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, float]] = weakref.WeakKeyDictionary()


class _LossModule(nn.Module):
    """Wraps ``model`` so that ``forward`` is the objective (``functional_call`` always calls forward).

    ``forward(x, y, per_example=True)`` takes *one* example (no batch dimension) and returns its scalar
    loss; ``per_example=False`` takes a batch and returns the mean loss (or ``sum_b weights_b * loss_b``).
    """

    def __init__(self, model: nn.Module, loss: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, x: Tensor, y: Tensor | None, per_example: bool, weights: Tensor | None = None) -> Tensor:
        if per_example:
            return self.loss(self.model, x[None], None if y is None else y[None])[0]
        losses = self.loss(self.model, x, y)
        return losses.mean() if weights is None else (losses * weights).sum()


def _flatten(tensors: dict[str, Tensor]) -> Tensor:
    """The values of a parameter-keyed dict, flattened and concatenated in order: ``[P]``."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def _loss_flat_grad(
    wrapper: _LossModule, fixed: dict[str, Tensor], x: Tensor, y: Tensor | None, weights: Tensor | None
) -> Callable[[dict[str, Tensor]], Tensor]:
    """theta -> flattened gradient ``[P]`` of the batch loss (the mean, or ``sum_b weights_b * loss_b``)."""
    return lambda p: _flatten(grad(lambda q: functional_call(wrapper, (q, fixed), (x, y, False, weights)))(p))


def _relative_difference(value: Tensor, reference: Tensor) -> float:
    """``|value - reference| / |reference|`` (Frobenius norms; 0 when both vanish)."""
    scale = reference.norm()
    difference = (value - reference).norm()
    return 0.0 if float(difference) == 0.0 else float(difference / scale.clamp_min(torch.finfo(scale.dtype).tiny))


@dataclasses.dataclass(frozen=True)
class _OutputCurvature:
    """Inputs ``(args, kwargs)`` and output ``z [b, ...]`` of the submodule, with the head's gradient
    ``e [b, d]`` and Hessian ``D [b, d, d]`` in the flattened output (see :func:`build_hessian`)."""

    args: tuple
    kwargs: dict
    output: Tensor
    gradient: Tensor
    hessian: Tensor


@dataclasses.dataclass(frozen=True)
class _HessianPiece:
    """One differentiated graph: a slice of the batch, its loss weights and (split) its output curvature."""

    x: Tensor
    y: Tensor | None
    weights: Tensor | None
    curvature: _OutputCurvature | None
    written: WrittenHessian | None = None


def build_hessian(
    objective: Objective,
    x: Tensor,
    y: Tensor | None = None,
    weights: Tensor | None = None,
    example_chunk_size: int | None = None,
    vector_chunk_size: int | None = None,
    split: bool | None = None,
    columns: int | None = None,
    written: bool | None = None,
) -> HessianOperator:
    """The Hessian H of the mean loss of the batch ``x`` (or of ``sum_b weights_b * loss_b``) as an operator.

    Also :meth:`Objective.hessian` (``objective.hessian(x, ...)``: this function is that method).
    ``operator.matmul(V)`` returns ``H V`` (``[P, k]`` for ``V`` of shape ``[P, k]``) by reverse-over-reverse
    differentiation with ``torch.func``, ``vmap``-ed over ``vector_chunk_size`` columns at a time.

    Args:
        objective: what is differentiated.
        x: a batch of inputs ``[b, ...]`` (moved to the model's device).
        y: labels ``[b]`` for the loss, or ``None``.
        weights: ``[b]`` weights of the examples' losses; ``None``: the mean.
        example_chunk_size: examples per differentiated graph (``None``: the whole batch). The Hessian of
            a weighted sum of per-example losses is the weighted sum of their Hessians, so the batch is
            split exactly; memory then scales with ``example_chunk_size * vector_chunk_size`` instead of
            ``b * vector_chunk_size`` (what keeps an LSTM under 4 GiB).
        vector_chunk_size: columns per ``vmap`` call (bounds memory), ``None`` for all.
        split: split at the submodule's output: ``None`` (auto: when it is possible and ``columns >= 2 d``,
            d the submodule's output entries per example), ``True`` (insists; a clear error says why it
            cannot) or ``False`` (never); see below.
        columns: how many columns the operator will multiply in all (what auto compares ``d`` with);
            ``None``: unknown, auto does not split.
        written: use the model's written-out second-order product where it has one (a method
            ``written_hessian(wrt, x, weights)`` returning a :class:`WrittenHessian`; the LSTM autoencoder,
            :mod:`labelfree.models.lstm_hessian`): ``None`` (auto: when the objective is the model's own pretext
            loss, ``split`` is not ``True`` and the product agrees with autograd's on a random probe), ``True``
            (insists; a clear error says why it cannot) or ``False`` (never). Where it is used, ``split`` and
            ``vector_chunk_size`` do not apply.

    Splitting at the submodule's output (exact). When the loss depends on theta only through
    ``z_b = f_theta(u_b)``, the output of the differentiated submodule (``wrt``, called once per
    batch), the chain rule gives ``H = sum_b w_b (J_b^T D_b J_b + sum_k e_bk grad^2 z_bk)`` with
    ``e_b = dl_b/dz`` and ``D_b = d^2 l_b/dz^2`` of the rest of the model (the head, e.g. the decoder)
    at the current weights. That is also the Hessian at theta of the surrogate
    ``s(theta) = sum_b w_b (e_b . z_b(theta) + (1/2) dz_b^T D_b dz_b)``, ``dz_b = z_b(theta) - z_b``,
    which only runs the submodule. ``e`` and ``D`` cost one head product per entry of ``z_b`` (d of
    them) when the operator is built; every column then skips the head. ``split=None`` (auto) splits
    when it is possible and ``columns >= 2 d`` (``columns``: how many the operator will multiply in all;
    see :data:`_SPLIT_COLUMNS_PER_OUTPUT`);
    ``True`` insists (a clear error says why it cannot); ``False`` never splits. The split is used only
    when it is exact: the submodule's forward runs once and returns ``[b, ...]``; no other module holds
    its parameters; a random probe finds the head's Hessian in ``z`` block-diagonal (no coupling across
    examples); and the surrogate's gradient equals the loss's own (a loss that reads theta outside the
    submodule, such as a weight penalty, fails this). Otherwise auto takes the direct product.
    """
    if vector_chunk_size is not None:
        check_positive_int("vector_chunk_size", vector_chunk_size)
    if weights is not None and (weights.ndim != 1 or len(weights) != len(x)):
        raise ValueError(f"weights must have shape [b={len(x)}], got {tuple(weights.shape)}")
    if split not in (None, True, False):
        raise ValueError(f"split must be None (auto), True or False, got {split!r}")
    if written not in (None, True, False):
        raise ValueError(f"written must be None (auto), True or False, got {written!r}")
    if written and split:
        raise ValueError("split=True and written=True exclude each other: a written-out product runs the whole "
                         "model (choose one, or leave one None)")
    if columns is not None:
        check_positive_int("columns", columns)
    if y is not None and len(y) != len(x):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    pieces = [(x, y, weights)]
    if example_chunk_size is not None:
        check_positive_int("example_chunk_size", example_chunk_size)
        if example_chunk_size < len(x):
            if weights is None:  # the mean, as explicit weights: the pieces then add up exactly
                weights = torch.full((len(x),), 1.0 / len(x), dtype=torch.float64)
            pieces = [
                (x[s : s + example_chunk_size], None if y is None else y[s : s + example_chunk_size],
                 weights[s : s + example_chunk_size])
                for s in range(0, len(x), example_chunk_size)
            ]
    device = objective.device
    dtype = objective.dtype
    built = []
    for px, py, pw in pieces:
        px = px.to(device)
        py = None if py is None else py.to(device)
        pw = None if pw is None else pw.to(device=device, dtype=dtype)
        use_written = written is True or (written is None and split is not True)
        product = _written_hessian(objective, px, py, pw, written) if use_written else None
        if product is not None:
            built.append(_HessianPiece(px, py, pw, None, product))
            continue
        curvature = (None if split is False
                     else _output_curvature(objective, px, py, pw, split, columns, vector_chunk_size))
        built.append(_HessianPiece(px, py, pw, curvature))
    return HessianOperator(objective, built, vector_chunk_size)


def _written_hessian(
    objective: Objective, x: Tensor, y: Tensor | None, weights: Tensor | None, written: bool | None,
) -> WrittenHessian | None:
    """The model's written-out Hessian of the batch (see :func:`build_hessian`), or ``None`` (auto) where it has
    none, the loss is not its pretext loss, or the product disagrees with autograd's; ``written=True`` raises."""
    model = objective.model

    def refuse(reason: str) -> None:
        if written:
            raise ValueError(f"no written-out Hessian product for {type(model).__name__}: {reason}")
        logger.debug("Hessian by autograd: %s", reason)

    build = getattr(model, "written_hessian", None)
    if not callable(build):
        return refuse("the model has no written_hessian method")
    if objective.loss is not pretext_objective_loss:
        return refuse("the objective's loss is not the model's pretext loss")
    if not isinstance(objective.wrt, str):
        return refuse("the parameters are selected by name prefixes, not as one submodule")
    if weights is None:  # the mean, as explicit weights
        weights = torch.full((len(x),), 1.0 / len(x), dtype=objective.dtype, device=x.device)
    params = objective._named_parameters().values()
    key = (objective.wrt, tuple((p.data_ptr(), p._version, p.dtype) for p in params))
    verdicts = _WRITTEN_CHECKED.setdefault(model, {})
    if key not in verdicts:  # checked on a few examples first: a refused product is never built for the batch
        m = min(len(x), _WRITTEN_CHECK_EXAMPLES)
        few = weights[:m] / weights[:m].sum()
        with eval_mode(model), torch.no_grad():
            small = build(objective.wrt, x[:m], few)
        if small is None:
            return refuse(f"{type(model).__name__} writes out no Hessian in {objective.wrt!r}")
        generator = torch.Generator().manual_seed(2)
        probe = torch.randn(objective.n_params, 1, generator=generator, dtype=objective.dtype).to(x.device)
        with eval_mode(model), torch.no_grad():
            mine = small.matmul(probe)
        reference = HessianOperator(objective, [_HessianPiece(x[:m], None if y is None else y[:m], few, None)],
                                    None).matmul(probe)
        verdicts[key] = _relative_difference(mine, reference)
    if verdicts[key] > _WRITTEN_CHECK_RTOL:
        return refuse(f"its product differs from autograd's by {verdicts[key]:.1e} relative on a random probe")
    with eval_mode(model), torch.no_grad():
        product = build(objective.wrt, x, weights)
    if product is None:
        return refuse(f"{type(model).__name__} writes out no Hessian in {objective.wrt!r}")
    return product


def _output_curvature(
    objective: Objective, x: Tensor, y: Tensor | None, weights: Tensor | None, split: bool | None,
    columns: int | None, vector_chunk_size: int | None,
) -> _OutputCurvature | None:
    """``e_b`` and ``D_b`` of the head at the submodule's output (see :func:`build_hessian`), or ``None``
    when auto decides against splitting. ``split=True`` raises when splitting is impossible."""
    model, wrt = objective.model, objective.wrt

    def refuse(reason: str) -> None:
        if split:
            raise ValueError(f"cannot split the Hessian of {type(model).__name__} at {wrt!r}: {reason}")
        logger.debug("Hessian not split at %r: %s", wrt, reason)

    if split is None and columns is None:
        return refuse("the number of columns is unknown")
    if not isinstance(wrt, str):
        return refuse("the parameters are selected by name prefixes, not as one submodule")
    if not wrt:
        return refuse("the whole model is differentiated, so there is no head")
    submodule = model.get_submodule(wrt)
    own = {id(p) for p in submodule.parameters()}
    for name, module in model.named_modules():
        if name == wrt or name.startswith(wrt + "."):
            continue
        if any(id(p) in own for p in module.parameters(recurse=False)):
            return refuse(f"module {name!r} shares its parameters")
    wrapper = _LossModule(model, objective.loss)
    calls: list[tuple[tuple, dict, object]] = []
    cell: dict[str, Tensor] = {}

    def record(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        calls.append((args, kwargs, output))

    def replace(module: nn.Module, args: tuple, output: object) -> Tensor:
        return cell["z"]

    with eval_mode(model), torch.no_grad():
        params, fixed = objective._split_state(wrapper)
        handle = submodule.register_forward_hook(record, with_kwargs=True)
        try:
            functional_call(wrapper, (params, fixed), (x, y, False, weights))
        finally:
            handle.remove()
        if len(calls) != 1:
            return refuse(f"the loss calls the submodule's forward {len(calls)} times (needs exactly once)")
        args, kwargs, output = calls[0]
        if not isinstance(output, Tensor) or output.ndim < 1 or len(output) != len(x):
            return refuse("its forward does not return one tensor with the batch as first dimension")
        z0 = output.detach()
        width = z0[0].numel()
        if split is None and (columns is None or columns < _SPLIT_COLUMNS_PER_OUTPUT * width):
            return refuse(f"{columns} columns do not repay the head products of {width} output entries per example")
        if weights is None:  # the mean, as explicit weights
            weights = torch.full((len(x),), 1.0 / len(x), dtype=z0.dtype, device=z0.device)

        def head(z: Tensor) -> Tensor:  # the weighted loss as a function of the submodule's output
            cell["z"] = z
            return functional_call(wrapper, (params, fixed), (x, y, False, weights))

        handle = submodule.register_forward_hook(replace)
        try:
            gradient, head_vjp = vjp(grad(head), z0)
            gradient = gradient.reshape(len(x), width)
            basis = torch.eye(width, dtype=z0.dtype, device=z0.device)
            basis = basis[:, None, :].expand(width, len(x), width).reshape(width, *z0.shape)
            step = width if vector_chunk_size is None else vector_chunk_size
            blocks = [vmap(head_vjp)(basis[s : s + step].contiguous())[0] for s in range(0, width, step)]
            probe = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0), dtype=z0.dtype).to(z0.device)
            (probed,) = head_vjp(probe)
        finally:
            handle.remove()
        # for a head that is per-example the Hessian in z is block diagonal: column j of D_b is row b of
        # the product with the j-th basis direction repeated over the batch; a random probe checks that
        hessian = torch.cat(blocks).reshape(width, len(x), width).permute(1, 2, 0).contiguous()
        expected = torch.einsum("bij,bj->bi", hessian, probe.reshape(len(x), width))
        coupling = _relative_difference(probed.reshape(len(x), width), expected)
        if coupling > _SPLIT_CHECK_RTOL:
            return refuse(f"the head couples the examples (block-diagonal check off by {coupling:.1e} relative)")
        curvature = _OutputCurvature(args, kwargs, z0, gradient, hessian)
        direct_grad = _loss_flat_grad(wrapper, fixed, x, y, weights)
        surrogate_grad = _surrogate_grad(objective, curvature)
        mismatch = _relative_difference(surrogate_grad(params), direct_grad(params))
        if mismatch > _SPLIT_CHECK_RTOL:
            return refuse(
                f"the loss depends on the parameters outside the submodule's output (gradients differ by "
                f"{mismatch:.1e} relative)"
            )
        # Equal gradients do not make equal Hessians: a penalty on theta whose gradient vanishes at the current
        # weights (a proximal term at its centre) still has curvature. One Hessian-vector product with a random
        # probe, surrogate against direct, checks the second derivatives themselves.
        flat = _flatten(params)
        probe = torch.randn(flat.shape, generator=torch.Generator().manual_seed(1), dtype=flat.dtype).to(flat.device)
        products = []
        for flat_grad in (surrogate_grad, direct_grad):
            _, vjp_fn = vjp(flat_grad, params)
            products.append(_flatten(vjp_fn(probe)[0]))
        mismatch = _relative_difference(*products)
        if mismatch > _SPLIT_CHECK_RTOL:
            return refuse(
                f"the loss has curvature in the parameters outside the submodule's output (Hessian-vector products "
                f"differ by {mismatch:.1e} relative)"
            )
    return curvature


def _surrogate_grad(objective: Objective, curvature: _OutputCurvature) -> Callable[[dict[str, Tensor]], Tensor]:
    """theta -> flattened gradient of the surrogate ``s(theta)`` of :func:`build_hessian` (runs the submodule
    only; ``e`` and ``D`` already carry the examples' weights)."""
    submodule = objective.model.get_submodule(objective.wrt)
    prefix = f"model.{objective.wrt}."
    buffers = {name: b.detach() for name, b in submodule.named_buffers()}
    z0 = curvature.output.reshape(len(curvature.output), -1)

    def surrogate(p: dict[str, Tensor]) -> Tensor:
        own = {name[len(prefix):]: t for name, t in p.items()}
        z = functional_call(submodule, (own, buffers), curvature.args, curvature.kwargs).reshape(z0.shape)
        dz = z - z0
        return (curvature.gradient * z).sum() + 0.5 * torch.einsum("bi,bij,bj->", dz, curvature.hessian, dz)

    return lambda p: _flatten(grad(surrogate)(p))


class HessianOperator:
    """``V -> H V`` for the Hessian of a fixed batch's loss; built by :meth:`Objective.hessian`.

    Building it costs what does not depend on the vectors (with a split: the head's derivatives), so an
    operator applied many times (Arnoldi) pays that once.
    """

    def __init__(self, objective: Objective, pieces: list[_HessianPiece], vector_chunk_size: int | None) -> None:
        self.objective = objective
        self.pieces = pieces
        self.vector_chunk_size = vector_chunk_size

    @property
    def split(self) -> bool:
        """Whether the products skip the head (split at the submodule's output)."""
        return all(piece.curvature is not None for piece in self.pieces)

    @property
    def written(self) -> bool:
        """Whether the products are the model's written-out ones (:func:`build_hessian`, ``written``)."""
        return all(piece.written is not None for piece in self.pieces)

    def matmul(self, vectors: Tensor) -> Tensor:
        """``H V`` of shape ``[P, k]`` for ``V`` of shape ``[P, k]`` (on the model's device)."""
        objective = self.objective
        if vectors.ndim != 2 or vectors.shape[0] != objective.n_params:
            raise ValueError(f"vectors must have shape [P={objective.n_params}, k], got {tuple(vectors.shape)}")
        vectors = vectors.to(objective.device)
        total: Tensor | None = None
        for piece in self.pieces:
            product = self._piece_product(piece, vectors)
            total = product if total is None else total + product
        assert total is not None
        return total

    def _piece_product(self, piece: _HessianPiece, vectors: Tensor) -> Tensor:
        objective = self.objective
        if piece.written is not None:
            with eval_mode(objective.model), torch.no_grad():
                return piece.written.matmul(vectors)
        wrapper = _LossModule(objective.model, objective.loss)
        k = vectors.shape[1]
        chunk = k if self.vector_chunk_size is None else self.vector_chunk_size
        weights = None if piece.weights is None else piece.weights.to(device=vectors.device, dtype=vectors.dtype)
        with eval_mode(objective.model), torch.no_grad():
            params, fixed = objective._split_state(wrapper)
            if piece.curvature is not None:
                flat_grad = _surrogate_grad(objective, piece.curvature)
            else:
                flat_grad = _loss_flat_grad(wrapper, fixed, piece.x, piece.y, weights)
            _, vjp_fn = vjp(flat_grad, params)
            columns = []
            for start in range(0, k, chunk):
                (products,) = vmap(vjp_fn)(vectors[:, start : start + chunk].T.contiguous())
                columns.append(torch.cat([h.reshape(h.shape[0], -1) for h in products.values()], dim=1).T)
        return torch.cat(columns, dim=1) if columns else vectors.new_zeros(vectors.shape)
