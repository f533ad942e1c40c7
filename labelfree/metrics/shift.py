"""Consistency of feature importance, second half: the representation shift ||f(x) - f(x_masked)||^2
(:func:`representation_shift`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from labelfree.modules import eval_mode, module_device

__all__ = ["representation_shift"]


def representation_shift(
    encoder: Callable[[Tensor], Tensor],
    inputs: Tensor,
    masked_inputs: Tensor,
    batch_size: int = 256,
) -> Tensor:
    """Representation shift ||f(x) - f(x_masked)||^2 of every example (higher is better).

    The squared L2 norm is taken over the flattened latent. Computed without gradients, batch by
    batch. If ``encoder`` is an ``nn.Module`` it is put in eval mode for the computation and every
    submodule's train/eval flag is restored afterwards (:func:`labelfree.modules.eval_mode`); batches
    are moved to the device of its parameters (:func:`labelfree.modules.module_device`: else of its
    buffers, else the CPU). A plain callable is called as given (the caller is responsible for its mode).

    Args:
        encoder: f, maps ``[b, *shape]`` to ``[b, *latent_shape]``.
        inputs, masked_inputs: ``[n, *shape]``, same shape.
        batch_size: examples per forward pass.

    Returns:
        ``Tensor[n]`` on the CPU.
    """
    if inputs.shape != masked_inputs.shape:
        raise ValueError(
            f"inputs shape {tuple(inputs.shape)} does not match masked_inputs shape "
            f"{tuple(masked_inputs.shape)}"
        )
    if inputs.dim() < 1:
        raise ValueError("inputs must have a leading example dimension, got a scalar")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    if isinstance(encoder, nn.Module):
        with eval_mode(encoder):
            shifts = _shifts(encoder, inputs, masked_inputs, batch_size, module_device(encoder))
    else:
        shifts = _shifts(encoder, inputs, masked_inputs, batch_size, None)
    if not shifts:
        return torch.zeros(0)
    return torch.cat(shifts)



def _shifts(
    encoder: Callable[[Tensor], Tensor],
    inputs: Tensor,
    masked_inputs: Tensor,
    batch_size: int,
    device: torch.device | None,
) -> list[Tensor]:
    """The shifts of every batch (on the CPU), batches moved to ``device`` unless it is None."""
    shifts = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size]
            x_masked = masked_inputs[start : start + batch_size]
            if device is not None:
                x, x_masked = x.to(device), x_masked.to(device)
            h, h_masked = encoder(x), encoder(x_masked)
            if not isinstance(h, Tensor) or h.shape[:1] != x.shape[:1]:
                raise ValueError(
                    "encoder must return a tensor [batch, *latent_shape]; got "
                    f"{type(h).__name__} {tuple(getattr(h, 'shape', ()))} for a batch of {len(x)}"
                )
            shifts.append((h - h_masked).reshape(len(x), -1).pow(2).sum(dim=1).cpu())
    return shifts
