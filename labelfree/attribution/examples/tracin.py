"""TracIn (Pruthi et al., 2020), label-free, and the checkpoints it reads.

A checkpoint is anything that gives the model's weights at one point of training, with the learning rate then
in use (default 1.0, the paper's factor): a :class:`~labelfree.training.Checkpoint`, a path to a file saved with
``torch.save`` (a ``state_dict``, or a dict holding one under ``"model"`` or ``"state_dict"``), an in-memory
state dict, an ``nn.Module`` (its weights), a callable ``load(model)`` that loads the weights into the model it is
given (or returns a state dict; any other return value is ignored), or a pair ``(any of these, learning_rate)``.
A state dict of the whole model is loaded strictly; one of the explained submodule only (an encoder-only file) is loaded into that submodule, the
rest of the model keeping its current weights.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from labelfree.attribution.examples.base import LossBasedImportance, check_positive_int
from labelfree.attribution.examples.objective import Objective
from labelfree.training import Checkpoint

logger = logging.getLogger(__name__)

__all__ = ["CheckpointLike", "TracIn", "load_checkpoint"]

#: What :class:`TracIn` accepts as one checkpoint (see the module's docstring).
CheckpointLike = Union[Checkpoint, str, "os.PathLike[str]", Mapping[str, Any], nn.Module, Callable[[nn.Module], Any],
                       tuple[Any, float]]

_ACCEPTED = ("a Checkpoint, a path (str or Path) to a torch.save'd state_dict, an in-memory state dict, an nn.Module, "
             "a callable load(model), or a pair (one of these, learning_rate)")


@dataclasses.dataclass(frozen=True)
class _Source:
    """One checkpoint, normalised: where the weights come from, the learning rate, and a name for messages."""

    source: Any
    learning_rate: float
    name: str


def _normalise(item: CheckpointLike, index: int) -> _Source:
    lr = 1.0
    if isinstance(item, Checkpoint):
        item, lr = item.path, item.learning_rate
    elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Real) and not isinstance(item[1], bool):
        item, lr = item
        if isinstance(item, Checkpoint):
            item = item.path
    lr = float(lr)
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"TracIn checkpoint {index}: the learning rate must be a finite number >= 0, got {lr!r}")
    if isinstance(item, (str, os.PathLike)):
        return _Source(Path(item), lr, str(item))
    if isinstance(item, nn.Module):
        return _Source(item, lr, f"{index} ({type(item).__name__})")
    if isinstance(item, Mapping):
        return _Source(item, lr, f"{index} (state dict)")
    if callable(item):
        return _Source(item, lr, f"{index} ({getattr(item, '__name__', type(item).__name__)})")
    raise TypeError(f"TracIn checkpoint {index} is a {type(item).__name__}; accepted: {_ACCEPTED}")


def _unwrap(state: Any, name: str) -> Mapping[str, Any]:
    """The state dict inside what was saved: ``state`` itself, or its ``"model"`` / ``"state_dict"`` entry."""
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}}
        if isinstance(state, Mapping):
            inner = next((state[k] for k in ("model", "state_dict", "model_state_dict") if k in state), None)
            if isinstance(inner, (Mapping, nn.Module)):
                state = inner
        if isinstance(state, nn.Module):
            state = state.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"TracIn checkpoint {name} holds a {type(state).__name__}, not a state dict; save "
                        "model.state_dict(), or a dict holding it under 'model' or 'state_dict'")
    return state


def _keys_message(got: set[str], expected: set[str]) -> str:
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    return f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}, " \
           f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"


def load_checkpoint(
    model: nn.Module, state: Mapping[str, Tensor], wrt: str | tuple[str, ...] = "", name: str = ""
) -> bool:
    """Load ``state`` into ``model``: the whole model's state dict, or (``wrt`` a submodule name) the state dict of
    ``model.get_submodule(wrt)``, with or without the ``"<wrt>."`` prefix. Strict key matching; a ``ValueError``
    names the missing and unexpected keys otherwise. Returns whether the whole model was loaded."""
    keys = set(state)
    full = set(model.state_dict())
    if keys == full:
        model.load_state_dict(state)
        return True
    if isinstance(wrt, str) and wrt:
        submodule = model.get_submodule(wrt)
        own = set(submodule.state_dict())
        prefix = wrt + "."
        if keys == own:
            submodule.load_state_dict(state)
            return False
        if keys == {prefix + k for k in own}:
            submodule.load_state_dict({k[len(prefix):]: v for k, v in state.items()})
            return False
        raise ValueError(f"TracIn checkpoint {name}: its state dict matches neither the whole model "
                         f"({_keys_message(keys, full)}) nor the explained submodule {wrt!r} "
                         f"({_keys_message(keys, own)})")
    raise ValueError(f"TracIn checkpoint {name}: its state dict does not match the model ({_keys_message(keys, full)})")


class TracIn(LossBasedImportance):
    """TracIn (Pruthi et al., 2020), label-free: ``score(t, i) = sum_c lr_c grad L_c(x_t) . grad L_c(x_i)``.

    ``L_c`` is the objective at the weights of checkpoint ``c``; gradients are w.r.t. ``objective.wrt``
    (the encoder). The paper saves a checkpoint every 10 epochs with learning-rate factor 1.
    Checkpoints are loaded into a deep copy of the model, never into the model itself. ``fit`` keeps
    the training examples; ``attribute`` computes, per checkpoint, the test gradients once and the
    training gradients chunk by chunk, so no ``[n_train, P]`` matrix is ever held.

    Args:
        objective: what is differentiated (any ``nn.Module`` with a per-example loss, :class:`Objective`).
        checkpoints: the saved checkpoints (at least one), each a :data:`CheckpointLike` (see the module's
            docstring: ``Checkpoint``, path, state dict, module, ``load(model)`` callable, or ``(any, lr)``);
            the learning rate is 1.0 unless given.
        chunk_size: examples per ``vmap`` call when computing per-example gradients (default 256).
    """

    columns_independent = True  # score(t, i) reads training example i only

    def __init__(self, objective: Objective, checkpoints: Sequence[CheckpointLike], chunk_size: int = 256) -> None:
        if isinstance(checkpoints, (str, os.PathLike, Mapping, Checkpoint)):
            checkpoints = [checkpoints]  # one checkpoint given alone
        checkpoints = list(checkpoints)
        if not checkpoints:
            raise ValueError(f"TracIn needs at least one checkpoint ({_ACCEPTED}); got an empty list")
        self._sources = [_normalise(item, i) for i, item in enumerate(checkpoints)]
        check_positive_int("chunk_size", chunk_size)
        self.objective = objective
        self.checkpoints = checkpoints
        self.chunk_size = chunk_size
        self._train_x: Tensor | None = None
        self._train_y: Tensor | None = None

    @property
    def learning_rates(self) -> list[float]:
        """The learning-rate factor of every checkpoint, in order."""
        return [source.learning_rate for source in self._sources]

    def _load(self, model_copy: nn.Module, source: _Source, device: torch.device) -> None:
        """Put the weights of ``source`` into ``model_copy`` (first reset to the explained model's weights)."""
        model_copy.load_state_dict(self.objective.model.state_dict())  # a partial checkpoint leaves the rest as trained
        state: Any = source.source
        if isinstance(state, Path):
            if not state.is_file():
                raise FileNotFoundError(f"TracIn checkpoint file not found: {state}")
            try:
                state = torch.load(state, map_location=device, weights_only=True)
            except Exception as error:  # noqa: BLE001 (torch raises pickle errors of several types)
                raise TypeError(f"TracIn checkpoint {source.name} cannot be read as weights (torch.load with "
                                f"weights_only=True: {error}); save model.state_dict() rather than the model"
                                ) from error
        elif callable(state) and not isinstance(state, (Mapping, nn.Module)):
            state = state(model_copy)
            if not isinstance(state, (Mapping, nn.Module)):  # loaded in place (e.g. load_state_dict's own result)
                return
        whole = load_checkpoint(model_copy, _unwrap(state, source.name), self.objective.wrt, source.name)
        if not whole:
            logger.info("TracIn checkpoint %s holds the weights of %r only; the rest of the model keeps its current "
                        "weights", source.name, self.objective.wrt)

    def _checkpoint_objectives(self) -> Iterator[tuple[float, Objective]]:
        """Yield ``(lr_c, objective at checkpoint c)`` for every checkpoint, on one copy of the model."""
        model_copy = copy.deepcopy(self.objective.model)
        device = self.objective.device
        for source in tqdm(self._sources, desc="TracIn checkpoints", leave=False):
            self._load(model_copy, source, device)
            yield source.learning_rate, dataclasses.replace(self.objective, model=model_copy)

    def fit(self, train_x: Tensor, train_y: Tensor | None = None) -> TracIn:
        if len(train_x) == 0:
            raise ValueError("TracIn.fit needs at least one training example")
        self._train_y = self._labels(train_y, len(train_x), "train")
        self._train_x = train_x
        self._fitted = True
        return self

    def attribute(self, test_x: Tensor, test_y: Tensor | None = None) -> Tensor:
        """Scores ``[n_test, n_train]``. Per checkpoint: the test-gradient matrix ``[n_test, P]``, then the
        training gradients ``chunk_size`` examples at a time (peak memory ~ ``(n_test + chunk_size) * P`` floats)."""
        self._check_fitted()
        assert self._train_x is not None
        test_y = self._labels(test_y, len(test_x), "test")
        n_train = len(self._train_x)
        dtype = self.objective.dtype
        scores = torch.zeros(len(test_x), n_train, device=self.objective.device, dtype=dtype)
        for lr, objective in self._checkpoint_objectives():
            test_grads = objective.per_example_grads(test_x, test_y, chunk_size=self.chunk_size)
            for start in range(0, n_train, self.chunk_size):
                stop = min(start + self.chunk_size, n_train)
                train_y = None if self._train_y is None else self._train_y[start:stop]
                train_grads = objective.per_example_grads(self._train_x[start:stop], train_y, chunk_size=self.chunk_size)
                scores[:, start:stop].add_(test_grads @ train_grads.T, alpha=lr)
            del test_grads
        return scores.cpu()
