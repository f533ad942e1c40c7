"""labelfree: label-free explainability for unsupervised models (Crabbe & van der Schaar, ICML 2022).

The main names are importable from the package itself, on first use (``import labelfree`` stays cheap: Captum,
the explainers and the metrics load when one of their names is first read)::

    from labelfree import LabelFreeAttribution, TracIn, Objective, SimplEx, top_feature_mask

* Feature importance: :class:`LabelFreeAttribution` (wraps any Captum method built on an encoder),
  :class:`BatchedAttribution` (a whole tensor, batch by batch).
* Example importance: loss-based :class:`TracIn` and :class:`InfluenceFunctions` (solvers :class:`LiSSA`,
  :class:`Arnoldi`) differentiate an :class:`Objective` (any ``nn.Module`` and a per-example loss);
  representation-based :class:`SimplEx`, :class:`DKNN`; :class:`RandomExampleImportance`;
  :func:`build_example_explainer` builds one by name. TracIn reads :class:`Checkpoint` objects, paths or state dicts.
* Metrics: :func:`top_feature_mask`, :func:`mask_features`, :func:`representation_shift`,
  :func:`similarity_rates`, :func:`similarity_rate_curves` (more in :mod:`labelfree.metrics`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> ``"module:attribute"`` it is read from on first use
_EXPORTS: dict[str, str] = {
    "LabelFreeAttribution": "labelfree.attribution.features:LabelFreeAttribution",
    "BatchedAttribution": "labelfree.attribution.batched:BatchedAttribution",
    "Objective": "labelfree.attribution.examples.objective:Objective",
    "Checkpoint": "labelfree.training:Checkpoint",
    "InfluenceFunctions": "labelfree.attribution.examples.influence:InfluenceFunctions",
    "LiSSA": "labelfree.attribution.examples.influence:LiSSA",
    "Arnoldi": "labelfree.attribution.examples.influence:Arnoldi",
    "Exact": "labelfree.attribution.examples.influence:Exact",
    "TracIn": "labelfree.attribution.examples.tracin:TracIn",
    "SimplEx": "labelfree.attribution.examples.representation:SimplEx",
    "DKNN": "labelfree.attribution.examples.representation:DKNN",
    "RandomExampleImportance": "labelfree.attribution.examples.random:RandomExampleImportance",
    "build_example_explainer": "labelfree.attribution.examples.registry:build_example_explainer",
    "top_feature_mask": "labelfree.metrics.masks:top_feature_mask",
    "mask_features": "labelfree.metrics.masks:mask_features",
    "representation_shift": "labelfree.metrics.shift:representation_shift",
    "similarity_rates": "labelfree.metrics.similarity:similarity_rates",
    "similarity_rate_curves": "labelfree.metrics.similarity:similarity_rate_curves",
    "eval_mode": "labelfree.modules:eval_mode",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from labelfree.attribution.batched import BatchedAttribution
    from labelfree.attribution.examples.influence import Arnoldi, Exact, InfluenceFunctions, LiSSA
    from labelfree.attribution.examples.objective import Objective
    from labelfree.attribution.examples.random import RandomExampleImportance
    from labelfree.attribution.examples.registry import build_example_explainer
    from labelfree.attribution.examples.representation import DKNN, SimplEx
    from labelfree.attribution.examples.tracin import TracIn
    from labelfree.attribution.features import LabelFreeAttribution
    from labelfree.metrics.masks import mask_features, top_feature_mask
    from labelfree.metrics.shift import representation_shift
    from labelfree.metrics.similarity import similarity_rate_curves, similarity_rates
    from labelfree.modules import eval_mode
    from labelfree.training import Checkpoint


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562) and keep the name in the package."""
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'labelfree' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
