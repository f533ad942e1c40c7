"""Label-free feature importance for inputs beyond one dense tensor: extra forward arguments, layer methods on
embeddings (token ids), and nodes of a graph (node features, edge weights).

* **Extra forward arguments.** :class:`LabelFreeForwardArgs` is :class:`LabelFreeAttribution` with Captum's
  ``additional_forward_args`` passed through to the encoder, both when f(x) is computed and inside g:
  ``g_x(x~) = <f(x~, *args), f(x, *args)>``. Captum expands every *tensor* extra argument along dim 0 like the
  inputs (``n_steps``, ``n_samples``, ...), so a tensor argument must be per example (``[n, ...]``); a constant
  shared by all examples (a graph's ``edge_index``) belongs in the forward module (:class:`NodeRepresentation`)
  or must be passed as a non-tensor.
* **Layer methods.** ``LabelFreeAttribution(LayerIntegratedGradients(encoder, encoder.embedding))`` (or
  :class:`LabelFreeForwardArgs`) explains token ids ``[n, T]`` (long) through their embeddings; attributions are
  shaped like the layer's output ``[n, T, E]`` and :func:`token_attributions` sums them over E. Captum's
  ``LayerIntegratedGradients`` keeps an inner ``IntegratedGradients`` (``.ig``); :class:`LabelFreeForwardArgs`
  redirects its forward function too (the layer method itself only uses the outer one).
* **Nodes of a graph.** A graph encoder maps the whole graph to ``[N, d]``; the representation of node i is
  row i. :class:`NodeRepresentation` turns it into a per-example forward function over copies of the node-feature
  matrix ``[n, N, F]`` with the explained node ids ``[n]`` as an extra argument, so the label-free scalar is per
  explained node, ``g_i(X~) = <f(X, A)_i, f(X~, A)_i>``, and its attribution covers the whole feature matrix
  ``[N, F]`` of that node's explanation. :class:`EdgeRepresentation` does the same over an edge-weight (mask)
  vector ``[n, E]`` with the node features fixed. Graph tensors are buffers, so ``.to(device)`` moves them.

Usage for nodes::

    explainer = LabelFreeForwardArgs(IntegratedGradients(NodeRepresentation(gcn, edge_index)))
    x_batch, nodes = node_inputs(x, [3, 7])                        # [2, N, F], [2]
    b = explainer.attribute(x_batch, additional_forward_args=(nodes,), baselines=0.0)   # [2, N, F]

The cleaner change to :mod:`labelfree.attribution.features` would be to accept ``additional_forward_args`` in
``LabelFreeAttribution.attribute`` / ``attribute_units`` / ``representation`` directly (placed between the
inputs and f(x), exactly as here) and to follow ``.ig`` in the constructor's redirect loop; this module then
reduces to the graph wrappers and :func:`token_attributions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from labelfree.attribution.features import Inputs, LabelFreeAttribution, _as_tuple
from labelfree.modules import OutputSelector, select_output

__all__ = [
    "EdgeRepresentation",
    "LabelFreeForwardArgs",
    "NodeRepresentation",
    "edge_inputs",
    "node_inputs",
    "token_attributions",
]


def _as_args(additional_forward_args: Any) -> tuple[Any, ...]:
    """Captum's convention: ``None`` -> no argument, a tuple -> its items, anything else -> one argument."""
    if additional_forward_args is None:
        return ()
    return additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,)


class LabelFreeForwardArgs(LabelFreeAttribution):
    """:class:`LabelFreeAttribution` for encoders called as ``encoder(*inputs, *additional_forward_args)``.

    Explains ``g_x(x~) = <f(x~, *args), f(x, *args)>``: f(x) is computed with the same extra arguments, and
    Captum hands g ``(*x~, *args, f(x))`` with every tensor argument expanded like the inputs.

    Args:
        method: a Captum attribution (input or layer method) built on the encoder.
        output: as in :class:`LabelFreeAttribution` (which part of a tuple or dict output is the representation).
    """

    def __init__(self, method: Attribution, output: OutputSelector = None) -> None:
        super().__init__(method, output)
        inner = getattr(method, "ig", None)  # LayerIntegratedGradients' inner IntegratedGradients
        if inner is not None and getattr(inner, "forward_func", None) is self.encoder:
            inner.forward_func = self.auxiliary

    def representation(self, inputs: Inputs, additional_forward_args: Any = None) -> Tensor:
        """f(x, *args) under ``torch.no_grad()`` (in eval mode): ``[n, *latent_shape]``."""
        args = _as_args(additional_forward_args)
        with self._eval(), torch.no_grad():
            return select_output(self.encoder(*_as_tuple(inputs), *args), self.output).detach()

    def attribute(  # type: ignore[override]
        self, inputs: Inputs, additional_forward_args: Any = None, **kwargs: Any
    ) -> Inputs:
        """Label-free attributions shaped like ``inputs`` (a layer method: like the layer's output, e.g.
        ``[n, T, E]`` for an embedding). ``additional_forward_args`` reach the encoder after the inputs; tensors
        among them must have the examples' first dimension ``[n, ...]``. ``target`` is reserved."""
        if kwargs.pop("target", None) is not None:
            raise ValueError("`target` cannot be set: label-free attribution explains the scalar g_x")
        args = _as_args(additional_forward_args)
        _as_tuple(inputs)
        with self._eval():
            representation = self.representation(inputs, args)
            return self.method.attribute(inputs, additional_forward_args=(*args, representation), **kwargs)

    def attribute_units(self, inputs: Inputs, units: list[int] | None = None, **kwargs: Any) -> Inputs:
        """Per-unit maps as in :class:`LabelFreeAttribution`; extra forward arguments are not supported here."""
        if kwargs.get("additional_forward_args") is not None:
            raise ValueError("attribute_units does not take additional_forward_args; bind them in the encoder")
        kwargs.pop("additional_forward_args", None)
        return super().attribute_units(inputs, units, **kwargs)


def token_attributions(attributions: Tensor) -> Tensor:
    """Per-token importance from an embedding layer's attributions: ``[n, T, E]`` summed over E -> ``[n, T]``
    (the signed sum, the token's share of g_x(x) - g_x(baseline) for Integrated Gradients)."""
    if attributions.dim() != 3:
        raise ValueError(f"expected embedding attributions [n, T, E], got shape {tuple(attributions.shape)}")
    return attributions.sum(dim=-1)


def _node_ids(nodes: Tensor | Sequence[int] | int, num_nodes: int) -> Tensor:
    """Explained node ids as ``int64 [n]``, checked to lie in ``[0, num_nodes)``."""
    ids = torch.as_tensor(nodes, dtype=torch.int64).reshape(-1)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_nodes):
        raise ValueError(f"node ids must lie in [0, {num_nodes}), got {ids.tolist()}")
    return ids


class _GraphForward(nn.Module):
    """Shared part of the graph wrappers: the encoder, the constant graph tensors (buffers), the row selection."""

    def __init__(self, encoder: nn.Module, output: OutputSelector, constants: dict[str, Tensor | None]) -> None:
        super().__init__()
        self.encoder = encoder
        self.output = output
        for name, value in constants.items():
            if value is not None:
                self.register_buffer(name, value, persistent=False)

    def _rows(self, outputs: list[Tensor], nodes: Tensor) -> Tensor:
        return torch.stack([out[int(node)] for out, node in zip(outputs, nodes.reshape(-1))])

    def _encode(self, *args: Tensor | None) -> Tensor:
        out = select_output(self.encoder(*(a for a in args if a is not None)), self.output)
        if not isinstance(out, Tensor) or out.dim() < 1:
            raise ValueError(f"a graph encoder must return node representations [N, ...], got {type(out).__name__}")
        return out


class NodeRepresentation(_GraphForward):
    """The representation of node ``i`` as a function of the node-feature matrix: ``f_i(X) = encoder(X, edge_index
    [, edge_weight])[i]``, one graph copy per example.

    ``forward(x [b, N, F], nodes int64 [b]) -> [b, *latent_shape]``: row ``nodes[j]`` of
    ``encoder(x[j], edge_index[, edge_weight])``. ``edge_index [2, E]`` and ``edge_weight [E]`` (omitted from the
    call when None) are constants of the graph, stored as buffers. Each copy is encoded separately (clear rather
    than fast: a Cora copy is 2708 x 1433 floats; bound Captum's batch with ``internal_batch_size``).
    """

    def __init__(self, encoder: nn.Module, edge_index: Tensor, edge_weight: Tensor | None = None,
                 output: OutputSelector = None) -> None:
        super().__init__(encoder, output, {"edge_index": edge_index, "edge_weight": edge_weight})

    def forward(self, x: Tensor, nodes: Tensor) -> Tensor:
        if x.dim() < 3 or len(x) != len(nodes.reshape(-1)):
            raise ValueError(f"expected node features [b, N, F] and node ids [b], got {tuple(x.shape)} and "
                             f"{tuple(nodes.shape)} (node_inputs(x, nodes) builds them)")
        weight = getattr(self, "edge_weight", None)
        return self._rows([self._encode(copy, self.edge_index, weight) for copy in x], nodes)


class EdgeRepresentation(_GraphForward):
    """The representation of node ``i`` as a function of the edge weights (an edge mask):
    ``f_i(w) = encoder(x, edge_index, w)[i]`` with the node features ``x [N, F]`` fixed.

    ``forward(edge_weight [b, E], nodes int64 [b]) -> [b, *latent_shape]``. The encoder must take the weights as
    its third argument (weight 1 = the edge present, 0 = removed).
    """

    def __init__(self, encoder: nn.Module, x: Tensor, edge_index: Tensor, output: OutputSelector = None) -> None:
        super().__init__(encoder, output, {"x": x, "edge_index": edge_index})

    def forward(self, edge_weight: Tensor, nodes: Tensor) -> Tensor:
        if edge_weight.dim() != 2 or edge_weight.shape[1] != self.edge_index.shape[1]:
            raise ValueError(f"expected edge weights [b, {self.edge_index.shape[1]}], got {tuple(edge_weight.shape)} "
                             "(edge_inputs(edge_index, nodes) builds them)")
        return self._rows([self._encode(self.x, self.edge_index, w) for w in edge_weight], nodes)


def node_inputs(x: Tensor, nodes: Tensor | Sequence[int] | int) -> tuple[Tensor, Tensor]:
    """Inputs of :class:`NodeRepresentation`: one copy of ``x [N, F]`` per explained node, ``[n, N, F]``, and the
    node ids ``int64 [n]`` (pass them as ``additional_forward_args=(nodes,)``)."""
    ids = _node_ids(nodes, len(x))
    return x.unsqueeze(0).repeat(len(ids), *([1] * x.dim())), ids.to(x.device)


def edge_inputs(edge_index: Tensor, nodes: Tensor | Sequence[int] | int, num_nodes: int,
                edge_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Inputs of :class:`EdgeRepresentation`: the edge weights (ones when None) per explained node, ``[n, E]``, and
    the node ids ``int64 [n]``."""
    ids = _node_ids(nodes, num_nodes)
    weight = torch.ones(edge_index.shape[1], device=edge_index.device) if edge_weight is None else edge_weight
    return weight.unsqueeze(0).repeat(len(ids), 1), ids.to(edge_index.device)
