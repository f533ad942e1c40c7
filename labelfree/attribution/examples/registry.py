"""The one registry of example explainers: method name -> class, and how to build one for a model.

Each explainer's constructor names what it needs from the model by its parameters: ``objective`` (a
loss-based explainer: an :class:`Objective` of the model's pretext loss), ``encoder`` (a
representation-based one: ``model.encoder``, and ``output`` to pick its representation), ``checkpoints`` (TracIn)
and ``seed``. Every other parameter is a *setting* (``configs/explainer/<name>.yaml``). Any ``nn.Module`` with an
``encoder`` works: a model without a ``pretext_loss`` gives loss-based explainers its per-example ``loss=``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from labelfree.attribution.examples.base import ExampleImportance, LossBasedImportance
from labelfree.attribution.examples.influence import InfluenceFunctions
from labelfree.attribution.examples.objective import LossFn, Objective
from labelfree.attribution.examples.random import RandomExampleImportance
from labelfree.attribution.examples.representation import DKNN, SimplEx
from labelfree.attribution.examples.tracin import CheckpointLike, TracIn
from labelfree.modules import OutputSelector

__all__ = ["EXAMPLE_EXPLAINERS", "build_example_explainer", "example_settings", "requires_loss"]

EXAMPLE_EXPLAINERS: dict[str, type[ExampleImportance]] = {
    "influence_functions": InfluenceFunctions,
    "tracin": TracIn,
    "simplex": SimplEx,
    "dknn": DKNN,
    "random": RandomExampleImportance,
}

#: Constructor parameters that :func:`build_example_explainer` supplies itself (never settings).
_SUPPLIED = ("objective", "encoder", "checkpoints", "seed", "output")


def _explainer_class(method: str) -> type[ExampleImportance]:
    if method not in EXAMPLE_EXPLAINERS:
        raise ValueError(f"Unknown example explainer {method!r}; accepted: {sorted(EXAMPLE_EXPLAINERS)}")
    return EXAMPLE_EXPLAINERS[method]


def requires_loss(name: str) -> bool:
    """Whether the explainer registered as ``name`` needs an :class:`Objective` (a pretext loss).

    Loss-based explainers take an ``Objective`` as first argument; the representation-based ones take
    an encoder; ``random`` takes only a seed.
    """
    return issubclass(_explainer_class(name), LossBasedImportance)


def example_settings(method: str) -> dict[str, Any]:
    """The settings of the explainer registered as ``method`` and their library defaults (``inspect.Parameter.empty``
    for a setting without one): its constructor's parameters but those :func:`build_example_explainer` supplies."""
    parameters = inspect.signature(_explainer_class(method)).parameters
    return {name: p.default for name, p in parameters.items() if name not in _SUPPLIED}


def build_example_explainer(
    method: str,
    model: nn.Module,
    *,
    checkpoints: Sequence[CheckpointLike] = (),
    seed: int = 0,
    objective: Objective | None = None,
    loss: LossFn | None = None,
    output: OutputSelector = None,
    **settings: Any,
) -> ExampleImportance:
    """The example explainer registered as ``method`` (a key of :data:`EXAMPLE_EXPLAINERS`) for ``model``.

    Args:
        method: ``"influence_functions"``, ``"tracin"``, ``"simplex"``, ``"dknn"`` or ``"random"``.
        model: the trained model (any ``nn.Module``); representation-based explainers use ``model.encoder``.
        checkpoints: TracIn's training checkpoints (at least one; ignored by the other methods): ``Checkpoint``
            objects, paths, state dicts, ... (:data:`~labelfree.attribution.examples.tracin.CheckpointLike`).
        seed: seed of the explainers that draw random numbers (influence functions, random); ignored by the others.
        objective: what loss-based explainers differentiate; ``None``: ``Objective(model)`` (the encoder's
            parameters, the model's pretext loss). Pass one objective to several loss-based explainers to
            share it; ignored by the others.
        loss: the per-example loss ``loss(model, x, y) -> Tensor[n]`` of the default objective, for a model without
            a ``pretext_loss`` (``Objective(model, loss=loss)``); not with ``objective``.
        output: which part of ``model.encoder``'s output is the representation when it returns a tuple or dict
            (index, key or callable; representation-based explainers only).
        settings: the explainer's own settings (:func:`example_settings`), as objects: a nested config node
            such as influence functions' ``solver`` must already be instantiated.

    Raises:
        ValueError: an unknown ``method`` or setting (the message lists the accepted ones), TracIn without
            checkpoints, an ``objective`` of another model, or a model whose loss couples the examples of a
            batch for a loss-based method.
    """
    cls = _explainer_class(method)
    accepted = example_settings(method)
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        supplied = [name for name in unknown if name in _SUPPLIED]
        hint = f"; {supplied} are arguments of build_example_explainer, not settings" if supplied else ""
        raise ValueError(
            f"Unknown setting(s) {unknown} for example explainer {method!r} ({cls.__name__}); "
            f"accepted: {sorted(accepted)}{hint}"
        )
    if objective is not None and loss is not None:
        raise ValueError("give either objective= or loss= to build_example_explainer, not both")
    parameters = inspect.signature(cls).parameters
    arguments: dict[str, Any] = {}
    if "objective" in parameters:
        if objective is None:
            # refuses, with the reason, a model whose loss couples a batch (or without a loss)
            objective = Objective(model) if loss is None else Objective(model, loss=loss)
        elif objective.model is not model:
            raise ValueError(f"the objective given for {method!r} differentiates another model than the one explained")
        arguments["objective"] = objective
    if "encoder" in parameters:
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, nn.Module):
            raise ValueError(f"{cls.__name__} ({method!r}) explains model.encoder, and {type(model).__name__} has no "
                             "encoder submodule; build it directly on your encoder, e.g. SimplEx(my_encoder)")
        arguments["encoder"] = encoder
    if "output" in parameters:
        arguments["output"] = output
    if "checkpoints" in parameters:
        if not checkpoints:
            raise ValueError(
                f"{cls.__name__} ({method!r}) needs the checkpoints saved during training, got none: save "
                "intermediate checkpoints (with the runner: a trainer.checkpoint_every below the number of epochs)"
            )
        arguments["checkpoints"] = checkpoints
    if "seed" in parameters:
        arguments["seed"] = seed
    return cls(**arguments, **settings)
