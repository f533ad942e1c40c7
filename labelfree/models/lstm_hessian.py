"""Hessian-vector products of the LSTM autoencoder's loss in its encoder's parameters, written out.

``H v`` for the Hessian in theta (the encoder's parameters) of ``L = sum_b w_b loss_b``, ``loss_b`` the L1
reconstruction error of :class:`~labelfree.models.lstm.LSTMAutoEncoder`, is the directional derivative of the
gradient along v (forward over reverse, Pearlmutter's R-operator). Here it is carried by hand through the four
LSTM layers' recurrences and their BPTT, instead of by autograd differentiating its own backward graph (reverse
over reverse): that graph adds every step's [4H, H] weight-gradient term separately, zero-fills a buffer per
per-step slice, and holds about 25 nodes per step and layer (``docs/NOTEBOOK.md`` has the profile); here each
step of each layer is about six operations and the weight gradients' tangents are contracted once per sequence.
Everything that does not depend on v (each layer's activations, gate factors and BPTT gradients) is computed
once per batch, when :class:`LSTMHessian` is built, and reused by every product (Arnoldi applies one operator
a hundred times).

One layer (:class:`~labelfree.models.lstm.LSTMLayer`), inputs ``u_t``, a dot the tangent along v::

    a_t = W u_t + b + U h_{t-1};  i, f, g, o = sigma(a_i), sigma(a_f), tanh(a_g), sigma(a_o)
    c_t = f c_{t-1} + i g;  h_t = o k_t,  k_t = tanh(c_t)
    forward tangent:  a'_t = W u'_t + W' u_t + b' + U' h_{t-1} + U h'_{t-1}
                      c'_t = f c'_{t-1} + F_i a'_i + F_f a'_f + F_g a'_g,  h'_t = F_o a'_o + o (1 - k^2) c'_t
    BPTT:             dh_t = gh_t + U^T da_{t+1},  dc_t = o (1 - k^2) dh_t + f_{t+1} dc_{t+1},
                      da_t = F_t * (dc_t, dc_t, dc_t, dh_t)
    its tangent:      dh'_t = gh'_t + U^T da'_{t+1} + U'^T da_{t+1},
                      dc'_t = o (1 - k^2) dh'_t + f_{t+1} dc'_{t+1} + Q_t,  da'_t = F_t * (dc'_t, .., dh'_t) + Z_t
    weight gradients: (dW)' = sum_t da'_t u_t^T + da_t u'_t^T,  (dU)' = sum_t da'_t h_{t-1}^T + da_t h'_{t-1}^T

with ``F_t`` the gate factors (``g i(1-i)``, ``c_{t-1} f(1-f)``, ``i(1-g^2)``, ``k o(1-o)``) and ``Q_t``,
``Z_t`` the terms of the tangents of ``o (1 - k^2)``, ``f_{t+1}`` and ``F_t`` (known before the backward loop).
The L1 loss has zero second derivative wherever it is differentiable, as in autograd. Exact: the tests compare
it with autograd's reverse-over-reverse product in float64.

Shapes: time-major ``[T, n, ...]`` inside; ``v`` and ``H v`` are ``[P, k]`` in the encoder's parameter order.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from labelfree.models.recurrence import recurrence_backward, recurrence_forward

if TYPE_CHECKING:
    from labelfree.models.lstm import LSTMAutoEncoder, LSTMLayer

__all__ = ["LSTMHessian"]

#: Tangents of one layer's parameters ``(W_ih', W_hh', b_ih' + b_hh')``, or ``None`` for a layer held fixed.
_Tangents = tuple[Tensor, Tensor, Tensor] | None


@dataclasses.dataclass(frozen=True)
class _LayerPass:
    """What one layer's products need from its forward and BPTT on a batch (time-major; independent of v, so
    computed once): ``inputs`` (``[T, n, I]``, or ``[n, I]`` when the same input enters every step, the decoder's
    first layer), ``hidden`` h_t, ``forget`` f_t and ``dc_from_h`` o_t (1 - k_t^2) ``[T, n, H]``, the gate
    factors ``factors`` F_t ``[T, n, 4H]``, ``gates_grad`` dL/da_t ``[T, n, 4H]`` (``None`` for a layer held
    fixed: only its parameters' gradients would use it) and ``coefficients`` ``[T, n, 8, H]``, which make the
    terms Q_t and Z_t linear in the forward tangents a' and c'
    (:func:`_coefficients`)."""

    layer: LSTMLayer
    inputs: Tensor
    hidden: Tensor
    forget: Tensor
    dc_from_h: Tensor
    factors: Tensor
    gates_grad: Tensor | None
    coefficients: Tensor

    @property
    def repeated(self) -> bool:
        return self.inputs.dim() == 2


def _coefficients(act: Tensor, cells: Tensor, tanh_cells: Tensor, h_grad: Tensor, c_grad: Tensor) -> Tensor:
    """The coefficients ``[T, n, 8, H]`` of the forward tangents in the tangent of BPTT's step (see :func:`_extra_terms`).

    With s the gates' slopes (``i(1-i)``, ``f(1-f)``, ``1-g^2``, ``o(1-o)``), ``dc``, ``dh`` = dL/dc_t, dL/dh_t:
    0: ``dc s_i (1-g^2)``, 1: ``dc g (1-2i) s_i``, 2: ``-2 dc i g (1-g^2)``, 3: ``dc s_f``,
    4: ``dc c_{t-1} (1-2f) s_f`` (0 at t = 0), 5: ``dh s_o (1-k^2)``, 6: ``dh k (1-2o) s_o``, 7: ``-2 dh o k (1-k^2)``.
    """
    in_gate, forget_gate, cell_gate, out_gate = act.chunk(4, dim=2)
    out = act.new_empty(*cells.shape[:2], 8, cells.shape[2])
    s_in, s_forget, s_out = in_gate * (1 - in_gate), forget_gate * (1 - forget_gate), out_gate * (1 - out_gate)
    s_cell = 1 - cell_gate * cell_gate
    s_tanh = 1 - tanh_cells * tanh_cells
    torch.mul(c_grad * s_in, s_cell, out=out[:, :, 0])
    torch.mul(c_grad * cell_gate * (1 - 2 * in_gate), s_in, out=out[:, :, 1])
    torch.mul(c_grad * in_gate * cell_gate, s_cell, out=out[:, :, 2]).mul_(-2)
    torch.mul(c_grad, s_forget, out=out[:, :, 3])
    out[0, :, 4].zero_()
    torch.mul(c_grad[1:] * cells[:-1] * (1 - 2 * forget_gate[1:]), s_forget[1:], out=out[1:, :, 4])
    torch.mul(h_grad * s_out, s_tanh, out=out[:, :, 5])
    torch.mul(h_grad * tanh_cells * (1 - 2 * out_gate), s_out, out=out[:, :, 6])
    torch.mul(h_grad * out_gate * tanh_cells, s_tanh, out=out[:, :, 7]).mul_(-2)
    return out


def _layer_forward(layer: LSTMLayer, inputs: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`recurrence_forward` of ``layer`` on ``inputs`` (``[T, n, I]``, or ``[n, I]`` at each of ``steps``)."""
    bias = layer.bias_ih + layer.bias_hh
    if inputs.dim() == 2:
        projected = torch.nn.functional.linear(inputs, layer.weight_ih, bias)[:, None].expand(-1, steps, -1)
    else:
        projected = torch.nn.functional.linear(inputs.transpose(0, 1), layer.weight_ih, bias)
    return recurrence_forward(projected, layer.weight_hh)


def _layer_pass(layer: LSTMLayer, inputs: Tensor, forward: tuple[Tensor, Tensor, Tensor, Tensor],
                output_grad: Tensor, keep_gates_grad: bool) -> tuple[_LayerPass, Tensor]:
    """BPTT of one layer from the direct gradients ``output_grad [T, n, H]`` of its hidden states: what its
    products need, and ``dL/da`` ``[T, n, 4H]``."""
    act, cells, tanh_cells, hidden = forward
    size = cells.shape[-1]
    h_grad, c_grad = torch.empty_like(cells), torch.empty_like(cells)
    factors = torch.empty_like(act)
    gates_grad = recurrence_backward(act, cells, tanh_cells, layer.weight_hh, output_grad, h_grad, c_grad, factors)
    dc_from_h = torch.mul(tanh_cells, tanh_cells).neg_().add_(1).mul_(act[:, :, 3 * size :])
    coefficients = _coefficients(act, cells, tanh_cells, h_grad, c_grad)
    forget = act[:, :, size : 2 * size].clone()
    kept = _LayerPass(layer, inputs, hidden, forget, dc_from_h, factors, gates_grad if keep_gates_grad else None,
                      coefficients)
    return kept, gates_grad


def _input_grad(layer: LSTMLayer, gates_grad: Tensor, repeated: bool) -> Tensor:
    """``dL/du_t = W_ih^T dL/da_t`` ``[T, n, I]`` (summed over steps, ``[n, I]``, for a repeated input)."""
    if repeated:
        return gates_grad.sum(0) @ layer.weight_ih
    return gates_grad @ layer.weight_ih


def _tangent_forward(p: _LayerPass, d_inputs: Tensor | None, d_params: _Tangents) -> tuple[Tensor, Tensor, Tensor]:
    """The forward tangents ``a'`` ``[T, n, 4H]``, ``c'`` and ``h'`` ``[T, n, H]`` of one layer, from the
    tangent of its inputs (shaped like ``p.inputs``; ``None``: zero) and of its parameters."""
    layer = p.layer
    steps, n, size = p.hidden.shape
    # the part of a'_t that does not go through h'_{t-1}, all steps at once
    if p.repeated:
        constant = p.hidden.new_zeros(n, 4 * size)
        if d_inputs is not None:
            constant += d_inputs @ layer.weight_ih.t()
        if d_params is not None:
            constant += p.inputs @ d_params[0].t() + d_params[2]
        outside = constant.expand(steps, n, 4 * size)
    else:
        outside = p.hidden.new_zeros(steps, n, 4 * size)
        if d_inputs is not None:
            outside += d_inputs @ layer.weight_ih.t()
        if d_params is not None:
            outside += p.inputs @ d_params[0].t() + d_params[2]
    if d_params is not None and steps > 1:
        outside = outside.clone() if p.repeated else outside
        outside[1:] += p.hidden[:-1] @ d_params[1].t()
    d_pre = torch.empty_like(p.factors)
    d_cells, d_hidden = torch.empty_like(p.hidden), torch.empty_like(p.hidden)
    recurrent = layer.weight_hh.t()
    scaled = p.hidden.new_empty(n, 4 * size)
    for step in range(steps):
        if step == 0:
            d_pre[0].copy_(outside[0])
        else:
            torch.addmm(outside[step], d_hidden[step - 1], recurrent, out=d_pre[step])
        torch.mul(p.factors[step], d_pre[step], out=scaled)
        d_in, d_forget, d_cell, d_out = scaled.chunk(4, dim=1)
        torch.add(d_in, d_cell, out=d_cells[step])
        if step > 0:
            d_cells[step].add_(d_forget).addcmul_(p.forget[step], d_cells[step - 1])
        torch.addcmul(d_out, p.dc_from_h[step], d_cells[step], out=d_hidden[step])
    return d_pre, d_cells, d_hidden


def _extra_terms(p: _LayerPass, d_pre: Tensor, d_cells: Tensor) -> tuple[Tensor, Tensor]:
    """``Q [T, n, H]`` and ``Z [T, n, 4H]``: the tangents of BPTT's step through its v-independent factors,
    ``dc_t = o (1 - k^2) dh_t + f_{t+1} dc_{t+1} -> + Q_t`` and ``da_t = F_t * (dc_t, .., dh_t) -> + Z_t``,
    linear in ``a'`` and ``c'`` with :func:`_coefficients`."""
    steps, n, size = d_cells.shape
    k = p.coefficients
    a_in, a_forget, a_cell, a_out = d_pre.chunk(4, dim=2)
    z = torch.empty_like(d_pre)
    z_in, z_forget, z_cell, z_out = z.chunk(4, dim=2)
    torch.mul(k[:, :, 0], a_cell, out=z_in).addcmul_(k[:, :, 1], a_in)
    z_forget[0].zero_()
    torch.mul(k[1:, :, 3], d_cells[:-1], out=z_forget[1:]).addcmul_(k[1:, :, 4], a_forget[1:])
    torch.mul(k[:, :, 0], a_in, out=z_cell).addcmul_(k[:, :, 2], a_cell)
    torch.mul(k[:, :, 5], d_cells, out=z_out).addcmul_(k[:, :, 6], a_out)
    q = torch.mul(k[:, :, 5], a_out).addcmul_(k[:, :, 7], d_cells)
    q[:-1].addcmul_(k[1:, :, 3], a_forget[1:])
    return q, z


def _tangent_backward(
    p: _LayerPass, tangents: tuple[Tensor, Tensor, Tensor], d_inputs: Tensor | None, d_params: _Tangents,
    d_output_grad: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """The tangent of one layer's BPTT: ``(dL/da)'`` ``[T, n, 4H]`` and, for a layer with ``d_params``, the
    tangents of its parameter gradients ``((dW_ih)', (dW_hh)', (db)')``.

    ``tangents``: :func:`_tangent_forward`'s ``(a', c', h')``; ``d_inputs``: the inputs' tangent (``None``:
    zero); ``d_output_grad``: the tangent ``[T, n, H]`` of the direct gradients of the hidden states (``None``:
    zero, as behind the L1 loss).
    """
    layer = p.layer
    steps, n, size = p.hidden.shape
    d_pre, d_cells, d_hidden = tangents
    extra_c, extra_a = _extra_terms(p, d_pre, d_cells)
    # the part of dh'_t that does not go through da'_{t+1}
    outside = extra_c.new_zeros(steps, n, size) if d_output_grad is None else d_output_grad.clone()
    if d_params is not None and steps > 1:
        assert p.gates_grad is not None
        outside[:-1] += p.gates_grad[1:] @ d_params[1]
    d_grad = extra_a  # written in place, step by step: F_t * (dc'_t, dc'_t, dc'_t, dh'_t) + Z_t
    d_dh, d_dc = extra_c.new_empty(n, size), extra_c.new_empty(n, size)
    for step in range(steps - 1, -1, -1):
        if step == steps - 1:
            d_dh.copy_(outside[step])
            torch.addcmul(extra_c[step], d_dh, p.dc_from_h[step], out=d_dc)
        else:
            torch.addmm(outside[step], d_grad[step + 1], layer.weight_hh, out=d_dh)
            d_dc.mul_(p.forget[step + 1]).add_(extra_c[step]).addcmul_(d_dh, p.dc_from_h[step])
        grad, factors = d_grad[step], p.factors[step]
        grad[:, : 3 * size].unflatten(1, (3, size)).addcmul_(factors[:, : 3 * size].unflatten(1, (3, size)),
                                                           d_dc[:, None])
        grad[:, 3 * size :].addcmul_(factors[:, 3 * size :], d_dh)
    if d_params is None:
        return d_grad, None
    gates_grad = p.gates_grad
    assert gates_grad is not None
    flat_grad, flat_d_grad = gates_grad.flatten(0, 1), d_grad.flatten(0, 1)
    if p.repeated:
        d_weight_ih = d_grad.sum(0).t() @ p.inputs
        if d_inputs is not None:
            d_weight_ih += gates_grad.sum(0).t() @ d_inputs
    else:
        d_weight_ih = flat_d_grad.t() @ p.inputs.flatten(0, 1)
        if d_inputs is not None:
            d_weight_ih += flat_grad.t() @ d_inputs.flatten(0, 1)
    d_weight_hh = d_grad[1:].flatten(0, 1).t() @ p.hidden[:-1].flatten(0, 1)
    d_weight_hh += gates_grad[1:].flatten(0, 1).t() @ d_hidden[:-1].flatten(0, 1)
    return d_grad, (d_weight_ih, d_weight_hh, flat_d_grad.sum(0))


def _d_input_grad(p: _LayerPass, d_grad: Tensor, d_params: _Tangents) -> Tensor:
    """The tangent ``(dL/du_t)' = W_ih^T (dL/da_t)' + W_ih'^T dL/da_t`` ``[T, n, I]``."""
    out = d_grad @ p.layer.weight_ih
    if d_params is not None:
        assert p.gates_grad is not None
        out += p.gates_grad @ d_params[0]
    return out


class LSTMHessian:
    """``V -> H V`` for the Hessian in the encoder's parameters of ``sum_b w_b loss_b`` (the model's L1
    reconstruction loss) on a fixed batch, written out (see the module's docstring).

    Built from a batch ``x [n, T, C]`` and weights ``w [n]`` (the mean: ``1/n``); holds each of the four layers'
    activations, gate factors, BPTT gradients and the coefficients of :func:`_coefficients`: 19 H floats per example
    and step for each encoder layer, 15 H for each decoder layer; for the paper's model 26 KB per example and step,
    3.7 GB for 1000 beats of 140 steps. ``matmul(V)`` takes ``[P, k]`` in the encoder's parameter order
    (``model.encoder.named_parameters()``) and returns ``[P, k]``.
    """

    def __init__(self, model: LSTMAutoEncoder, x: Tensor, weights: Tensor) -> None:
        if x.dim() != 3 or weights.shape != (len(x),):
            raise ValueError(f"LSTMHessian needs x [n, T, C] and weights [n], got {tuple(x.shape)} and "
                             f"{tuple(weights.shape)}")
        self.model = model
        encoder, decoder = model.encoder, model.decoder
        self.layers = (encoder.lstm1, encoder.lstm2, decoder.lstm1, decoder.lstm2)
        self.n_params = sum(p.numel() for p in encoder.parameters())
        steps, channels = x.shape[1], x.shape[2]
        with torch.no_grad():
            inputs = x.transpose(0, 1)
            enc1 = _layer_forward(encoder.lstm1, inputs, steps)
            enc2 = _layer_forward(encoder.lstm2, enc1[3], steps)
            z = enc2[3][-1]
            dec1 = _layer_forward(decoder.lstm1, z, decoder.sequence_length)
            dec2 = _layer_forward(decoder.lstm2, dec1[3], decoder.sequence_length)
            reconstruction = decoder.output(dec2[3])  # [T, n, C]
            # d/dx^ of sum_b w_b mean_{t,c} |x^ - x|: the sign, weighted (its own derivative is 0)
            scale = weights.to(x.dtype)[None, :, None] / (steps * channels)
            output_grad = torch.sign(reconstruction - inputs) * scale
            self.dec2, grad = _layer_pass(decoder.lstm2, dec1[3], dec2, output_grad @ decoder.output.weight, False)
            self.dec1, grad = _layer_pass(decoder.lstm1, z, dec1, _input_grad(decoder.lstm2, grad, False), False)
            last = torch.zeros_like(enc2[3])
            last[-1] = _input_grad(decoder.lstm1, grad, True)
            self.enc2, grad = _layer_pass(encoder.lstm2, enc1[3], enc2, last, True)
            self.enc1, _ = _layer_pass(encoder.lstm1, inputs, enc1, _input_grad(encoder.lstm2, grad, False), True)

    def matmul(self, vectors: Tensor) -> Tensor:
        """``H V`` ``[P, k]`` for ``V`` ``[P, k]``, one column at a time."""
        if vectors.ndim != 2 or vectors.shape[0] != self.n_params:
            raise ValueError(f"vectors must have shape [P={self.n_params}, k], got {tuple(vectors.shape)}")
        with torch.no_grad():
            columns = [self._product(vectors[:, j]) for j in range(vectors.shape[1])]
        return torch.stack(columns, dim=1) if columns else vectors.new_zeros(vectors.shape)

    def _tangents(self, v: Tensor) -> tuple[_Tangents, _Tangents]:
        """``v [P]`` as the tangents of the two encoder layers' parameters (the bias tangents summed)."""
        pieces = v.split([p.numel() for p in self.model.encoder.parameters()])
        out = []
        for index, layer in enumerate(self.layers[:2]):
            w_ih, w_hh, b_ih, b_hh = pieces[4 * index : 4 * index + 4]
            out.append((w_ih.view_as(layer.weight_ih), w_hh.view_as(layer.weight_hh), b_ih + b_hh))
        return out[0], out[1]

    def _product(self, v: Tensor) -> Tensor:
        """``H v`` ``[P]`` for one ``v [P]``."""
        d_enc1, d_enc2 = self._tangents(v)
        enc1, enc2, dec1, dec2 = self.enc1, self.enc2, self.dec1, self.dec2
        # forward tangents, layer by layer
        t_enc1 = _tangent_forward(enc1, None, d_enc1)
        t_enc2 = _tangent_forward(enc2, t_enc1[2], d_enc2)
        d_z = t_enc2[2][-1]
        t_dec1 = _tangent_forward(dec1, d_z, None)
        t_dec2 = _tangent_forward(dec2, t_dec1[2], None)
        # backward tangents, from the loss (whose gradient has zero tangent) down to the encoder's first layer
        d_grad, _ = _tangent_backward(dec2, t_dec2, t_dec1[2], None, None)
        d_grad, _ = _tangent_backward(dec1, t_dec1, d_z, None, _d_input_grad(dec2, d_grad, None))
        d_last = torch.zeros_like(enc2.hidden)
        d_last[-1] = d_grad.sum(0) @ dec1.layer.weight_ih
        d_grad, d_params2 = _tangent_backward(enc2, t_enc2, t_enc1[2], d_enc2, d_last)
        _, d_params1 = _tangent_backward(enc1, t_enc1, None, d_enc1, _d_input_grad(enc2, d_grad, d_enc2))
        assert d_params1 is not None and d_params2 is not None
        flat = []
        for d_weight_ih, d_weight_hh, d_bias in (d_params1, d_params2):
            flat += [d_weight_ih.reshape(-1), d_weight_hh.reshape(-1), d_bias, d_bias]  # b_ih and b_hh alike
        return torch.cat(flat)
