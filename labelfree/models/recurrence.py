"""The LSTM recurrence and its backward (BPTT), written out on time-major buffers.

Shared by :class:`~labelfree.models.lstm.LSTMLayer`'s recorded calls (per-example gradients in one batched
backward) and :mod:`labelfree.models.lstm_hessian` (second-order products). Gates are stacked as in ``nn.LSTM``
(input, forget, cell, output); ``a_t`` are the pre-activations, H the hidden size, zero initial state.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gate_factors", "recurrence_backward", "recurrence_forward"]


def recurrence_forward(projected: Tensor, weight_hh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The LSTM recurrence on the pre-activations without the recurrent term, ``projected [n, T, 4H]`` (an
    expanded tensor is fine), zero initial state.

    Returns time-major buffers (each step's slice contiguous): ``act [T, n, 4H]`` (sigmoid(a_i), sigmoid(a_f),
    tanh(a_g), sigmoid(a_o)), ``cells``, ``tanh_cells`` and ``hidden`` ``[T, n, H]`` (c_t, tanh(c_t), h_t).
    """
    n, steps, width = projected.shape
    size = width // 4
    recurrent = weight_hh.t()
    act = projected.new_empty(steps, n, width)
    cells, tanh_cells, hidden = (projected.new_empty(steps, n, size) for _ in range(3))
    # every step writes into these buffers: no allocation in the loop (a fresh [n, 4H] tensor per operation
    # is a page-faulting allocation once it passes malloc's mmap threshold, and costs more than the operation)
    gates, candidate = projected.new_empty(n, width), projected.new_empty(n, size)
    for step in range(steps):
        if step == 0:
            gates.copy_(projected[:, 0])
        else:
            torch.addmm(projected[:, step], hidden[step - 1], recurrent, out=gates)
        a = act[step]
        torch.sigmoid(gates, out=a)
        torch.tanh(gates[:, 2 * size : 3 * size], out=a[:, 2 * size : 3 * size])
        in_gate, forget_gate, cell_gate, out_gate = a.chunk(4, dim=1)
        if step == 0:
            torch.mul(in_gate, cell_gate, out=cells[step])
        else:
            torch.mul(in_gate, cell_gate, out=candidate)
            torch.addcmul(candidate, forget_gate, cells[step - 1], out=cells[step])
        torch.tanh(cells[step], out=tanh_cells[step])
        torch.mul(out_gate, tanh_cells[step], out=hidden[step])
    return act, cells, tanh_cells, hidden


def gate_factors(act: Tensor, cells: Tensor, tanh_cells: Tensor, out: Tensor) -> Tensor:
    """The factors ``F_t [T, n, 4H]`` of each gate's pre-activation in the step's outputs, written into ``out``:
    ``dc_t/da_i = g i (1 - i)``, ``dc_t/da_f = c_{t-1} f (1 - f)``, ``dc_t/da_g = i (1 - g^2)``,
    ``dh_t/da_o = tanh(c_t) o (1 - o)`` (at fixed c_{t-1}). Returns ``o (1 - tanh(c_t)^2) [T, n, H]``
    (``dh_t/dc_t``)."""
    in_gate, forget_gate, cell_gate, out_gate = act.chunk(4, dim=2)
    d_in, d_forget, d_cell, d_out = out.chunk(4, dim=2)
    torch.mul(in_gate, in_gate, out=d_in)
    torch.sub(in_gate, d_in, out=d_in).mul_(cell_gate)  # g i (1 - i)
    d_forget[0].zero_()  # c_{-1} = 0
    torch.mul(forget_gate[1:], forget_gate[1:], out=d_forget[1:])
    torch.sub(forget_gate[1:], d_forget[1:], out=d_forget[1:]).mul_(cells[:-1])  # c_{t-1} f (1 - f)
    torch.mul(cell_gate, cell_gate, out=d_cell).neg_().add_(1).mul_(in_gate)  # i (1 - g^2)
    torch.mul(out_gate, out_gate, out=d_out)
    torch.sub(out_gate, d_out, out=d_out).mul_(tanh_cells)  # tanh(c) o (1 - o)
    return torch.mul(tanh_cells, tanh_cells).neg_().add_(1).mul_(out_gate)  # o (1 - tanh(c)^2)


def recurrence_backward(
    act: Tensor, cells: Tensor, tanh_cells: Tensor, weight_hh: Tensor, output_grad: Tensor,
    h_grads: Tensor | None = None, c_grads: Tensor | None = None, factors: Tensor | None = None,
) -> Tensor:
    """BPTT through :func:`recurrence_forward`'s recurrence: ``dL/da_t [T, n, 4H]`` (time-major) from the
    direct gradients ``output_grad [T, n, H]`` of the hidden states (a time-major view is fine).

    Per step 6 operations instead of autograd's ~25 nodes. Optionally also writes every step's total
    ``dL/dh_t`` and ``dL/dc_t`` into ``h_grads`` and ``c_grads`` ``[T, n, H]``, and the gate factors ``F_t``
    (:func:`gate_factors`) into ``factors`` ``[T, n, 4H]`` (what second-order products reuse).
    """
    steps, n, size = cells.shape
    forget_gate = act[:, :, size : 2 * size]
    # The factors, all steps at once, written straight into the gradient (each step then scales its slice in
    # place): no temporary as large as the sequence, whose first touch costs page faults.
    gates_grad = act.new_empty(steps, n, 4 * size)
    dc_from_h = gate_factors(act, cells, tanh_cells, gates_grad)
    if factors is not None:
        factors.copy_(gates_grad)
    # buffers reused by every step (see forward): dL/dh_t, dL/dc_t, and what flows to step t - 1
    dh_buffer, dc_buffer, dh_back, dc_back = (act.new_zeros(n, size) for _ in range(4))
    for step in range(steps - 1, -1, -1):
        dh = dh_buffer if h_grads is None else h_grads[step]
        dc = dc_buffer if c_grads is None else c_grads[step]
        torch.add(output_grad[step], dh_back, out=dh)
        torch.addcmul(dc_back, dh, dc_from_h[step], out=dc)
        grad = gates_grad[step]
        grad[:, : 3 * size].unflatten(1, (3, size)).mul_(dc[:, None])
        grad[:, 3 * size :].mul_(dh)
        if step > 0:
            torch.mul(dc, forget_gate[step], out=dc_back)
            torch.mm(grad, weight_hh, out=dh_back)
    return gates_grad
