"""Reading composed configs: plain containers, the scale check, and the device."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

SCALES = ("paper", "quick", "smoke")


def container(node: Any) -> Any:
    """A resolved plain ``dict``/``list`` of a config node (anything else unchanged)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def validate_config(cfg: DictConfig) -> None:
    """Fail early, with one clear message, on a scale an experiment does not define."""
    scale = cfg.scale.name
    if scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}; accepted: {list(SCALES)}")
    experiment = cfg.get("experiment")
    if experiment is not None and cfg.get("scale_preset") != f"{experiment}/{scale}":
        raise ValueError(
            f"experiment={experiment} has no preset for scale={scale} "
            f"(expected configs/preset/{experiment}/{scale}.yaml)"
        )
