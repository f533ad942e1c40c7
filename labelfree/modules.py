"""Small facts about ``nn.Module`` objects that every floor needs: where a module lives, and running
it in eval mode without leaving it changed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "module_device"]


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
