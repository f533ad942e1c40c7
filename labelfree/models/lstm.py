"""The paper's LSTM autoencoder for ECG5000 heartbeats (Crabbé & van der Schaar, 2022, "ECG5000").

Encoder LSTM(1->128) then LSTM(128->64); the representation is the last hidden state of the second
LSTM (64-d). The decoder repeats the representation over the 140 time steps and runs it through
LSTM(64->64), LSTM(64->128) and a Linear(128->1) applied at every step. The pretext loss is the L1
reconstruction error, averaged over time steps and channels per example.

Why the LSTM layers are written out here instead of using ``nn.LSTM``: influence functions and TracIn
differentiate the loss per example with ``torch.func`` (``vmap(grad(functional_call(...)))``) and
take Hessian-vector products (reverse over reverse). ``nn.LSTM`` has no ``vmap`` batching rule for
its fused CPU kernel (``aten::mkldnn_rnn_layer``): ``vmap`` falls back to a slow per-example path
(about 50 s for the per-example gradients of 8 beats through the paper's encoder on 2 CPU cores,
against about 0.2 s here); and cuDNN's fused RNN has no double backward on CUDA. :class:`LSTMLayer`
unrolls the recurrence over time with plain matrix products and pointwise ops, which ``vmap``,
``grad`` and double backward all handle, on every device. Per-example gradients need no ``vmap`` at all:
the layer records its calls (:meth:`LSTMLayer.record_per_example`) so that one batched backward gives every
example's gradient (``labelfree.attribution.examples.per_example``).
It keeps ``nn.LSTM``'s parameter layout (``weight_ih [4H, I]``, ``weight_hh [4H, H]``, ``bias_ih``,
``bias_hh``, gates stacked in the order input, forget, cell, output) and initialisation, and computes
the same function (:meth:`LSTMLayer.from_torch` copies an ``nn.LSTM``'s weights). The same layer is
used for training, so the model that is explained is exactly the model that was trained; the price
is speed: on 2 CPU cores a training step of the paper's model at batch 64 takes about 0.4 s, about
1.8x the fused ``nn.LSTM``.

Shapes: sequences are batch first, ``[n, T, C]`` (time steps, channels; ECG5000: ``T = 140``,
``C = 1``); representations ``[n, latent_dim]``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from labelfree.data.ecg5000 import ECG_SHAPE
from labelfree.models.base import PretextModel
from labelfree.models.lstm_hessian import LSTMHessian
from labelfree.models.recurrence import recurrence_backward, recurrence_forward
from labelfree.modules import ProbeRecord

__all__ = [
    "LSTMAutoEncoder",
    "LSTMDecoder",
    "LSTMEncoder",
    "LSTMLayer",
]

#: Defaults: one ECG5000 heartbeat has 140 time steps and 1 channel.
ECG_SEQUENCE_LENGTH, ECG_CHANNELS = ECG_SHAPE


class LSTMLayer(nn.Module):
    """One unidirectional LSTM layer, batch first, unrolled over time with plain tensor ops.

    Same parameters, initialisation (``U(-1/sqrt(H), 1/sqrt(H))``) and function as
    ``nn.LSTM(input_size, hidden_size, batch_first=True)`` with one layer, zero initial state:

        i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),   h_t = sigmoid(o) * tanh(c_t)

    Unlike ``nn.LSTM`` it works under ``torch.func.vmap`` / ``grad`` and double backward.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"LSTMLayer sizes must be >= 1, got input_size={input_size}, hidden_size={hidden_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()
        self._per_example_records: list[ProbeRecord] | None = None

    def record_per_example(self, records: list[ProbeRecord] | None) -> None:
        """Record every later call into ``records`` for per-example gradients (``None``: stop recording).

        A recorded call runs the recurrence as :class:`_RecordedRecurrence` (the same function, with its
        backward written out: about a third of the operations of autograd's), adds a zero probe
        ``[n, T, 4H]`` to the gate pre-activations ``a_t`` and appends a :class:`~labelfree.modules.ProbeRecord`
        whose contraction of ``G_t = dL/da_t`` gives each example's gradients (BPTT, summed over steps)::

            dW_ih[i] = sum_t G_t[i]^T x_t[i],  dW_hh[i] = sum_{t>=1} G_t[i]^T h_{t-1}[i],  db_ih[i] = db_hh[i] = sum_t G_t[i]
        """
        self._per_example_records = records

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    @classmethod
    def from_torch(cls, lstm: nn.LSTM) -> LSTMLayer:
        """A layer computing the same function as a one-layer, unidirectional ``nn.LSTM`` with biases."""
        if lstm.num_layers != 1 or lstm.bidirectional or not lstm.bias or lstm.proj_size:
            raise ValueError("only a one-layer, unidirectional nn.LSTM with biases and no projection can be copied")
        layer = cls(lstm.input_size, lstm.hidden_size)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(layer, name).copy_(getattr(lstm, f"{name}_l0"))
        return layer.to(device=lstm.weight_ih_l0.device, dtype=lstm.weight_ih_l0.dtype)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"

    def forward(self, x: Tensor, return_sequence: bool = True) -> Tensor:
        """Run the layer over ``x [n, T, input_size]``.

        Returns:
            the hidden states of every step ``[n, T, hidden_size]``, or only the last one
            ``[n, hidden_size]`` when ``return_sequence=False``.
        """
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"LSTMLayer expects inputs [n, T, {self.input_size}], got shape {tuple(x.shape)}")
        # The input projection of all steps is one matrix product; ``unbind`` (not indexing) keeps
        # its backward a single stack instead of one full-size zero tensor per step.
        projected = nn.functional.linear(x, self.weight_ih, self.bias_ih + self.bias_hh)
        if getattr(self, "_per_example_records", None) is not None:
            return self._recorded(projected, return_sequence, x)
        return self._recur(projected.unbind(1), return_sequence)

    def forward_repeated(self, z: Tensor, steps: int, return_sequence: bool = True) -> Tensor:
        """Run the layer over the constant sequence ``z [n, input_size]`` repeated ``steps`` times.

        Same result as ``forward(z[:, None].expand(-1, steps, -1))``, with the input projection
        computed once.
        """
        if z.dim() != 2 or z.shape[-1] != self.input_size:
            raise ValueError(f"LSTMLayer expects inputs [n, {self.input_size}], got shape {tuple(z.shape)}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        projected = nn.functional.linear(z, self.weight_ih, self.bias_ih + self.bias_hh)
        if getattr(self, "_per_example_records", None) is not None:
            return self._recorded(projected[:, None].expand(-1, steps, -1), return_sequence, z)
        return self._recur([projected] * steps, return_sequence)

    def _recorded(self, projected: Tensor, return_sequence: bool, inputs: Tensor) -> Tensor:
        """A recorded call (:meth:`record_per_example`) on ``projected [n, T, 4H]`` of ``inputs`` (``[n, T, I]``,
        or ``[n, I]`` repeated at every step)."""
        records = self._per_example_records
        assert records is not None
        # an expanded zero: no memory; its gradient is dL/d(pre-activations) [n, T, 4H]
        probe = projected.new_zeros(()).requires_grad_().expand(projected.shape)
        hidden = _RecordedRecurrence.apply(projected, self.weight_hh, probe)
        contract = functools.partial(self._per_example_contract, inputs.detach(), hidden.detach())
        records.append(ProbeRecord(self, probe, contract))
        return hidden if return_sequence else hidden[:, -1]

    def _recur(self, projected: list[Tensor] | tuple[Tensor, ...], return_sequence: bool) -> Tensor:
        """The recurrence over the per-step input projections ``projected[t] [n, 4H]``."""
        recurrent = self.weight_hh.t()
        outputs = []
        h = c = None
        for step, gates in enumerate(projected):
            if step > 0:  # zero initial state: the first step has no recurrent term
                gates = torch.addmm(gates, h, recurrent)
            # ``chunk`` (not slicing): its backward is one concatenation instead of a zero-filled
            # full-size tensor per gate
            in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=-1)
            candidate = torch.sigmoid(in_gate) * torch.tanh(cell_gate)
            c = candidate if step == 0 else torch.sigmoid(forget_gate) * c + candidate
            h = torch.sigmoid(out_gate) * torch.tanh(c)
            if return_sequence:
                outputs.append(h)
        if h is None:
            raise ValueError("LSTMLayer needs a sequence with at least one time step")
        return torch.stack(outputs, dim=1) if return_sequence else h

    @staticmethod
    def _per_example_contract(inputs: Tensor, hidden: Tensor, gates_grad: Tensor, into: dict[str, Tensor]) -> None:
        """Add the per-example gradients of the parameters named in ``into`` (views ``[n, *shape]``) from
        ``G = gates_grad [n, T, 4H]``, the recorded ``inputs`` (``[n, T, I]``, or ``[n, I]`` at every step) and
        ``hidden`` (``h_0 .. h_{T-1}``): batched matrix products over time, straight into ``into``."""
        if "weight_ih" in into:
            if inputs.dim() == 3:  # sum_t G_t^T x_t
                into["weight_ih"].baddbmm_(gates_grad.transpose(1, 2), inputs)
            else:  # the same input at every step: (sum_t G_t)^T z
                into["weight_ih"].addcmul_(gates_grad.sum(1)[:, :, None], inputs[:, None, :])
        if "weight_hh" in into and hidden.shape[1] > 1:  # one step: the recurrent weights are never used
            into["weight_hh"].baddbmm_(gates_grad[:, 1:].transpose(1, 2), hidden[:, :-1])
        for name in ("bias_ih", "bias_hh"):
            if name in into:
                into[name].add_(gates_grad.sum(1))


class _RecordedRecurrence(torch.autograd.Function):
    """The LSTM recurrence ``[n, T, 4H] pre-activations without the recurrent term, W_hh -> h [n, T, H]``, with
    its backward (BPTT) written out (:func:`recurrence_forward`, :func:`recurrence_backward`). ``probe`` (zeros
    of the pre-activations' shape, usually an expanded scalar) does not enter the value: it receives
    ``dL/d(pre-activations)`` as its gradient, which is what per-example gradients contract. First order only
    (recorded calls serve per-example gradients, never double backward or ``vmap``)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, projected: Tensor, weight_hh: Tensor,  # noqa: D102
                probe: Tensor) -> Tensor:
        act, cells, tanh_cells, hidden = recurrence_forward(projected, weight_hh)
        ctx.save_for_backward(act, cells, tanh_cells, hidden, weight_hh)
        return hidden.transpose(0, 1)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,  # noqa: D102
                 output_grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        act, cells, tanh_cells, hidden, weight_hh = ctx.saved_tensors
        gates_grad = recurrence_backward(act, cells, tanh_cells, weight_hh, output_grad.transpose(0, 1))
        weight_grad = None
        if ctx.needs_input_grad[1]:
            weight_grad = gates_grad[1:].flatten(0, 1).t() @ hidden[:-1].flatten(0, 1)
        gates_grad = gates_grad.transpose(0, 1)
        return (gates_grad if ctx.needs_input_grad[0] else None, weight_grad,
                gates_grad if ctx.needs_input_grad[2] else None)


class LSTMEncoder(nn.Module):
    """LSTM(C->hidden_size) then LSTM(hidden_size->latent_dim); f(x) = the last hidden state of the second.

    Maps ``[n, T, C]`` sequences to ``[n, latent_dim]`` representations (the paper: 128 and 64).
    """

    def __init__(self, n_channels: int = ECG_CHANNELS, hidden_size: int = 128, latent_dim: int = 64) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.latent_dim = latent_dim
        self.lstm1 = LSTMLayer(n_channels, hidden_size)
        self.lstm2 = LSTMLayer(hidden_size, latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.n_channels:
            raise ValueError(
                f"LSTMEncoder expects sequences [n, T, {self.n_channels}] (time steps, channels), "
                f"got shape {tuple(x.shape)}"
            )
        return self.lstm2(self.lstm1(x), return_sequence=False)


class LSTMDecoder(nn.Module):
    """Repeat z over T steps, LSTM(latent_dim->latent_dim), LSTM(latent_dim->hidden_size), Linear(hidden_size->C).

    Maps ``[n, latent_dim]`` to ``[n, T, C]`` (``T = sequence_length`` unless ``steps`` is given).
    """

    def __init__(
        self,
        latent_dim: int = 64,
        hidden_size: int = 128,
        n_channels: int = ECG_CHANNELS,
        sequence_length: int = ECG_SEQUENCE_LENGTH,
    ) -> None:
        super().__init__()
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
        self.sequence_length = sequence_length
        self.lstm1 = LSTMLayer(latent_dim, latent_dim)
        self.lstm2 = LSTMLayer(latent_dim, hidden_size)
        self.output = nn.Linear(hidden_size, n_channels)

    def forward(self, z: Tensor, steps: int | None = None) -> Tensor:
        steps = self.sequence_length if steps is None else steps
        return self.output(self.lstm2(self.lstm1.forward_repeated(z, steps)))


class LSTMAutoEncoder(PretextModel):
    """The paper's ECG5000 LSTM autoencoder as a :class:`PretextModel` (reconstruction pretext).

    ``encoder``: :class:`LSTMEncoder` (``[n, T, C] -> [n, latent_dim]``); ``decoder``:
    :class:`LSTMDecoder`. Per-example loss: ``mean_{t, c} |x^_{t,c} - x_{t,c}|`` (L1), shape ``[n]``.

    Args:
        sequence_length: time steps T of a sequence (ECG5000: 140); the decoder's output length.
        n_channels: channels C per time step (ECG5000: 1).
        hidden_size: the outer LSTMs' width (the paper: 128).
        latent_dim: the representation's size, also the inner LSTMs' width (the paper: 64).
        perturbation: training-time input perturbation (default: identity, plain reconstruction).
    """

    def __init__(
        self,
        sequence_length: int = ECG_SEQUENCE_LENGTH,
        n_channels: int = ECG_CHANNELS,
        hidden_size: int = 128,
        latent_dim: int = 64,
        perturbation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.sequence_length = sequence_length
        self.n_channels = n_channels
        self.latent_dim = latent_dim
        self.encoder = LSTMEncoder(n_channels, hidden_size, latent_dim)
        self.decoder = LSTMDecoder(latent_dim, hidden_size, n_channels, sequence_length)
        self.perturbation = perturbation if perturbation is not None else nn.Identity()

    def _check_inputs(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1:] != (self.sequence_length, self.n_channels):
            raise ValueError(
                f"{type(self).__name__} expects sequences [n, {self.sequence_length}, {self.n_channels}] "
                f"(time steps, channels), got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``[n, T, C]`` of ``x [n, T, C]``."""
        self._check_inputs(x)
        return self.decoder(self.encoder(x))

    def perturb(self, x: Tensor) -> Tensor:
        return self.perturbation(x)

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        inputs = self.perturb(x) if perturb else x
        return (self(inputs) - x).abs().flatten(1).mean(dim=1)

    def written_hessian(self, wrt: str, x: Tensor, weights: Tensor) -> LSTMHessian | None:
        """The Hessian in the encoder's parameters of ``sum_b weights_b * loss_b`` on ``x [n, T, C]`` with its
        second-order product written out (:class:`~labelfree.models.lstm_hessian.LSTMHessian`: the same numbers
        as autograd's reverse-over-reverse product, several times faster), or ``None`` for another ``wrt``.
        :meth:`~labelfree.attribution.examples.Objective.hessian` uses it (see ``written`` there)."""
        if wrt != "encoder":
            return None
        self._check_inputs(x)
        return LSTMHessian(self, x, weights)
