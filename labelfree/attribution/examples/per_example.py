"""Per-example gradients from one batched backward: the fast path of :meth:`Objective.per_example_grads`.

``vmap(grad(...))`` differentiates every example on its own; through a recurrence unrolled over T steps that
is n small backward passes of T sequential steps each. Here the batch runs forward once with a zero *probe*
added to the pre-activation ``a = W u + b`` of every call of a module owning a differentiated parameter, and
one backward of the summed loss gives ``G = dL/da`` for all examples at once. Because example i's loss depends
on example i's activations only (eval mode, per-example loss), ``G[i]`` is example i's own gradient there, and
each parameter's per-example gradient is a contraction over the call's positions (time steps, tokens)::

    dW[i] = sum_t G_t[i]^T u_t[i],   db[i] = sum_t G_t[i]      (summed over calls when a module is called again)

Supported owners: ``nn.Linear`` (a forward hook adds the probe to its output, any number of leading
positions) and modules implementing ``record_per_example(records)`` (``labelfree.models.lstm.LSTMLayer``, whose
probe sits on the gate pre-activations; see :class:`~labelfree.modules.ProbeRecord`). Anything else (a
convolution, a parameter used outside its module's call, tied weights) is declined before running, and
every call checks its first example against plain autograd on that example alone (a batch of one): a loss that
reads the parameters elsewhere, or couples the examples of a batch, fails the check, and the caller falls back
to ``vmap``. ``wrt`` is honoured exactly: only the selected parameters' owners are probed, and only the
selected parameters of an owner are contracted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call

from labelfree.modules import ProbeRecord

if TYPE_CHECKING:
    from labelfree.attribution.examples.objective import LossFn, Objective

logger = logging.getLogger(__name__)

__all__ = ["ProbesDeclined", "probe_per_example_grads", "probe_plan"]

#: Largest relative difference (Euclidean norm) between the probes' gradient of a call's first example and plain
#: autograd on that example alone. Measured rounding on the paper's ECG LSTM autoencoder: about 1e-6 in float32
#: and 1e-15 in float64 (docs/NOTEBOOK.md); a loss that reads a parameter elsewhere or couples examples: O(1)
#: unless that use is tiny, which the float64 bound still catches down to 1e-9 of the gradient.
_CHECK_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
_CHECK_RTOL_OTHER = 1e-2  # half precisions

#: owner module -> {name of the parameter inside the owner: its name in the model}
ProbePlan = dict[nn.Module, dict[str, str]]


class ProbesDeclined(RuntimeError):
    """The probes cannot give this objective's per-example gradients exactly (the message says why)."""


class _Losses(nn.Module):
    """``forward(x, y)``: the objective's per-example losses ``[n]`` of a batch (``functional_call`` target;
    the model sits under ``model``, as in the ``vmap`` path's wrapper, so both share the parameter names)."""

    def __init__(self, model: nn.Module, loss: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        return self.loss(self.model, x, y)


def _is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` computing ``nn.Linear``'s own forward (a subclass may override it)."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def _records_itself(module: nn.Module) -> bool:
    return callable(getattr(module, "record_per_example", None))


def probe_plan(objective: Objective) -> ProbePlan | str:
    """The owner of every differentiated parameter and its parameters to contract, or why probes cannot do it."""
    selected = objective._named_parameters()  # noqa: SLF001 (same package: the objective's parameter order)
    owners: dict[int, int] = {}
    for module in objective.model.modules():  # a parameter held by two modules (tied weights) is declined
        for parameter in module._parameters.values():  # noqa: SLF001 (own parameters, duplicates kept)
            if parameter is not None:
                owners[id(parameter)] = owners.get(id(parameter), 0) + 1
    plan: ProbePlan = {}
    for name, parameter in selected.items():
        owner_name, _, own = name.rpartition(".")
        owner = objective.model.get_submodule(owner_name)
        if not (_is_linear(owner) or _records_itself(owner)):
            return f"{name!r} belongs to a {type(owner).__name__} (supported: nn.Linear, modules with record_per_example)"
        if owners.get(id(parameter), 0) != 1:
            return f"{name!r} is shared by several modules"
        plan.setdefault(owner, {})[own] = name
    return plan


def _linear_contract(inputs: Tensor, output_grad: Tensor, into: dict[str, Tensor]) -> None:
    """Add the per-example gradients of a Linear call on ``inputs [n, ..., in]`` from ``output_grad [n, ..., out]``
    to ``into`` (``"weight"``: ``[n, out, in]``, ``"bias"``: ``[n, out]`` views)."""
    n = output_grad.shape[0]
    g = output_grad.reshape(n, -1, output_grad.shape[-1])
    if "weight" in into:
        into["weight"].baddbmm_(g.transpose(1, 2), inputs.reshape(n, -1, inputs.shape[-1]))
    if "bias" in into:
        into["bias"].add_(g.sum(1))


def _linear_hook(records: list[ProbeRecord], module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
    probe = output.new_zeros(()).requires_grad_().expand(output.shape)  # no memory; receives dL/d(output)
    records.append(ProbeRecord(module, probe, functools.partial(_linear_contract, args[0].detach())))
    return output + probe


@contextlib.contextmanager
def _recording(model: nn.Module, plan: ProbePlan) -> Iterator[list[ProbeRecord]]:
    """Record every call of the plan's owners into the list yielded; the modules are left as they were.

    The other modules with ``record_per_example`` record too, into a list that is dropped: a recorded call
    has a cheaper backward (the LSTM layers of a decoder that the gradients pass through)."""
    records: list[ProbeRecord] = []
    dropped: list[ProbeRecord] = []
    recording = [m for m in model.modules() if _records_itself(m) and not _is_linear(m)]
    handles = []
    try:
        for module in plan:
            if _is_linear(module):
                handles.append(module.register_forward_hook(functools.partial(_linear_hook, records)))
        for module in recording:
            module.record_per_example(records if module in plan else dropped)
        yield records
    finally:
        for handle in handles:
            handle.remove()
        for module in recording:
            module.record_per_example(None)


def _batched_pass(objective: Objective, plan: ProbePlan, wrapper: _Losses, params: dict[str, Tensor],
                  fixed: dict[str, Tensor], x: Tensor, y: Tensor | None, out: Tensor, total_grad: bool) -> Tensor | None:
    """One recorded forward and backward of ``x [n, ...]``: the per-example gradients go into ``out [n, P]``.

    ``total_grad``: the parameters are leaves too, and autograd's gradient of the summed loss (every use of them,
    probed or not) is returned flattened ``[P]`` (the check's reference), else ``None``."""
    n = len(x)
    leaves = {name: p.detach().requires_grad_() for name, p in params.items()} if total_grad else params
    with torch.enable_grad(), _recording(objective.model, plan) as records:
        losses = functional_call(wrapper, (leaves, fixed), (x, y))
        if not isinstance(losses, Tensor) or losses.shape != (n,):
            raise ProbesDeclined(f"the loss returned {getattr(losses, 'shape', type(losses).__name__)}, not [n] = [{n}]")
        total = losses.sum()
    if not records or any(r.probe.dim() < 2 or r.probe.shape[0] != n for r in records):
        raise ProbesDeclined("a probed call did not see the batch along its first dimension")
    inputs = [r.probe for r in records] + (list(leaves.values()) if total_grad else [])
    grads = torch.autograd.grad(total, inputs, allow_unused=True)
    out.zero_()
    views, offset = {}, 0  # each parameter's columns of out, as [n, *shape]
    for name, tensor in params.items():
        views[name[len("model."):]] = out[:, offset : offset + tensor.numel()].view(n, *tensor.shape)
        offset += tensor.numel()
    for record, gates_grad in zip(records, grads):
        if gates_grad is not None:  # None: the call did not reach the loss
            record.contract(gates_grad, {own: views[name] for own, name in plan[record.module].items()})
    if not total_grad:
        return None
    return torch.cat([torch.zeros_like(p).flatten() if g is None else g.flatten()
                      for p, g in zip(leaves.values(), grads[len(records):])])


def _check_first_example(objective: Objective, plan: ProbePlan, wrapper: _Losses, params: dict[str, Tensor],
                         fixed: dict[str, Tensor], x: Tensor, y: Tensor | None, probed: Tensor) -> None:
    """Autograd's gradient of ``x[:1]``'s loss, computed on that example alone, must equal ``probed`` (the batch's
    row 0): a use of a parameter outside the probed calls, or a loss coupling the examples, would make them differ.
    The single-example pass is itself recorded (a cheaper backward); its parameters are autograd leaves."""
    alone = torch.empty_like(probed)[None]
    reference = _batched_pass(objective, plan, wrapper, params, fixed, x[:1], None if y is None else y[:1],
                              alone, total_grad=True)
    assert reference is not None
    difference = float((probed - reference).norm() / reference.norm().clamp_min(torch.finfo(reference.dtype).tiny))
    tolerance = _CHECK_RTOL.get(reference.dtype, _CHECK_RTOL_OTHER)
    if not difference <= tolerance:
        raise ProbesDeclined(f"the batched gradient of the first example differs from its own gradient by "
                             f"{difference:.1e} (relative; at most {tolerance:.0e} allowed): the loss reads a "
                             "differentiated parameter outside the probed calls, or couples the examples of a batch")


def probe_per_example_grads(objective: Objective, plan: ProbePlan, x: Tensor, y: Tensor | None, out: Tensor,
                            chunk_size: int) -> None:
    """Write the per-example gradients of ``x [n, ...]`` (labels ``y [n]`` or ``None``) into ``out [n, P]``,
    ``chunk_size`` examples per batched backward. Runs in the caller's eval mode; raises
    :class:`ProbesDeclined` (before anything is returned) where the result would not be exact."""
    wrapper = _Losses(objective.model, objective.loss)
    params, fixed = objective._split_state(wrapper)  # noqa: SLF001 (detached; the probes are the only leaves)
    device = objective.device
    for start in range(0, len(x), chunk_size):
        xc = x[start : start + chunk_size].to(device)
        yc = None if y is None else y[start : start + chunk_size].to(device)
        block = out[start : start + len(xc)]
        _batched_pass(objective, plan, wrapper, params, fixed, xc, yc, block, total_grad=False)
        if start == 0:
            _check_first_example(objective, plan, wrapper, params, fixed, xc, yc, block[0])
