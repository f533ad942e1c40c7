"""Reading composed configs: plain containers, the scale check, and the device."""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

SCALES = ("paper", "quick", "smoke")

#: Config keys added after runs were committed, each with the value that computes what runs from before the key
#: computed. A run's identity (the model cache key, ``skip_finished``, aggregation's ``config_id``) leaves such a
#: key out while it holds that value, so older runs still match, skip and stack; any other value is a new config.
LATER_DEFAULTS: dict[str, Any] = {"trainer.channels_last": False}


def without_later_defaults(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of a nested config ``tree`` without the :data:`LATER_DEFAULTS` keys that hold their default."""
    out = copy.deepcopy(tree)
    for dotted, default in LATER_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        node: Any = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and type(node[leaf]) is type(default) and node[leaf] == default:
            del node[leaf]
    return out


def same_config(first: str, second: str) -> bool:
    """Whether two resolved YAML configs are the same run config (equal up to :data:`LATER_DEFAULTS`)."""
    if first == second:
        return True
    try:
        a, b = (OmegaConf.to_container(OmegaConf.create(text)) for text in (first, second))
    except Exception:  # noqa: BLE001 - an unreadable config is simply not the same config
        return False
    return isinstance(a, dict) and isinstance(b, dict) and without_later_defaults(a) == without_later_defaults(b)


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
