"""Label-free importance of the tokens of a text, explained through the encoder's embedding layer.

Token ids are discrete, so gradients are taken with respect to their embeddings ``e(x) [n, T, E]``, and a
token's importance is the signed sum of its embedding's attributions over E
(:func:`labelfree.attribution.inputs.token_attributions`). The explained scalar is the label-free
``g_x(x~) = <f(x), f(x~)>`` (:class:`labelfree.attribution.inputs.LabelFreeForwardArgs`). The baseline is the
text with every token replaced by one baseline token (``[MASK]``, or ``[PAD]``): its embedding at every position.

* ``integrated_gradients``: Captum's ``LayerIntegratedGradients(encoder, embedding)`` on the token ids, from the
  baseline text's embeddings to the text's (so the tokens' importances add up to g_x(x) - g_x(baseline)).
* ``gradient_shap``: Captum's ``GradientShap`` on the embeddings themselves (:class:`EmbeddedText`: the encoder
  with its embedding layer's output replaced by the given embeddings, the ids passed along for the padding
  mask). Not ``LayerGradientShap``: that method draws its random points between the *inputs* and the baselines
  (for ids: fractional token ids, truncated to integers) and only then reads the layer, so on token ids it does
  not interpolate embeddings at all.
* ``random``: i.i.d. uniform importances from a generator seeded once (successive calls continue the stream).

Usage::

    explainer = TokenAttribution("integrated_gradients", model.encoder, "embedding")
    scores = explainer.attribute(ids, baseline_id=MASK_ID, n_steps=50)      # [n, T]
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import GradientShap, LayerIntegratedGradients
from torch import Tensor, nn

from labelfree.attribution.inputs import LabelFreeForwardArgs, token_attributions
from labelfree.guards import check_finite
from labelfree.modules import eval_mode

__all__ = ["TOKEN_METHODS", "EmbeddedText", "TokenAttribution"]

#: The token explainers :class:`TokenAttribution` builds.
TOKEN_METHODS = ("integrated_gradients", "gradient_shap", "random")


class EmbeddedText(nn.Module):
    """The encoder as a function of its token embeddings: ``forward(embeddings [b, T, E], ids [b, T])`` runs
    ``encoder(ids)`` with ``embedding``'s output replaced by ``embeddings`` (a forward hook), so everything else
    the encoder reads from the ids (the padding mask) is unchanged."""

    def __init__(self, encoder: nn.Module, embedding: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.embedding = embedding

    def forward(self, embeddings: Tensor, ids: Tensor) -> Tensor:
        if embeddings.shape[:2] != ids.shape:
            raise ValueError(f"embeddings [b, T, E] and ids [b, T] must agree, got {tuple(embeddings.shape)} and "
                             f"{tuple(ids.shape)}")
        handle = self.embedding.register_forward_hook(lambda module, args, output: embeddings)
        try:
            return self.encoder(ids)
        finally:
            handle.remove()


def _embedding_layer(encoder: nn.Module, embedding: nn.Module | str) -> nn.Module:
    if isinstance(embedding, nn.Module):
        return embedding
    try:
        return encoder.get_submodule(embedding)
    except AttributeError as error:
        children = [name for name, _ in encoder.named_children()]
        raise ValueError(f"the encoder has no submodule {embedding!r} to explain through; children: {children}") from error


class TokenAttribution:
    """Label-free per-token importance ``[n, T]`` of a text encoder (module docstring).

    Args:
        method: one of :data:`TOKEN_METHODS`.
        encoder: token ids ``[n, T]`` -> representations ``[n, ...]``.
        embedding: the embedding layer (or its name in ``encoder``) whose output the attributions explain.
        seed: seeds the random baseline (``method="random"``).
    """

    def __init__(self, method: str, encoder: nn.Module, embedding: nn.Module | str = "embedding", seed: int = 0) -> None:
        if method not in TOKEN_METHODS:
            raise ValueError(f"Unknown token explainer {method!r}; accepted: {list(TOKEN_METHODS)}")
        self.method = method
        self.encoder = encoder
        self.embedding = _embedding_layer(encoder, embedding)
        self.generator = torch.Generator().manual_seed(int(seed))
        if method == "integrated_gradients":
            self.explainer = LabelFreeForwardArgs(LayerIntegratedGradients(encoder, self.embedding))
        elif method == "gradient_shap":
            self.explainer = LabelFreeForwardArgs(GradientShap(EmbeddedText(encoder, self.embedding)))

    def attribute(self, ids: Tensor, baseline_id: int, **kwargs: Any) -> Tensor:
        """Per-token importance ``[n, T]`` of ``ids [n, T]`` against the text of ``baseline_id`` tokens (detached;
        padding gets exactly 0 from the gradient methods). ``kwargs`` go to Captum (``n_steps``, ``n_samples``,
        ``stdevs``, ``internal_batch_size``)."""
        if ids.dim() != 2 or ids.dtype != torch.int64:
            raise ValueError(f"expected token ids int64 [n, T], got {ids.dtype} {tuple(ids.shape)}")
        if self.method == "random":
            return torch.rand(ids.shape, generator=self.generator).to(ids.device)
        baseline = torch.full_like(ids, int(baseline_id))
        if self.method == "integrated_gradients":
            attributions = self.explainer.attribute(ids, baselines=baseline, **kwargs)
        else:
            with eval_mode(self.encoder), torch.no_grad():
                inputs, reference = self.embedding(ids).detach(), self.embedding(baseline).detach()
            attributions = self.explainer.attribute(inputs, additional_forward_args=(ids,), baselines=reference,
                                                    **kwargs)
        return check_finite(f"token attributions by {self.method}", token_attributions(attributions.detach()))
