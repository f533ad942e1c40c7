"""Label-free example importance (PAPER.md section 1, "Label-free example importance").

Every explainer follows one contract (:class:`ExampleImportance`): ``fit(train_x)`` once, then
``attribute(test_x) -> Tensor[n_test, n_train]`` where entry ``[t, i]`` is the importance of training
example ``i`` for test example ``t`` (rows = test examples, higher = more important). Scores are
always returned on the CPU; inputs may live on the CPU while the model lives on another device.

* Loss-based methods (:class:`InfluenceFunctions`, :class:`TracIn`) differentiate an explicit
  :class:`Objective`: the model's per-example pretext loss restricted to the parameters of one
  submodule (the encoder by default). Per-example gradients come from ``torch.func``
  (``vmap(grad(functional_call))``) in eval mode; scores are matrix products of gradient matrices.
* Representation-based methods (:class:`SimplEx`, :class:`DKNN`) only use ``h = encoder(x)``.
* :class:`RandomExampleImportance` is the random baseline.

No explainer leaves the model changed: weights, ``requires_grad`` flags and the train/eval mode of
every submodule are the same afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap
from tqdm.auto import tqdm

from labelfree.models.base import PretextModel
from labelfree.training import Checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "DKNN",
    "EXAMPLE_EXPLAINERS",
    "Checkpoint",
    "ExampleImportance",
    "HessianOperator",
    "InfluenceFunctions",
    "Objective",
    "RandomExampleImportance",
    "SimplEx",
    "TracIn",
    "pretext_objective_loss",
    "requires_loss",
]

LossFn = Callable[[nn.Module, Tensor, "Tensor | None"], Tensor]


# ----------------------------------------------------------------------------------------------
# Helpers shared by the explainers
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode and restore the ``training`` flag of every submodule afterwards.

    ``module.train(mode)`` would not do: it sets one flag on all submodules, whereas a model may
    have been left with mixed modes (e.g. a frozen BatchNorm in eval inside a training model).
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _device_of(module: nn.Module) -> torch.device:
    """Device of the first parameter (or buffer) of ``module``; CPU for a module without tensors."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _represent(encoder: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Flattened representations ``encoder(x)``, shape ``[n, d]``, on the encoder's device.

    Computed batch by batch in eval mode under ``no_grad``; the modes are restored afterwards.
    """
    device = _device_of(encoder)
    with _eval_mode(encoder), torch.no_grad():
        reps = [encoder(x[i : i + batch_size].to(device)).flatten(1) for i in range(0, len(x), batch_size)]
    return torch.cat(reps)


def pretext_objective_loss(model: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
    """Default objective: the model's deterministic per-example pretext loss, shape ``[n]``."""
    return model.pretext_loss(x, y, perturb=False)


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


# ----------------------------------------------------------------------------------------------
# The objective differentiated by loss-based explainers
# ----------------------------------------------------------------------------------------------


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
        return _device_of(self.model.get_submodule(self.wrt))

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
        _check_positive_int("chunk_size", chunk_size)
        if y is not None and len(y) != len(x):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        wrapper = _LossModule(self.model, self.loss)
        device = self.device

        def example_loss(params: dict[str, Tensor], fixed: dict[str, Tensor], xi: Tensor, yi: Tensor | None) -> Tensor:
            return functional_call(wrapper, (params, fixed), (xi, yi, True))

        per_example = vmap(grad(example_loss), in_dims=(None, None, 0, None if y is None else 0))
        with _eval_mode(self.model), torch.no_grad():
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

    def hvp(
        self,
        x: Tensor,
        vectors: Tensor,
        y: Tensor | None = None,
        vector_chunk_size: int | None = None,
        weights: Tensor | None = None,
        example_chunk_size: int | None = None,
        split: bool | None = None,
    ) -> Tensor:
        """Hessian-matrix product ``H V``, shape ``[P, k]``, H the Hessian of the *mean* loss of ``x``.

        One-off form of :meth:`hessian` (``hessian(x, ...).matmul(vectors)``); see there for the arguments.
        ``split=None`` splits at the submodule's output when that is possible and cheaper for ``k`` columns.
        """
        if vectors.ndim != 2 or vectors.shape[0] != self.n_params:
            raise ValueError(f"vectors must have shape [P={self.n_params}, k], got {tuple(vectors.shape)}")
        operator = self.hessian(x, y, weights=weights, example_chunk_size=example_chunk_size,
                                vector_chunk_size=vector_chunk_size, split=split, columns=vectors.shape[1])
        return operator.matmul(vectors)

    def hessian(
        self,
        x: Tensor,
        y: Tensor | None = None,
        weights: Tensor | None = None,
        example_chunk_size: int | None = None,
        vector_chunk_size: int | None = None,
        split: bool | None = None,
        columns: int | None = None,
    ) -> HessianOperator:
        """The Hessian H of the mean loss of the batch ``x`` (or of ``sum_b weights_b * loss_b``) as an operator.

        ``operator.matmul(V)`` returns ``H V`` (``[P, k]`` for ``V`` of shape ``[P, k]``) by reverse-over-reverse
        differentiation with ``torch.func``, ``vmap``-ed over ``vector_chunk_size`` columns at a time.

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

        Args:
            x: a batch of inputs ``[b, ...]`` (moved to the model's device).
            y: labels ``[b]`` for the loss, or ``None``.
            weights: ``[b]`` weights of the examples' losses; ``None``: the mean.
            example_chunk_size: examples per differentiated graph (``None``: the whole batch). The Hessian of
                a weighted sum of per-example losses is the weighted sum of their Hessians, so the batch is
                split exactly; memory then scales with ``example_chunk_size * vector_chunk_size`` instead of
                ``b * vector_chunk_size`` (what keeps an LSTM under 4 GiB).
            vector_chunk_size: columns per ``vmap`` call (bounds memory), ``None`` for all.
            split: split at the submodule's output: ``None`` (auto), ``True`` or ``False`` (see above).
            columns: how many columns the operator will multiply in all (what auto compares ``d`` with);
                ``None``: unknown, auto does not split.
        """
        if vector_chunk_size is not None:
            _check_positive_int("vector_chunk_size", vector_chunk_size)
        if weights is not None and (weights.ndim != 1 or len(weights) != len(x)):
            raise ValueError(f"weights must have shape [b={len(x)}], got {tuple(weights.shape)}")
        if split not in (None, True, False):
            raise ValueError(f"split must be None (auto), True or False, got {split!r}")
        if columns is not None:
            _check_positive_int("columns", columns)
        if y is not None and len(y) != len(x):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        pieces = [(x, y, weights)]
        if example_chunk_size is not None:
            _check_positive_int("example_chunk_size", example_chunk_size)
            if example_chunk_size < len(x):
                if weights is None:  # the mean, as explicit weights: the pieces then add up exactly
                    weights = torch.full((len(x),), 1.0 / len(x), dtype=torch.float64)
                pieces = [
                    (x[s : s + example_chunk_size], None if y is None else y[s : s + example_chunk_size],
                     weights[s : s + example_chunk_size])
                    for s in range(0, len(x), example_chunk_size)
                ]
        device = self.device
        dtype = next(self.model.get_submodule(self.wrt).parameters()).dtype
        built = []
        for px, py, pw in pieces:
            px = px.to(device)
            py = None if py is None else py.to(device)
            pw = None if pw is None else pw.to(device=device, dtype=dtype)
            curvature = (None if split is False
                         else self._output_curvature(px, py, pw, split, columns, vector_chunk_size))
            built.append(_HessianPiece(px, py, pw, curvature))
        return HessianOperator(self, built, vector_chunk_size)

    def _output_curvature(
        self, x: Tensor, y: Tensor | None, weights: Tensor | None, split: bool | None, columns: int | None,
        vector_chunk_size: int | None,
    ) -> _OutputCurvature | None:
        """``e_b`` and ``D_b`` of the head at the submodule's output (see :meth:`hessian`), or ``None``
        when auto decides against splitting. ``split=True`` raises when splitting is impossible."""

        def refuse(reason: str) -> None:
            if split:
                raise ValueError(f"cannot split the Hessian of {type(self.model).__name__} at {self.wrt!r}: {reason}")
            logger.debug("Hessian not split at %r: %s", self.wrt, reason)

        if split is None and columns is None:
            return refuse("the number of columns is unknown")
        if not self.wrt:
            return refuse("the whole model is differentiated, so there is no head")
        submodule = self.model.get_submodule(self.wrt)
        own = {id(p) for p in submodule.parameters()}
        for name, module in self.model.named_modules():
            if name == self.wrt or name.startswith(self.wrt + "."):
                continue
            if any(id(p) in own for p in module.parameters(recurse=False)):
                return refuse(f"module {name!r} shares its parameters")
        wrapper = _LossModule(self.model, self.loss)
        calls: list[tuple[tuple, dict, object]] = []
        cell: dict[str, Tensor] = {}

        def record(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            calls.append((args, kwargs, output))

        def replace(module: nn.Module, args: tuple, output: object) -> Tensor:
            return cell["z"]

        with _eval_mode(self.model), torch.no_grad():
            params, fixed = self._split_state(wrapper)
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
            direct = _loss_flat_grad(wrapper, fixed, x, y, weights)(params)
            mismatch = _relative_difference(self._surrogate_grad(curvature)(params), direct)
            if mismatch > _SPLIT_CHECK_RTOL:
                return refuse(
                    f"the loss depends on the parameters outside the submodule's output (gradients differ by "
                    f"{mismatch:.1e} relative)"
                )
        return curvature

    def _surrogate_grad(self, curvature: _OutputCurvature) -> Callable[[dict[str, Tensor]], Tensor]:
        """theta -> flattened gradient of the surrogate ``s(theta)`` of :meth:`hessian` (runs the submodule
        only; ``e`` and ``D`` already carry the examples' weights)."""
        submodule = self.model.get_submodule(self.wrt)
        prefix = f"model.{self.wrt}."
        buffers = {name: b.detach() for name, b in submodule.named_buffers()}
        z0 = curvature.output.reshape(len(curvature.output), -1)

        def surrogate(p: dict[str, Tensor]) -> Tensor:
            own = {name[len(prefix):]: t for name, t in p.items()}
            z = functional_call(submodule, (own, buffers), curvature.args, curvature.kwargs).reshape(z0.shape)
            dz = z - z0
            return (curvature.gradient * z).sum() + 0.5 * torch.einsum("bi,bij,bj->", dz, curvature.hessian, dz)

        return lambda p: _flatten(grad(surrogate)(p))


#: Largest relative difference allowed by the checks of a split (:meth:`Objective.hessian`): the loss's gradient
#: against the surrogate's, and the head's product with a random probe against its block-diagonal part. Float32
#: rounding gives about 1e-6; a loss that reads the parameters elsewhere, or a head that couples examples, O(1).
_SPLIT_CHECK_RTOL = 1e-3

#: Auto splits when the operator will multiply at least this many columns per output entry d. Building a split
#: costs d head products; each column then saves the head's share of a direct product. Measured break-even on the
#: 2-core CPU for the ECG LSTM autoencoder (d = 64, 50 examples, 4 vectors per vmap): 112 columns (1.75 d); at
#: 128 the split is 1.13x faster, at 256 1.3x; for the MNIST autoencoder (d = 4) 200 columns give 2x.
_SPLIT_COLUMNS_PER_OUTPUT = 2


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
    ``e [b, d]`` and Hessian ``D [b, d, d]`` in the flattened output (see :meth:`Objective.hessian`)."""

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
        wrapper = _LossModule(objective.model, objective.loss)
        k = vectors.shape[1]
        chunk = k if self.vector_chunk_size is None else self.vector_chunk_size
        weights = None if piece.weights is None else piece.weights.to(device=vectors.device, dtype=vectors.dtype)
        with _eval_mode(objective.model), torch.no_grad():
            params, fixed = objective._split_state(wrapper)
            if piece.curvature is not None:
                flat_grad = objective._surrogate_grad(piece.curvature)
            else:
                flat_grad = _loss_flat_grad(wrapper, fixed, piece.x, piece.y, weights)
            _, vjp_fn = vjp(flat_grad, params)
            columns = []
            for start in range(0, k, chunk):
                (products,) = vmap(vjp_fn)(vectors[:, start : start + chunk].T.contiguous())
                columns.append(torch.cat([h.reshape(h.shape[0], -1) for h in products.values()], dim=1).T)
        return torch.cat(columns, dim=1) if columns else vectors.new_zeros(vectors.shape)


# ----------------------------------------------------------------------------------------------
# The contract
# ----------------------------------------------------------------------------------------------


class ExampleImportance(ABC):
    """``fit(train_x)`` then ``attribute(test_x) -> Tensor[n_test, n_train]`` (higher = more important)."""

    _fitted: bool = False

    @abstractmethod
    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> ExampleImportance:
        """Prepare everything that depends on the training examples ``train_x`` ``[n_train, ...]``."""

    @abstractmethod
    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        """Importance of every training example for every test example: float ``[n_test, n_train]`` on CPU."""

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__}.attribute was called before fit; call fit(train_x) first")


class _LossBasedImportance(ExampleImportance):
    """Shared label handling of the loss-based explainers."""

    objective: Objective

    def _labels(self, y: Tensor | None, n: int, what: str) -> Tensor | None:
        if not self.objective.model.uses_labels:
            return None
        if y is None:
            raise ValueError(
                f"{type(self).__name__}: the model's loss uses labels (model.uses_labels is True), "
                f"so {what}_y is required"
            )
        if len(y) != n:
            raise ValueError(f"{what}_x and {what}_y must have the same length, got {n} and {len(y)}")
        return y


# ----------------------------------------------------------------------------------------------
# TracIn
# ----------------------------------------------------------------------------------------------


class TracIn(_LossBasedImportance):
    """TracIn (Pruthi et al., 2020), label-free: ``score(t, i) = sum_c lr_c grad L_c(x_t) . grad L_c(x_i)``.

    ``L_c`` is the objective at the weights of checkpoint ``c``; gradients are w.r.t. ``objective.wrt``
    (the encoder). The paper saves a checkpoint every 10 epochs with learning-rate factor 1.
    Checkpoints are loaded into a deep copy of the model, never into the model itself. ``fit`` keeps
    the training examples; ``attribute`` computes, per checkpoint, the test gradients once and the
    training gradients chunk by chunk, so no ``[n_train, P]`` matrix is ever held.

    Args:
        objective: what is differentiated.
        checkpoints: the saved checkpoints (at least one).
        chunk_size: examples per ``vmap`` call when computing per-example gradients (default 64).
    """

    def __init__(self, objective: Objective, checkpoints: Sequence[Checkpoint], chunk_size: int = 64) -> None:
        checkpoints = list(checkpoints)
        if not checkpoints:
            raise ValueError("TracIn needs at least one Checkpoint(path, learning_rate); got an empty list")
        for checkpoint in checkpoints:
            if not isinstance(checkpoint, Checkpoint):
                raise TypeError(f"TracIn checkpoints must be Checkpoint instances, got {type(checkpoint).__name__}")
        _check_positive_int("chunk_size", chunk_size)
        self.objective = objective
        self.checkpoints = checkpoints
        self.chunk_size = chunk_size
        self._train_x: Tensor | None = None
        self._train_y: Tensor | None = None

    def _checkpoint_objectives(self) -> Iterator[tuple[float, Objective]]:
        """Yield ``(lr_c, objective at checkpoint c)`` for every checkpoint, on one copy of the model."""
        model_copy = copy.deepcopy(self.objective.model)
        device = self.objective.device
        for checkpoint in tqdm(self.checkpoints, desc="TracIn checkpoints", leave=False):
            path = Path(checkpoint.path)
            if not path.is_file():
                raise FileNotFoundError(f"TracIn checkpoint file not found: {path}")
            state = torch.load(path, map_location=device, weights_only=True)
            model_copy.load_state_dict(state)
            yield checkpoint.learning_rate, dataclasses.replace(self.objective, model=model_copy)

    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> TracIn:
        if len(train_x) == 0:
            raise ValueError("TracIn.fit needs at least one training example")
        self._train_y = self._labels(train_y, len(train_x), "train")
        self._train_x = train_x
        self._fitted = True
        return self

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        """Scores ``[n_test, n_train]``. Per checkpoint: the test-gradient matrix ``[n_test, P]``, then the
        training gradients ``chunk_size`` examples at a time (peak memory ~ ``(n_test + chunk_size) * P`` floats)."""
        self._check_fitted()
        assert self._train_x is not None
        test_y = self._labels(test_y, len(test_x), "test")
        n_train = len(self._train_x)
        dtype = next(self.objective.model.get_submodule(self.objective.wrt).parameters()).dtype
        scores = torch.zeros(len(test_x), n_train, device=self.objective.device, dtype=dtype)
        for lr, objective in self._checkpoint_objectives():
            test_grads = objective.per_example_grads(test_x, test_y, chunk_size=self.chunk_size)
            for start in range(0, n_train, self.chunk_size):
                stop = min(start + self.chunk_size, n_train)
                train_y = None if self._train_y is None else self._train_y[start:stop]
                train_grads = objective.per_example_grads(self._train_x[start:stop], train_y, chunk_size=self.chunk_size)
                scores[:, start:stop].add_(test_grads @ train_grads.T, alpha=lr)
            del test_grads
        return scores.cpu()


# ----------------------------------------------------------------------------------------------
# Influence functions
# ----------------------------------------------------------------------------------------------


class InfluenceFunctions(_LossBasedImportance):
    """Influence functions (Koh & Liang, 2017), label-free:
    ``score(t, i) = grad L(x_t)^T H^{-1} grad L(x_i)``, H the Hessian of the mean training loss in theta.

    Sign/orientation: no minus sign (the paper's form). A large positive score means that a gradient
    step on training example ``i`` also decreases the loss of test example ``t`` (a "proponent");
    Koh & Liang's influence of up-weighting ``i`` on the test loss is the negative of this score.

    ``H^{-1} v`` is the stochastic LiSSA estimate (Agarwal et al., 2017)::

        h_0 = v;  h_j = v + (1 - damping) h_{j-1} - H_{B_j} h_{j-1} / scale;  estimate = h_depth / scale

    with ``B_j`` a minibatch of ``batch_size`` training examples drawn with replacement, averaged over
    ``repeats`` independent recursions. Its fixed point is ``(H + damping * scale * I)^{-1} v``: the
    estimate targets the damped Hessian (with the paper's damping 1e-3 and scale 1000, ``H + I``); the
    series converges when the eigenvalues of ``H / scale + damping`` lie in ``(0, 2)``. The recursion
    is linear in ``v``, so it runs on all test gradients at once as a ``[P, n_test]`` matrix, one
    sampled batch per step shared by all columns. Sampling uses its own ``torch.Generator`` seeded
    with ``seed`` at every ``attribute`` call (same seed, same numbers).

    Cost of ``attribute``: ``repeats * depth`` Hessian-matrix products, each about 2-3 forward/backward
    passes of a batch per test example (see :meth:`Objective.hvp`).

    ``solver="arnoldi"`` computes the *expected* LiSSA estimate instead, without sampling and with a cost
    independent of the number of test examples. Since the batches are independent, the expectation of
    the recursion is the same polynomial of the full Hessian H of the mean loss over the training
    examples: ``E[estimate] = phi(H) v`` with ``phi(mu) = (1 / scale) sum_{j=0}^{depth} (1 - damping - mu / scale)^j``.
    ``fit`` runs ``arnoldi_iterations`` steps of Arnoldi (Lanczos with full re-orthogonalisation) on H,
    one full-Hessian-vector product per step (Schioppa et al., 2022), and keeps the ``arnoldi_rank`` Ritz
    pairs (lambda_k, u_k) of largest |lambda|; then ``phi(H) v = phi(0) v + sum_k (phi(lambda_k) - phi(0)) u_k u_k^T v``,
    exact when H has no other eigenvalue far from 0. Use it where LiSSA at the paper's depth does not fit
    (the paper-scale MNIST check: 1000 test vectors x 100 steps); ``scripts/bench_explainers.py`` reports
    its agreement with LiSSA.

    Args:
        objective: what is differentiated.
        damping: LiSSA damping, >= 0 (paper: 1e-3).
        scale: LiSSA scale, > 0, must exceed the largest Hessian eigenvalue (paper: 1000).
        depth: recursion depth, >= 1 (paper: 100).
        batch_size: training examples per sampled batch (default 300, the MNIST training batch).
        repeats: independent recursions averaged, >= 1 (default 1).
        seed: seed of the batch sampler (default 0).
        chunk_size: examples per ``vmap`` call for per-example gradients (default 64).
        vector_chunk_size: test vectors per vmapped Hessian-vector product (bounds memory; ``None``:
            all at once; default 8: on a 2-core CPU 10 % faster than 16 and 25 % faster than 32 for the MNIST
            autoencoder).
        solver: ``"lissa"`` (the paper's stochastic recursion) or ``"arnoldi"`` (its expectation from a
            low-rank eigendecomposition of H, see above).
        arnoldi_iterations: Arnoldi steps (full-Hessian-vector products), >= 1 (default 100).
        arnoldi_rank: Ritz pairs kept, 1 <= rank <= arnoldi_iterations (default 20).
        test_chunk_size: test examples whose gradients are inverted together (bounds memory to about
            ``4 * test_chunk_size * P`` floats besides the ``[n_train, P]`` training gradients; the result
            does not depend on it, since every chunk replays the same sampled batches); ``None``: all.
        hvp_chunk_size: training examples per Hessian-vector-product graph (``None``: the whole sampled
            batch); exact, it only bounds memory (see :meth:`Objective.hessian`).
        split_hessian: let Hessian-vector products skip the head (the decoder) by splitting the Hessian
            at the encoder's output, exactly, where the model allows it and it is cheaper (see
            :meth:`Objective.hessian`); ``False`` always differentiates the whole loss. Same scores either
            way up to float rounding.
    """

    SOLVERS = ("lissa", "arnoldi")

    def __init__(
        self,
        objective: Objective,
        damping: float = 1e-3,
        scale: float = 1000.0,
        depth: int = 100,
        batch_size: int = 300,
        repeats: int = 1,
        seed: int = 0,
        chunk_size: int = 64,
        vector_chunk_size: int | None = 8,
        solver: str = "lissa",
        arnoldi_iterations: int = 100,
        arnoldi_rank: int = 20,
        test_chunk_size: int | None = 256,
        hvp_chunk_size: int | None = None,
        split_hessian: bool = True,
    ) -> None:
        if solver not in self.SOLVERS:
            raise ValueError(f"InfluenceFunctions solver must be one of {list(self.SOLVERS)}, got {solver!r}")
        _check_positive_int("arnoldi_iterations", arnoldi_iterations)
        _check_positive_int("arnoldi_rank", arnoldi_rank)
        if arnoldi_rank > arnoldi_iterations:
            raise ValueError(
                f"arnoldi_rank ({arnoldi_rank}) cannot exceed arnoldi_iterations ({arnoldi_iterations}): "
                "the Ritz pairs come from an Arnoldi basis of that many vectors"
            )
        if not math.isfinite(damping) or damping < 0:
            raise ValueError(f"InfluenceFunctions damping must be a finite number >= 0, got {damping!r}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"InfluenceFunctions scale must be a finite number > 0, got {scale!r}")
        _check_positive_int("depth", depth)
        _check_positive_int("batch_size", batch_size)
        _check_positive_int("repeats", repeats)
        _check_positive_int("chunk_size", chunk_size)
        if vector_chunk_size is not None:
            _check_positive_int("vector_chunk_size", vector_chunk_size)
        self.objective = objective
        self.damping = damping
        self.scale = scale
        self.depth = depth
        self.batch_size = batch_size
        self.repeats = repeats
        self.seed = seed
        self.chunk_size = chunk_size
        self.vector_chunk_size = vector_chunk_size
        if test_chunk_size is not None:
            _check_positive_int("test_chunk_size", test_chunk_size)
        self.test_chunk_size = test_chunk_size
        if hvp_chunk_size is not None:
            _check_positive_int("hvp_chunk_size", hvp_chunk_size)
        self.hvp_chunk_size = hvp_chunk_size
        if not isinstance(split_hessian, bool):
            raise ValueError(f"InfluenceFunctions split_hessian must be true or false, got {split_hessian!r}")
        self.split_hessian = split_hessian
        self.solver = solver
        self.arnoldi_iterations = arnoldi_iterations
        self.arnoldi_rank = arnoldi_rank
        self._train_x: Tensor | None = None
        self._train_y: Tensor | None = None
        self._train_grads: Tensor | None = None
        self.ritz_values: Tensor | None = None
        self._ritz_vectors: Tensor | None = None

    @property
    def _split(self) -> bool | None:
        """``split`` argument of the Hessian products: auto, or never."""
        return None if self.split_hessian else False

    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> InfluenceFunctions:
        if len(train_x) == 0:
            raise ValueError("InfluenceFunctions.fit needs at least one training example")
        self._train_y = self._labels(train_y, len(train_x), "train")
        self._train_x = train_x
        self._train_grads = self.objective.per_example_grads(train_x, self._train_y, chunk_size=self.chunk_size)
        logger.info("InfluenceFunctions: kept a train-gradient matrix of shape %s", tuple(self._train_grads.shape))
        if self.solver == "arnoldi":
            self.ritz_values, self._ritz_vectors = self._arnoldi()
        self._fitted = True
        return self

    def _full_hessian(self, columns: int) -> list[tuple[HessianOperator, float]]:
        """The Hessian of the mean loss over all training examples as operators on ``batch_size`` examples
        at a time, each with its share of the mean; ``columns``: products each operator will serve."""
        assert self._train_x is not None
        n_train = len(self._train_x)
        operators = []
        for start in range(0, n_train, self.batch_size):
            stop = min(start + self.batch_size, n_train)
            batch_y = None if self._train_y is None else self._train_y[start:stop]
            operator = self.objective.hessian(
                self._train_x[start:stop], batch_y, example_chunk_size=self.hvp_chunk_size,
                vector_chunk_size=self.vector_chunk_size, split=self._split, columns=columns,
            )
            operators.append((operator, (stop - start) / n_train))
        return operators

    def _arnoldi(self) -> tuple[Tensor, Tensor]:
        """Ritz values ``[r]`` and orthonormal Ritz vectors ``[P, r]`` of H with the largest |value|."""
        n_params = self.objective.n_params
        steps = min(self.arnoldi_iterations, n_params)
        device = self.objective.device
        dtype = next(self.objective.model.get_submodule(self.objective.wrt).parameters()).dtype
        generator = torch.Generator().manual_seed(self.seed)
        basis = torch.zeros(n_params, steps + 1, device=device, dtype=dtype)
        projected = torch.zeros(steps + 1, steps, dtype=torch.float64)
        start = torch.randn(n_params, generator=generator, dtype=dtype).to(device)
        basis[:, 0] = start / start.norm()
        size = steps
        hessian = self._full_hessian(columns=steps)
        for j in tqdm(range(steps), desc="Arnoldi", leave=False):
            w = sum(share * operator.matmul(basis[:, j : j + 1])[:, 0] for operator, share in hessian)
            reference = w.norm()
            for _ in range(2):  # classical Gram-Schmidt, twice: orthogonal to float precision
                coefficients = basis[:, : j + 1].T @ w
                w = w - basis[:, : j + 1] @ coefficients
                projected[: j + 1, j] += coefficients.double().cpu()
            norm = w.norm()
            projected[j + 1, j] = float(norm)
            if norm <= torch.finfo(w.dtype).eps * max(float(reference), 1.0):
                size = j + 1  # invariant subspace found: H is exactly represented on it
                break
            basis[:, j + 1] = w / norm
        square = projected[:size, :size]
        values, vectors = torch.linalg.eigh((square + square.T) / 2)
        keep = values.abs().argsort(descending=True)[: self.arnoldi_rank]
        ritz_vectors = basis[:, :size] @ vectors[:, keep].to(device=device, dtype=basis.dtype)
        logger.info(
            "InfluenceFunctions (arnoldi): %d steps, Ritz values from %.3g to %.3g", size,
            float(values[keep].max()), float(values[keep].min()),
        )
        return values[keep].to(device=device, dtype=basis.dtype), ritz_vectors

    def _lissa_filter(self, eigenvalues: Tensor) -> Tensor:
        """``phi(mu) = (1 / scale) sum_{j=0}^{depth} a^j``, ``a = 1 - damping - mu / scale`` (float64)."""
        a = 1.0 - self.damping - eigenvalues.double() / self.scale
        terms = self.depth + 1
        safe = (1.0 - a).abs() > 1e-12
        geometric = torch.where(safe, (1.0 - a.pow(terms)) / torch.where(safe, 1.0 - a, 1.0), torch.full_like(a, terms))
        return geometric / self.scale

    def inverse_hvp(self, vectors: Tensor) -> Tensor:
        """LiSSA estimate of ``(H + damping * scale * I)^{-1} V`` for ``V`` of shape ``[P, k]`` -> ``[P, k]``
        (with ``solver="arnoldi"``: the estimate's expectation, see the class docstring)."""
        self._check_fitted()
        assert self._train_x is not None
        v = vectors.to(self.objective.device)
        if self.solver == "arnoldi":
            assert self.ritz_values is not None and self._ritz_vectors is not None
            at_zero = self._lissa_filter(torch.zeros(1))
            gains = (self._lissa_filter(self.ritz_values) - at_zero).to(v.dtype)
            return float(at_zero) * v + self._ritz_vectors @ (gains[:, None] * (self._ritz_vectors.T @ v))
        generator = torch.Generator().manual_seed(self.seed)
        n_train = len(self._train_x)
        estimate = torch.zeros_like(v)
        for repeat in range(self.repeats):
            h = v.clone()
            steps = tqdm(range(self.depth), desc=f"LiSSA (repeat {repeat + 1}/{self.repeats})", leave=False)
            for _ in steps:
                index = torch.randint(n_train, (self.batch_size,), generator=generator)
                # The batch's Hessian is the mean over its draws: each distinct example once, weighted by
                # how often it was drawn (exact, and fewer examples when the batch repeats some).
                unique, counts = torch.unique(index, return_counts=True)
                unique = unique.to(self._train_x.device)
                batch_y = None if self._train_y is None else self._train_y[unique]
                hessian_h = self.objective.hvp(
                    self._train_x[unique], h, batch_y, vector_chunk_size=self.vector_chunk_size,
                    weights=counts.double() / self.batch_size, example_chunk_size=self.hvp_chunk_size,
                    split=self._split,
                )
                h = v + (1.0 - self.damping) * h - hessian_h / self.scale
                if not torch.isfinite(h).all():
                    raise RuntimeError(
                        "LiSSA diverged (non-finite estimate): the largest Hessian eigenvalue exceeds what "
                        f"scale={self.scale} allows; increase scale (or damping)"
                    )
            estimate += h / self.scale
        return estimate / self.repeats

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        self._check_fitted()
        assert self._train_grads is not None
        test_y = self._labels(test_y, len(test_x), "test")
        n_test = len(test_x)
        step = n_test if self.test_chunk_size is None else self.test_chunk_size
        scores = torch.zeros(n_test, len(self._train_grads), dtype=self._train_grads.dtype)
        for start in range(0, n_test, max(step, 1)):
            stop = min(start + step, n_test)
            chunk_y = None if test_y is None else test_y[start:stop]
            test_grads = self.objective.per_example_grads(test_x[start:stop], chunk_y, chunk_size=self.chunk_size)
            # rows H^{-1} grad L(x_t); every chunk replays the same sampled batches (the sampler is reseeded)
            inverse_test = self.inverse_hvp(test_grads.T).T
            scores[start:stop] = (inverse_test @ self._train_grads.T).cpu()
            del test_grads, inverse_test
        return scores


# ----------------------------------------------------------------------------------------------
# Representation-based explainers
# ----------------------------------------------------------------------------------------------


class SimplEx(ExampleImportance):
    """SimplEx (Crabbé et al., 2021): each test representation as a convex mix of training ones.

    For test representation ``h_t`` the weights are ``softmax(w_t)`` over the training set, with
    ``w_t`` fitted by Adam to minimise ``|| sum_i softmax(w_t)_i h_i - h_t ||^2``. All test examples
    are fitted at once as one ``[n_test, n_train]`` parameter matrix (the rows' losses are
    independent, so minimising their sum fits each row), starting from ``w = 0`` (uniform weights),
    hence deterministic. Scores = the weights (rows are nonnegative and sum to 1). After
    ``attribute``, :attr:`reconstruction_error` holds each test example's final squared error ``[n_test]``.

    Why ``lr = 1`` with cosine decay: when the representation is low-dimensional (the paper's d = 4
    with 1000 training points) a test point is a convex combination of training points in many
    ways, so which weights come out is decided by the optimiser. A large initial step size drives
    the weights to sparse solutions (a test representation equal to a training one gets almost all
    of the weight; with a constant lr of 0.1 or 0.3 only 10-40% of such points are recovered, the
    rest being spread over many neighbours), and decaying it to 0 lets Adam settle at the minimum
    (a constant lr of 1 leaves the error of out-of-hull test points up to 70% above the optimum;
    with the decay it is within 0.5%).

    Args:
        encoder: maps inputs to representations (any latent shape; flattened).
        steps: Adam steps, >= 1 (paper: 1000).
        lr: initial Adam learning rate, > 0 (default 1.0, see above).
        cosine_decay: decay the learning rate to 0 over ``steps`` with a cosine schedule (default True).
        batch_size: examples per encoder call when computing representations.
    """

    def __init__(
        self,
        encoder: nn.Module,
        steps: int = 1000,
        lr: float = 1.0,
        cosine_decay: bool = True,
        batch_size: int = 1024,
    ) -> None:
        _check_positive_int("steps", steps)
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"SimplEx lr must be a finite number > 0, got {lr!r}")
        _check_positive_int("batch_size", batch_size)
        self.encoder = encoder
        self.steps = steps
        self.lr = lr
        self.cosine_decay = cosine_decay
        self.batch_size = batch_size
        self._train_reps: Tensor | None = None
        self.reconstruction_error: Tensor | None = None

    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> SimplEx:
        if len(train_x) == 0:
            raise ValueError("SimplEx.fit needs at least one training example")
        self._train_reps = _represent(self.encoder, train_x, self.batch_size)
        self._fitted = True
        return self

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        self._check_fitted()
        assert self._train_reps is not None
        train_reps = self._train_reps
        test_reps = _represent(self.encoder, test_x, self.batch_size)
        logits = torch.zeros(len(test_reps), len(train_reps), device=train_reps.device, requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.steps) if self.cosine_decay else None
        with torch.enable_grad():
            for _ in tqdm(range(self.steps), desc="SimplEx", leave=False):
                optimizer.zero_grad(set_to_none=True)
                residual = torch.softmax(logits, dim=1) @ train_reps - test_reps
                residual.pow(2).sum().backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
        with torch.no_grad():
            weights = torch.softmax(logits, dim=1)
            self.reconstruction_error = (weights @ train_reps - test_reps).pow(2).sum(dim=1).cpu()
        logger.info("SimplEx: mean squared reconstruction error %.3g", self.reconstruction_error.mean().item())
        return weights.cpu()


class DKNN(ExampleImportance):
    """Deep k-nearest neighbours without cut-off: ``score(t, i) = 1 / (||h_t - h_i||^2 + eps)``.

    The paper keeps all training points; ``eps`` (> 0) keeps the score finite at zero distance.
    Distances are computed from explicit differences (``torch.cdist`` without the matrix-product
    shortcut), so they are never negative and are exactly 0 for identical representations.

    Args:
        encoder: maps inputs to representations (any latent shape; flattened).
        eps: added to the squared distance, > 0 (default 1e-8).
        batch_size: examples per encoder call when computing representations.
    """

    def __init__(self, encoder: nn.Module, eps: float = 1e-8, batch_size: int = 1024) -> None:
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"DKNN eps must be a finite number > 0, got {eps!r}")
        _check_positive_int("batch_size", batch_size)
        self.encoder = encoder
        self.eps = eps
        self.batch_size = batch_size
        self._train_reps: Tensor | None = None

    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> DKNN:
        self._train_reps = _represent(self.encoder, train_x, self.batch_size)
        self._fitted = True
        return self

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        self._check_fitted()
        assert self._train_reps is not None
        test_reps = _represent(self.encoder, test_x, self.batch_size)
        distances = torch.cdist(test_reps, self._train_reps, compute_mode="donot_use_mm_for_euclid_dist")
        return (1.0 / (distances.pow(2).clamp_min(0.0) + self.eps)).cpu()


class RandomExampleImportance(ExampleImportance):
    """Random baseline: scores uniform in [0, 1), the same for the same ``seed`` and shapes."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._n_train: int | None = None

    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> RandomExampleImportance:
        self._n_train = len(train_x)
        self._fitted = True
        return self

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        self._check_fitted()
        assert self._n_train is not None
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(len(test_x), self._n_train, generator=generator)


EXAMPLE_EXPLAINERS: dict[str, type[ExampleImportance]] = {
    "influence_functions": InfluenceFunctions,
    "tracin": TracIn,
    "simplex": SimplEx,
    "dknn": DKNN,
    "random": RandomExampleImportance,
}

_LOSS_BASED = frozenset({"influence_functions", "tracin"})


def requires_loss(name: str) -> bool:
    """Whether the explainer registered as ``name`` needs an :class:`Objective` (a pretext loss).

    Loss-based explainers take an ``Objective`` as first argument; the representation-based ones take
    an encoder; ``random`` takes only a seed.
    """
    if name not in EXAMPLE_EXPLAINERS:
        raise ValueError(f"Unknown example explainer {name!r}; accepted: {sorted(EXAMPLE_EXPLAINERS)}")
    return name in _LOSS_BASED
