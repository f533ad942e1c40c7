"""Masking baselines: what a masked feature is replaced by (Crabbé & van der Schaar, 2022).

The representation-shift metric replaces the most important features of an input by a *baseline*
value (:func:`labelfree.metrics.mask_features`). For CIFAR-10 the paper's baseline is a
Gaussian-blurred copy of each image (kernel 21, sigma 5): a masked pixel keeps the local colour of
its surroundings but loses its detail, so masking does not create the out-of-distribution black
holes a constant baseline would put into a natural image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gaussian_blur", "gaussian_kernel1d"]


def _check_blur_args(kernel_size: int, sigma: float) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be an odd integer >= 1 (so the kernel has a centre pixel), got {kernel_size}"
        )
    if not (float(sigma) > 0.0) or float(sigma) == float("inf"):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def gaussian_kernel1d(
    kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """The normalised 1-D Gaussian kernel ``[kernel_size]``: ``k_i ∝ exp(-t_i^2 / (2 sigma^2))``.

    ``t_i = i - (kernel_size - 1) / 2`` are the offsets from the centre tap; the taps sum to 1, so
    blurring preserves a constant image. (The same taps as torchvision's ``GaussianBlur``.)
    """
    _check_blur_args(kernel_size, sigma)
    half = (kernel_size - 1) / 2.0
    offsets = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / float(sigma)) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def gaussian_blur(images: Tensor, kernel_size: int = 21, sigma: float = 5.0) -> Tensor:
    """A Gaussian-blurred copy of every image: the paper's CIFAR-10 masking baseline.

    Separable: the 1-D kernel of :func:`gaussian_kernel1d` is applied along the rows, then along the
    columns, to every channel on its own (the 2-D kernel is the outer product of the 1-D one). The
    borders are extended by reflection (``a b c | b a``), so no dark frame leaks in.

    Args:
        images: ``[n, C, H, W]`` floating point; ``H`` and ``W`` must exceed ``kernel_size // 2``
            (reflection cannot extend an image by more than its size minus one).
        kernel_size: odd number of taps (the paper: 21).
        sigma: standard deviation of the Gaussian in pixels (the paper: 5).

    Returns:
        ``[n, C, H, W]``, same dtype and device as ``images``; ``images`` is left unchanged.
    """
    _check_blur_args(kernel_size, sigma)
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"gaussian_blur expects images shaped [n, C, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"gaussian_blur expects floating point images, got dtype {images.dtype}")
    n, channels, height, width = images.shape
    pad = kernel_size // 2
    if pad >= height or pad >= width:
        raise ValueError(
            f"gaussian_blur: kernel_size {kernel_size} needs images larger than {pad} pixels on each side "
            f"for reflect padding, got {height}x{width}; use a smaller kernel_size"
        )
    if images.numel() == 0:
        return images.clone()
    kernel = gaussian_kernel1d(kernel_size, sigma, dtype=images.dtype, device=images.device)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    # Depthwise convolutions (one group per channel): first along W, then along H.
    rows = F.conv2d(padded, kernel.view(1, 1, 1, kernel_size).expand(channels, 1, 1, kernel_size), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, kernel_size, 1).expand(channels, 1, kernel_size, 1), groups=channels)
