"""Explainers from the composed config: ``explainers.<name>`` holds each explainer's settings, a study
lists the names it runs. Nested ``_target_`` nodes (an influence-function solver) are built by Hydra's
``instantiate``; the library's registries build the explainers themselves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from captum.attr import Attribution
from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments.config import container
from labelfree.attribution.examples import ExampleImportance, Objective, build_example_explainer, requires_loss
from labelfree.attribution.features import make_feature_explainer
from labelfree.models.base import PretextModel
from labelfree.training import Checkpoint


def explainer_settings(cfg: DictConfig, name: str, kind: str) -> dict[str, Any]:
    """The settings of explainer ``name`` of ``kind`` (feature or example), nested targets instantiated."""
    available = sorted(k for k, v in cfg.explainers.items() if v.kind == kind)
    if name not in cfg.explainers or cfg.explainers[name].kind != kind:
        raise ValueError(f"Unknown {kind} explainer {name!r}; accepted: {available}")
    return dict(instantiate(cfg.explainers[name], _convert_="all"))


def build_feature_explainers(
    cfg: DictConfig, names: Sequence[str], encoder: torch.nn.Module
) -> tuple[dict[str, Attribution], dict[str, dict[str, Any]]]:
    """Label-free feature explainers named in ``names`` and the keyword arguments of their ``attribute``."""
    explainers, kwargs = {}, {}
    for name in names:
        settings = explainer_settings(cfg, name, "feature")
        explainers[name] = make_feature_explainer(settings["method"], encoder, seed=int(cfg.seed))
        kwargs[name] = dict(container(settings.get("attribute")) or {})
    return explainers, kwargs


def build_example_explainers(
    cfg: DictConfig, names: Sequence[str], model: PretextModel, checkpoints: Sequence[Checkpoint]
) -> dict[str, ExampleImportance]:
    """Label-free example explainers named in ``names``; loss-based ones share one objective (the pretext loss)."""
    explainers: dict[str, ExampleImportance] = {}
    objective: Objective | None = None
    for name in names:
        settings = explainer_settings(cfg, name, "example")
        method = settings.pop("method")
        settings.pop("kind")
        if method == "tracin" and not checkpoints:
            raise ValueError(
                "TracIn needs training checkpoints, but none were saved: lower trainer.checkpoint_every "
                f"(now {cfg.trainer.checkpoint_every}) below the number of epochs trained"
            )
        if requires_loss(method) and objective is None:
            objective = Objective(model)  # refuses, with the reason, a model whose loss couples a batch
        explainers[name] = build_example_explainer(
            method, model, checkpoints=checkpoints, seed=int(cfg.seed),
            objective=objective if requires_loss(method) else None, **settings,
        )
    return explainers
