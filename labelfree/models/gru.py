"""A GRU encoder-decoder autoencoder for texts of token ids (the AG News extension of the paper).

Encoder: an embedding of the token ids, then one GRU layer; the representation f(x) is the GRU's hidden state
after the text's last token (``[PAD]`` steps leave the state unchanged), ``[n, hidden_size]`` (128 for AG News).
Decoder: its own embedding and a GRU started from f(x), reading ``[BOS] x_1 ... x_{T-1}``, and a linear layer to
the vocabulary. The pretext loss is the token-level negative log-likelihood of the text, averaged over its
non-padding tokens, per example ``[n]``:

    L(x) = -(1 / |{t: x_t != [PAD]}|) sum_{t: x_t != [PAD]} log p(x_t | x_<t-input, f(x))

* ``pretext_loss(perturb=True)`` (training): *teacher forcing* with probability ``teacher_forcing`` per text,
  drawn from torch's global generator (seeded by the trainer): a teacher-forced text reads the true previous
  token at every step, the others read the decoder's own greedy prediction of the previous step (argmax, no
  gradient through the choice).
* ``pretext_loss(perturb=False)`` (evaluation, influence functions, TracIn): full teacher forcing, deterministic.

Why the GRU is written out (:class:`GRULayer`) instead of ``nn.GRU``: the loss-based example explainers take
per-example gradients with ``torch.func`` (``vmap(grad(functional_call))``) and Hessian-vector products (double
backward); ``nn.GRU``'s fused kernels have no ``vmap`` batching rule (a slow per-example fallback) and cuDNN's no
double backward. :class:`GRULayer` keeps ``nn.GRU``'s parameter layout and initialisation and computes the same
function (:meth:`GRULayer.from_torch`), as :class:`labelfree.models.lstm.LSTMLayer` does for the LSTM.

The ``[MASK]`` token's embedding in the encoder is the zero vector and is never trained (``padding_idx``): the
token never occurs in a text, so masking a token with it (feature consistency over tokens) sets that position's
embedding to 0, the usual Integrated Gradients baseline for text.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from labelfree.data.text import BOS_ID, MASK_ID, PAD_ID
from labelfree.models.base import PretextModel

__all__ = ["GRUDecoder", "GRULayer", "TextGRUAutoEncoder", "TextGRUEncoder"]


class GRULayer(nn.Module):
    """One unidirectional GRU layer, batch first, unrolled over time with plain tensor ops.

    Same parameters (``weight_ih [3H, I]``, ``weight_hh [3H, H]``, ``bias_ih``, ``bias_hh``; gates stacked in
    the order reset, update, new), initialisation (``U(-1/sqrt(H), 1/sqrt(H))``) and function as
    ``nn.GRU(input_size, hidden_size, batch_first=True)`` with one layer:

        r = sigmoid(W_ir x_t + b_ir + W_hr h + b_hr),   z = sigmoid(W_iz x_t + b_iz + W_hz h + b_hz)
        n = tanh(W_in x_t + b_in + r * (W_hn h + b_hn)),   h_t = (1 - z) * n + z * h_{t-1}

    With a ``mask [n, T]``, a step where it is 0 keeps the previous state (``h_t = h_{t-1}``): padding is skipped,
    so the last state is the state after each text's last token. Unlike ``nn.GRU`` it works under
    ``torch.func.vmap`` / ``grad`` and double backward.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"GRULayer sizes must be >= 1, got input_size={input_size}, hidden_size={hidden_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    @classmethod
    def from_torch(cls, gru: nn.GRU) -> GRULayer:
        """A layer computing the same function as a one-layer, unidirectional ``nn.GRU`` with biases."""
        if gru.num_layers != 1 or gru.bidirectional or not gru.bias:
            raise ValueError("only a one-layer, unidirectional nn.GRU with biases can be copied")
        layer = cls(gru.input_size, gru.hidden_size)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(layer, name).copy_(getattr(gru, f"{name}_l0"))
        return layer.to(device=gru.weight_ih_l0.device, dtype=gru.weight_ih_l0.dtype)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"

    def cell(self, projected: Tensor, h: Tensor) -> Tensor:
        """One step from the input projection ``projected = x_t W_ih^T + b_ih [n, 3H]`` and the state ``h [n, H]``."""
        recurrent = F.linear(h, self.weight_hh, self.bias_hh)
        # ``chunk`` (not slicing): its backward is one concatenation instead of a zero-filled tensor per gate
        x_r, x_z, x_n = projected.chunk(3, dim=-1)
        h_r, h_z, h_n = recurrent.chunk(3, dim=-1)
        reset = torch.sigmoid(x_r + h_r)
        update = torch.sigmoid(x_z + h_z)
        new = torch.tanh(x_n + reset * h_n)
        return new + update * (h - new)

    def forward(self, x: Tensor, h0: Tensor | None = None, mask: Tensor | None = None,
                return_sequence: bool = True) -> Tensor:
        """Run the layer over ``x [n, T, input_size]`` from ``h0 [n, H]`` (zeros when None).

        Args:
            mask: ``[n, T]`` (bool or 0/1): steps where it is 0 keep the previous state; None: every step counts.

        Returns:
            every step's state ``[n, T, H]``, or the last one ``[n, H]`` when ``return_sequence=False``.
        """
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"GRULayer expects inputs [n, T, {self.input_size}], got shape {tuple(x.shape)}")
        if x.shape[1] < 1:
            raise ValueError("GRULayer needs a sequence with at least one time step")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"mask must be [n, T] = {list(x.shape[:2])}, got {tuple(mask.shape)}")
        h = x.new_zeros(x.shape[0], self.hidden_size) if h0 is None else h0
        # the input projection of all steps is one matrix product; ``unbind`` keeps its backward one stack
        projected = F.linear(x, self.weight_ih, self.bias_ih).unbind(1)
        keep = None if mask is None else mask.to(x.dtype).unsqueeze(-1).unbind(1)
        outputs = []
        for step, inputs in enumerate(projected):
            new = self.cell(inputs, h)
            h = new if keep is None else h + keep[step] * (new - h)
            if return_sequence:
                outputs.append(h)
        return torch.stack(outputs, dim=1) if return_sequence else h


def _check_ids(ids: Tensor, vocab_size: int, who: str) -> None:
    if ids.dim() != 2 or ids.dtype != torch.int64:
        raise ValueError(f"{who} expects token ids int64 [n, T], got {ids.dtype} {tuple(ids.shape)}")


class TextGRUEncoder(nn.Module):
    """Token ids ``[n, T]`` -> the GRU's state after each text's last token ``[n, hidden_size]``.

    ``embedding`` (``[vocab_size, embedding_dim]``, the ``[MASK]`` row fixed at 0) is the layer that token
    attributions explain (``LayerIntegratedGradients(encoder, encoder.embedding)``).
    """

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=MASK_ID)
        self.gru = GRULayer(embedding_dim, hidden_size)

    def forward(self, ids: Tensor) -> Tensor:
        _check_ids(ids, self.vocab_size, type(self).__name__)
        return self.gru(self.embedding(ids), mask=ids != PAD_ID, return_sequence=False)


class GRUDecoder(nn.Module):
    """From a representation ``z [n, H]``: a GRU started at ``z`` over the embedded decoder inputs, then
    ``Linear(H -> vocab_size)``: log-probabilities of the next token at every step."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.gru = GRULayer(embedding_dim, hidden_size)
        self.output = nn.Linear(hidden_size, vocab_size)

    @staticmethod
    def shifted(ids: Tensor) -> Tensor:
        """Teacher-forcing inputs ``[BOS] x_1 ... x_{T-1}`` for targets ``ids [n, T]``."""
        return torch.cat([torch.full_like(ids[:, :1], BOS_ID), ids[:, :-1]], dim=1)

    def forward(self, z: Tensor, inputs: Tensor) -> Tensor:
        """Teacher-forced logits ``[n, T, vocab_size]`` for decoder inputs ``[n, T]`` (all steps at once)."""
        return self.output(self.gru(self.embedding(inputs), h0=z))

    def mixed(self, z: Tensor, targets: Tensor, forced: Tensor) -> Tensor:
        """Logits ``[n, T, vocab_size]`` where text i reads the true previous token if ``forced[i]`` and its own
        greedy prediction of the previous step otherwise (step by step)."""
        h, previous, steps = z, torch.full_like(targets[:, 0], BOS_ID), []
        for step in range(targets.shape[1]):
            projected = F.linear(self.embedding(previous), self.gru.weight_ih, self.gru.bias_ih)
            h = self.gru.cell(projected, h)
            logits = self.output(h)
            steps.append(logits)
            previous = torch.where(forced, targets[:, step], logits.detach().argmax(dim=-1))
        return torch.stack(steps, dim=1)


class TextGRUAutoEncoder(PretextModel):
    """GRU encoder-decoder autoencoder of token ids as a :class:`PretextModel` (module docstring).

    Args:
        vocab_size: ids lie in ``[0, vocab_size)`` (the tokenizer's vocabulary, special tokens included).
        embedding_dim: width of both embeddings.
        hidden_size: the GRUs' width; the representation's size (AG News: 128).
        teacher_forcing: probability that a training text is teacher-forced (0.5 in the reproduction).
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 64, hidden_size: int = 128,
                 teacher_forcing: float = 0.5) -> None:
        super().__init__()
        if vocab_size <= MASK_ID:
            raise ValueError(f"vocab_size must exceed the special tokens' ids (> {MASK_ID}), got {vocab_size}")
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing must be a probability in [0, 1], got {teacher_forcing}")
        self.vocab_size = vocab_size
        self.latent_dim = hidden_size
        self.teacher_forcing = float(teacher_forcing)
        self.encoder = TextGRUEncoder(vocab_size, embedding_dim, hidden_size)
        self.decoder = GRUDecoder(vocab_size, embedding_dim, hidden_size)

    def _check_inputs(self, ids: Tensor) -> None:
        _check_ids(ids, self.vocab_size, type(self).__name__)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {int(ids.min())}..{int(ids.max())}")

    def forward(self, ids: Tensor) -> Tensor:
        """Teacher-forced next-token logits ``[n, T, vocab_size]`` of ``ids [n, T]``."""
        return self.decoder(self.encoder(ids), GRUDecoder.shifted(ids))

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        """Mean token negative log-likelihood per text ``[n]`` over its non-padding tokens (module docstring).

        ``perturb=False`` is one dense, shape-static computation (it runs under ``torch.func.vmap`` for per-example
        gradients). ``perturb=True`` (training) computes the same per-text values but only where they count: the
        teacher-forced texts in one parallel pass and the others step by step, and the 10,000-way output layer only
        at non-padding targets (``_forced_nll``, ``_free_running_nll``), which is most of the training time.
        """
        z = self.encoder(x)
        counts = (x != PAD_ID).sum(dim=1).clamp_min(1)
        if not perturb:
            logits = self.decoder(z, GRUDecoder.shifted(x))
            nll = F.cross_entropy(logits.reshape(-1, self.vocab_size), x.reshape(-1), ignore_index=PAD_ID,
                                  reduction="none").reshape(x.shape)  # [n, T]
            return nll.sum(dim=1) / counts
        forced = torch.ones(len(x), dtype=torch.bool, device=x.device)
        if self.teacher_forcing < 1.0:
            forced = torch.rand(len(x), device=x.device) < self.teacher_forcing
        total = z.new_zeros(len(x))
        if bool(forced.any()):
            total = total.index_put((forced,), self._forced_nll(z[forced], x[forced]))
        if not bool(forced.all()):
            free = ~forced
            total = total.index_put((free,), self._free_running_nll(z[free], x[free]))
        return total / counts

    def _forced_nll(self, z: Tensor, x: Tensor) -> Tensor:
        """Summed token NLL per text ``[m]`` under teacher forcing; output layer at non-padding targets only."""
        hidden = self.decoder.gru(self.decoder.embedding(GRUDecoder.shifted(x)), h0=z)  # [m, T, H]
        valid = x != PAD_ID
        nll = F.cross_entropy(self.decoder.output(hidden[valid]), x[valid], reduction="none")
        return hidden.new_zeros(x.shape).index_put((valid,), nll).sum(dim=1)

    def _free_running_nll(self, z: Tensor, x: Tensor) -> Tensor:
        """Summed token NLL per text ``[m]`` when every text reads its own greedy prediction of the previous step
        (as :meth:`GRUDecoder.mixed` with ``forced`` all False). Texts are run longest first so that the texts
        still decoding at step t are a prefix of the batch; a text stops after its last non-padding target (later
        steps would only feed ignored targets)."""
        valid = x != PAD_ID
        steps_needed = torch.where(valid.any(dim=1), valid.shape[1] - valid.flip(1).int().argmax(dim=1), 0)
        order = torch.argsort(steps_needed, descending=True, stable=True)
        h, targets = z[order], x[order]
        # texts still decoding at each step (a prefix of the sorted batch): [T]
        active_at = (steps_needed[order][None, :] > torch.arange(x.shape[1], device=x.device)[:, None]).sum(dim=1)
        previous = torch.full_like(targets[:, 0], BOS_ID)
        decoder, summed = self.decoder, z.new_zeros(len(x))
        for step, active in enumerate(active_at.tolist()):
            if active == 0:
                break
            h, previous = h[:active], previous[:active]
            h = decoder.gru.cell(F.linear(decoder.embedding(previous), decoder.gru.weight_ih, decoder.gru.bias_ih), h)
            logits = decoder.output(h)
            nll = F.cross_entropy(logits, targets[:active, step], ignore_index=PAD_ID, reduction="none")
            summed = summed + F.pad(nll, (0, len(x) - active))
            previous = logits.detach().argmax(dim=-1)
        return summed.new_zeros(len(x)).index_put((order,), summed)
