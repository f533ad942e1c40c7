"""Small facts about ``nn.Module`` objects that every floor needs: where a module lives, running it in eval
mode without leaving it changed, and the record a module leaves of one call for per-example gradients."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union

import torch
from torch import nn

__all__ = ["OutputSelector", "ProbeRecord", "eval_mode", "module_device", "select_output"]


def module_device(module: nn.Module) -> torch.device:
    """Device of the first parameter (or buffer) of ``module``; CPU for a module without tensors."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode and restore the ``training`` flag of every submodule afterwards.

    ``module.train(mode)`` would not do: it sets one flag on all submodules, whereas a model may
    have been left with mixed modes (e.g. a frozen BatchNorm in eval inside a training model).
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


#: What :func:`select_output` accepts as ``output``: a position, a key, or a function of the whole output.
OutputSelector = Union[int, str, Callable[[Any], torch.Tensor], None]


def _describe(output: object) -> str:
    """A short description of a module's output: ``tuple (Tensor[4, 2], Tensor[4, 2])``, ``dict keys ['z', 'mu']``."""
    if isinstance(output, torch.Tensor):
        return f"Tensor{list(output.shape)}"
    if isinstance(output, (tuple, list)):
        parts = ", ".join(_describe(o) for o in output[:6]) + (", ..." if len(output) > 6 else "")
        return f"{type(output).__name__} ({parts})"
    if isinstance(output, Mapping):
        return f"{type(output).__name__} with keys {list(output)[:10]}"
    return type(output).__name__


def select_output(output: object, selector: OutputSelector = None, what: str = "encoder") -> torch.Tensor:
    """The tensor chosen by ``selector`` from what ``what`` returned (a tensor, a tuple, a dict, ...).

    ``selector``: ``None`` (the output must already be a tensor), an ``int`` (position in a tuple or list),
    a ``str`` (key of a dict, or attribute of an object such as a named tuple) or a callable ``output -> Tensor``.
    Raises ``TypeError`` naming the output's structure and the accepted selectors otherwise.
    """
    accepted = ("pass output= an index (output=0), a key (output='z') or a callable mapping the output to a "
                "Tensor[n, ...]")
    if selector is None:
        if isinstance(output, torch.Tensor):
            return output
        raise TypeError(f"the {what} returned {_describe(output)}, not a tensor; {accepted}")
    try:
        if callable(selector):
            chosen = selector(output)
        elif isinstance(selector, str) and not isinstance(output, Mapping):
            chosen = getattr(output, selector)
        else:
            chosen = output[selector]  # type: ignore[index]
    except (IndexError, KeyError, TypeError, AttributeError) as error:
        raise TypeError(f"output={selector!r} cannot select from the {what}'s output {_describe(output)} "
                        f"({error}); {accepted}") from error
    if not isinstance(chosen, torch.Tensor):
        raise TypeError(f"output={selector!r} selected {_describe(chosen)} from the {what}'s output "
                        f"{_describe(output)}, not a tensor; {accepted}")
    return chosen


@dataclasses.dataclass(frozen=True)
class ProbeRecord:
    """One call of a module, recorded for per-example gradients of the module's own parameters.

    A module that supports it (``record_per_example(records)``, e.g. ``labelfree.models.lstm.LSTMLayer``)
    adds ``probe``, a zero tensor ``[n, ...]`` that requires grad, to a pre-activation of its call (``a + 0``:
    the forward's values do not change), and appends this record to ``records``. One batched backward of the
    summed loss to ``probe`` gives ``G = dL/d(pre-activation)`` for every example at once; ``contract(G, into)``
    adds the per-example gradient of each own parameter named in ``into`` (its name inside the module) to
    ``into[name]``, a ``[n, *shape]`` view, valid when example i's loss depends on example i's activations only.
    """

    module: torch.nn.Module
    probe: torch.Tensor
    contract: Callable[[torch.Tensor, dict[str, torch.Tensor]], None]
