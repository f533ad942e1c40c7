"""The config checked before any data is loaded or model trained.

:func:`check_config` runs first in :func:`experiments.runner.run`: it checks the type and range of every key
in :data:`SCHEMA` that the composed config holds, then builds every explainer the study lists (feature
explainers on a stand-in encoder, example explainers on an untrained copy of the model), so that a wrong name
or setting stops the run in a second, not after hours of training. Each error names the key, the value and
what is accepted.

Why a table instead of Hydra structured configs (dataclasses in the ConfigStore): the experiment overlays and
presets rewrite nodes of several groups at once and each study reads its own protocol keys, so one structured
schema per group would have to know every overlay; a table of the keys that matter, with ranges (which
structured configs do not check), gives the same early errors with less machinery.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.config import container, validate_config
from experiments.explainers import build_example_explainers, explainer_settings
from labelfree.attribution.features import CAPTUM_METHODS, FEATURE_EXPLAINERS
from labelfree.data.splits import BASELINE_TOKENS
from labelfree.data.text import SPECIAL_TOKENS
from labelfree.models.registry import build_model
from labelfree.training import OPTIMIZERS, SCHEDULERS, Checkpoint


class ConfigError(ValueError):
    """A config value that the run would not accept: raised before any data is loaded."""


@dataclass(frozen=True)
class Rule:
    """What a key accepts: ``kind`` (int, float, bool, str, percents), bounds, choices, and whether null is allowed."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False

    def describe(self) -> str:
        text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "percents": "a list of percentages"}[self.kind]
        if self.choices:
            text = f"one of {list(self.choices)}"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        if bounds:
            text += (" in " if self.kind == "percents" else " ") + " and ".join(bounds)
        return text + (", or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind == "percents":
            return isinstance(value, list) and len(value) > 0 and all(self._number_ok(v) for v in value)
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str) and (not self.choices or value in self.choices)
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return False
        return self._number_ok(value)

    def _number_ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


def _int(low: int = 1, nullable: bool = False) -> Rule:
    return Rule("int", low=low, nullable=nullable)


_PERCENTS = Rule("percents", low=0, high=100, low_open=True)
_FRACTION = Rule("float", low=0, high=1, high_open=True)

#: dotted key -> what it accepts; keys a config does not hold are skipped (each study reads its own)
SCHEMA: dict[str, Rule] = {
    "seed": _int(0),
    "progress": Rule("bool"),
    "skip_finished": Rule("bool"),
    "trainer.epochs": _int(),
    "trainer.batch_size": _int(),
    "trainer.lr": Rule("float", low=0, low_open=True),
    "trainer.weight_decay": Rule("float", low=0),
    "trainer.patience": _int(),
    "trainer.checkpoint_every": _int(),
    "trainer.optimizer": Rule("str", choices=OPTIMIZERS),
    "trainer.momentum": _FRACTION,
    "trainer.nesterov": Rule("bool"),
    "trainer.scheduler": Rule("str", choices=SCHEDULERS),
    "trainer.eval_batch_size": _int(),
    "dataset.val_fraction": _FRACTION,
    "dataset.test_fraction": _FRACTION,
    "dataset.train_per_class": _int(nullable=True),
    "dataset.test_per_class": _int(nullable=True),
    "dataset.n_examples": _int(nullable=True),
    # texts (AG News): the tokenizer, the baseline token, the GRU autoencoder, the token figure
    "dataset.vocab_size": _int(len(SPECIAL_TOKENS) + 1),
    "dataset.min_frequency": _int(),
    "dataset.max_length": _int(2),
    "dataset.unescape_entities": Rule("bool"),
    "dataset.baseline_token": Rule("str", choices=tuple(BASELINE_TOKENS)),
    "model.embedding_dim": _int(),
    "model.hidden_size": _int(),
    "model.teacher_forcing": Rule("float", low=0, high=1),
    "protocol.features.embedding": Rule("str"),
    "protocol.figures.highlight_index": _int(0),
    "model.latent_dim": _int(),
    "protocol.features.enabled": Rule("bool"),
    "protocol.features.n_test": _int(nullable=True),
    "protocol.features.percents": _PERCENTS,
    "protocol.features.batch_size": _int(),
    "protocol.examples.enabled": Rule("bool"),
    "protocol.examples.percents": _PERCENTS,
    "protocol.examples.train_per_class": _int(nullable=True),
    "protocol.examples.test_per_class": _int(nullable=True),
    "protocol.examples.shard.index": _int(0),
    "protocol.examples.shard.count": _int(),
    "protocol.percents": _PERCENTS,
    "protocol.n_test": _int(nullable=True),
    "protocol.n_train": _int(nullable=True),
    "protocol.batch_size": _int(),
    "protocol.include_unmasked": Rule("bool"),
    "protocol.retrain.epochs": _int(),
    "protocol.pooled_max_images": _int(nullable=True),
    "protocol.collapse_kl": Rule("float", low=0),
    "protocol.figures.n_images": _int(),
    "protocol.figures.n_top": _int(),
    # graph_consistency (Cora, experiments/studies/graph.py)
    "dataset.val_edge_fraction": _FRACTION,
    "dataset.test_edge_fraction": _FRACTION,
    "model.n_features": _int(),
    "model.hidden_dim": _int(),
    "protocol.features.n_nodes": _int(nullable=True),
    "protocol.examples.n_train": _int(nullable=True),
    "protocol.examples.n_test": _int(nullable=True),
}


def _check_keys(cfg: DictConfig) -> None:
    for key, rule in SCHEMA.items():
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue
        value = container(OmegaConf.select(cfg, key))
        if not rule.accepts(value):
            raise ConfigError(f"{key}={value!r} is not accepted: expected {rule.describe()}")


def _listed(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The feature and example explainers the study runs (names under ``explainers``)."""
    protocol = cfg.protocol
    features, examples = [], []
    for node, names in ((protocol.get("features"), features), (protocol.get("examples"), examples)):
        if node is not None and node.get("enabled", True) and node.get("explainers") is not None:
            names += list(node.explainers)
    if protocol.get("explainers") is not None:
        features += list(protocol.explainers)
    if protocol.get("explainer") is not None:
        features.append(str(protocol.explainer))
    return features, examples


def _check_feature_explainer(cfg: DictConfig, name: str) -> None:
    settings = explainer_settings(cfg, name, "feature")
    method = settings.get("method")
    if method not in FEATURE_EXPLAINERS:
        raise ConfigError(f"explainers.{name}.method={method!r} is not accepted: expected one of {FEATURE_EXPLAINERS}")
    kwargs = dict(settings.get("attribute") or {})
    if method in CAPTUM_METHODS:
        accepted = set(inspect.signature(CAPTUM_METHODS[method].attribute).parameters) - {"self", "inputs"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ConfigError(f"explainers.{name}.attribute has settings {unknown} that {CAPTUM_METHODS[method].__name__}"
                              f".attribute does not take; accepted: {sorted(accepted)}")


def _models(cfg: DictConfig) -> list[DictConfig]:
    """The model configs whose explainers a study builds (pretext: one per task)."""
    models = cfg.protocol.get("models")
    return list(models.values()) if models is not None else [cfg.model]


def _check_shard(cfg: DictConfig, examples: list[str]) -> None:
    """A sharded example check: the index within the count, and only explainers whose columns can be split."""
    shard = OmegaConf.select(cfg, "protocol.examples.shard")
    if shard is None or int(shard.count) == 1:
        return
    if not int(shard.index) < int(shard.count):
        raise ConfigError(f"protocol.examples.shard.index={shard.index} is not accepted: expected an integer in "
                          f"[0, {shard.count}) for shard.count={shard.count}")
    for name in examples:
        if name in cfg.explainers and cfg.explainers[name].get("method") == "simplex":
            raise ConfigError(f"explainers.{name} (simplex) cannot run on a shard of the training set: its weights "
                              "for a test example are one softmax over every training example; run it unsharded "
                              "(protocol.examples.shard.count=1) or leave it out of protocol.examples.explainers")


def check_config(cfg: DictConfig, placeholder: Path | None = None) -> None:
    """Every check that needs no data: scale, keys, and every explainer the study lists built once."""
    validate_config(cfg)
    _check_keys(cfg)
    features, examples = _listed(cfg)
    _check_shard(cfg, examples)
    for name in features:
        _check_feature_explainer(cfg, name)
    if examples:
        checkpoint = Checkpoint(placeholder or Path("not-yet-trained.pt"), 1.0)  # TracIn's are only read in attribute
        for model_cfg in _models(cfg):
            model = build_model(model_cfg)
            for name in examples:
                try:
                    build_example_explainers(cfg, [name], model, [checkpoint])
                except (ValueError, TypeError) as error:
                    raise ConfigError(f"explainers.{name} (model {model_cfg.name!r}): {error}") from error
