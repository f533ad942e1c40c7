"""SimCLR's data augmentations as one batched, vectorised module (Crabbé & van der Schaar, 2022, CIFAR-10).

Every image of a batch gets its own random parameters, drawn at once from the global torch RNG on
the batch's device (seed it, e.g. through the trainer, and the same seed gives the same views); no
Python loop runs over images. The pipeline of SimCLR (Chen et al., 2020) for CIFAR-10:

1. random resized crop (area fraction ``crop_scale``, aspect ratio ``crop_ratio``) resized to
   ``size`` x ``size``, and
2. a horizontal flip with probability ``flip_p``; both are one affine resampling per image
   (``affine_grid`` + bilinear ``grid_sample``);
3. colour jitter with probability ``jitter_p``: brightness, contrast, saturation and hue, applied in
   a random order drawn per image (as torchvision's ``ColorJitter`` does per call);
4. random grayscale with probability ``grayscale_p``.

Differences from the torchvision per-image pipeline, all deliberate: crop boxes are continuous
(sub-pixel) rather than rounded to whole pixels; the crop is resampled bilinearly without
antialiasing (on 32x32 CIFAR images the crop is never larger than the output, so nothing is
downsampled); the hue shift is exact, not an approximation (the HSV rotation written directly in
RGB, vectorised; it matches torchvision's ``adjust_hue`` to float rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SimCLRAugment", "adjust_hue", "rgb_to_grayscale"]

#: ITU-R 601 luma weights (torchvision's ``rgb_to_grayscale`` rounds the first to 0.2989).
_LUMA = (0.299, 0.587, 0.114)


def rgb_to_grayscale(images: Tensor) -> Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` of ``[n, 3, H, W]`` images, shape ``[n, 1, H, W]``."""
    r, g, b = images.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of each ``[n, 3, H, W]`` RGB image in [0, 1] by ``shift[i]`` turns (``shift``: ``[n]``).

    Exact, in HSV terms without materialising HSV: with ``v = max(R, G, B)``, ``delta = v - min``
    and the hue in sixths of a turn ``h6`` (by the largest channel: ``(G - B) / delta``,
    ``2 + (B - R) / delta`` or ``4 + (R - G) / delta``), the shifted image has channels
    ``v - delta * clamp(min(k, 4 - k), 0, 1)`` with ``k = (m + h6 + 6 shift) mod 6`` and
    ``m = 5, 3, 1`` for R, G, B. Saturation and value are kept; greys (``delta = 0``) are unchanged.
    """
    r, g, b = images.unbind(dim=1)
    maxc = images.amax(dim=1)
    delta = maxc - images.amin(dim=1)
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    h6 = torch.where(
        maxc == r, (g - b) / safe_delta, torch.where(maxc == g, 2.0 + (b - r) / safe_delta, 4.0 + (r - g) / safe_delta)
    )
    h6 = h6 + 6.0 * shift.view(-1, 1, 1)
    offsets = torch.tensor((5.0, 3.0, 1.0), dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    k = (offsets + h6.unsqueeze(1)) % 6.0
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(1) - delta.unsqueeze(1) * ramp


def _uniform(n: int, low: float, high: float, like: Tensor) -> Tensor:
    return low + (high - low) * torch.rand(n, dtype=like.dtype, device=like.device)


def _check_range(name: str, pair: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    a, b = (float(v) for v in pair)
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must be a pair (a, b) with {low} <= a <= b <= {high}, got {tuple(pair)}")
    return a, b


def _check_probability(name: str, p: float) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


class SimCLRAugment(nn.Module):
    """Draws one random SimCLR view of every image of a batch: ``[n, 3, H, W] -> [n, 3, size, size]``.

    Args:
        size: output side length (32 for CIFAR-10).
        crop_scale: range of the crop's area as a fraction of the image's (SimCLR: (0.08, 1)).
        crop_ratio: range of the crop's aspect ratio width/height, sampled log-uniformly
            (SimCLR: (3/4, 4/3)).
        flip_p: probability of a horizontal flip.
        jitter_p: probability of applying colour jitter to an image (SimCLR: 0.8).
        brightness, contrast, saturation: jitter strengths s; each factor is drawn from
            U(max(0, 1 - s), 1 + s) (SimCLR with strength 0.5: 0.4 each).
        hue: the hue shift is drawn from U(-hue, hue), in fractions of a turn, ``0 <= hue <= 0.5``
            (SimCLR: 0.1).
        grayscale_p: probability of converting an image to grayscale (SimCLR: 0.2).
        crop_attempts: candidate boxes drawn per image; the first that fits in the image is used,
            and if none fits, the whole image clipped to ``crop_ratio`` (torchvision's rule: 10).

    Inputs must be RGB in [0, 1]; outputs are in [0, 1]. The input is not modified.
    """

    def __init__(
        self,
        size: int = 32,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
        crop_attempts: int = 10,
    ) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an integer >= 1, got {size!r}")
        if isinstance(crop_attempts, bool) or not isinstance(crop_attempts, int) or crop_attempts < 1:
            raise ValueError(f"crop_attempts must be an integer >= 1, got {crop_attempts!r}")
        self.size = size
        self.crop_scale = _check_range("crop_scale", crop_scale, 0.0, 1.0)
        if self.crop_scale[0] <= 0:
            raise ValueError(f"crop_scale must be > 0, got {tuple(crop_scale)}")
        self.crop_ratio = _check_range("crop_ratio", crop_ratio, 1e-6, math.inf)
        self.flip_p = _check_probability("flip_p", flip_p)
        self.jitter_p = _check_probability("jitter_p", jitter_p)
        self.grayscale_p = _check_probability("grayscale_p", grayscale_p)
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not float(value) >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not 0.0 <= float(hue) <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue!r}")
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        self.hue = float(hue)
        self.crop_attempts = crop_attempts

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, crop_scale={self.crop_scale}, crop_ratio={self.crop_ratio}, flip_p={self.flip_p}, "
            f"jitter_p={self.jitter_p}, brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue}, grayscale_p={self.grayscale_p}"
        )

    # -- geometry ------------------------------------------------------------------------------

    def _crop_boxes(self, n: int, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Half-sizes and centres ``(w, h, cx, cy)``, ``[n]`` each, in ``affine_grid`` units (image = [-1, 1])."""
        attempts = self.crop_attempts
        area = self.crop_scale[0] + (self.crop_scale[1] - self.crop_scale[0]) * torch.rand(
            attempts, n, dtype=like.dtype, device=like.device
        )
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(attempts, n, dtype=like.dtype, device=like.device))
        # Box sides as fractions of the image's: area fraction a and aspect w/h = r in pixels.
        w = torch.sqrt(area * ratio * height / width)
        h = torch.sqrt(area / ratio * width / height)
        fits = (w <= 1.0) & (h <= 1.0)
        first = fits.to(torch.uint8).argmax(dim=0)  # index of the first fitting attempt (0 if none)
        w = w.gather(0, first[None])[0]
        h = h.gather(0, first[None])[0]
        any_fit = fits.any(dim=0)
        # Fallback (no attempt fits): the whole image, clipped to the allowed aspect ratios, centred.
        in_ratio = width / height
        if in_ratio < self.crop_ratio[0]:
            fallback_w, fallback_h = 1.0, in_ratio / self.crop_ratio[0]
        elif in_ratio > self.crop_ratio[1]:
            fallback_w, fallback_h = self.crop_ratio[1] / in_ratio, 1.0
        else:
            fallback_w, fallback_h = 1.0, 1.0
        w = torch.where(any_fit, w, torch.full_like(w, fallback_w))
        h = torch.where(any_fit, h, torch.full_like(h, fallback_h))
        # Centres uniform over the positions that keep the box inside the image.
        cx = (2.0 * torch.rand(n, dtype=like.dtype, device=like.device) - 1.0) * (1.0 - w) * any_fit
        cy = (2.0 * torch.rand(n, dtype=like.dtype, device=like.device) - 1.0) * (1.0 - h) * any_fit
        return w, h, cx, cy

    def crop_and_flip(self, images: Tensor) -> Tensor:
        """Random resized crop + horizontal flip, one bilinear resampling: ``[n, C, size, size]``."""
        n, channels, height, width = images.shape
        w, h, cx, cy = self._crop_boxes(n, height, width, images)
        flip = torch.where(
            torch.rand(n, dtype=images.dtype, device=images.device) < self.flip_p,
            -torch.ones_like(w),
            torch.ones_like(w),
        )
        zeros = torch.zeros_like(w)
        # Output coordinate u in [-1, 1] samples the input at centre + half-size * u (mirrored if flipped).
        theta = torch.stack(
            (torch.stack((w * flip, zeros, cx), dim=1), torch.stack((zeros, h, cy), dim=1)), dim=1
        )
        grid = F.affine_grid(theta, [n, channels, self.size, self.size], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # -- colour --------------------------------------------------------------------------------

    def colour_jitter(self, images: Tensor) -> Tensor:
        """Brightness, contrast, saturation, hue in a random order per image, each image with
        probability ``jitter_p``; the others are returned unchanged."""
        n = images.shape[0]
        like = images
        factors = [
            _uniform(n, max(0.0, 1.0 - s), 1.0 + s, like)
            for s in (self.brightness, self.contrast, self.saturation)
        ]
        shift = _uniform(n, -self.hue, self.hue, like)
        order = torch.rand(n, 4, device=images.device).argsort(dim=1)  # a random permutation per image
        apply = torch.rand(n, device=images.device) < self.jitter_p

        active = [s > 0 for s in (self.brightness, self.contrast, self.saturation, self.hue)]
        out = images.clone()  # written into image by image below
        for stage in range(4):
            for op in range(4):
                selected = apply & (order[:, stage] == op)
                if not active[op] or not bool(selected.any()):
                    continue
                sub = out[selected]
                if op == 0:  # brightness: blend with black
                    sub = sub * factors[0][selected].view(-1, 1, 1, 1)
                elif op == 1:  # contrast: blend with the image's mean grey level
                    mean = rgb_to_grayscale(sub).mean(dim=(1, 2, 3), keepdim=True)
                    f = factors[1][selected].view(-1, 1, 1, 1)
                    sub = f * sub + (1.0 - f) * mean
                elif op == 2:  # saturation: blend with the image's grayscale version
                    f = factors[2][selected].view(-1, 1, 1, 1)
                    sub = f * sub + (1.0 - f) * rgb_to_grayscale(sub)
                else:
                    sub = adjust_hue(sub, shift[selected])
                out[selected] = sub.clamp(0.0, 1.0)
        return out

    def random_grayscale(self, images: Tensor) -> Tensor:
        """Each image replaced by its luma in all three channels with probability ``grayscale_p``."""
        chosen = torch.rand(images.shape[0], device=images.device) < self.grayscale_p
        gray = rgb_to_grayscale(images).expand_as(images)
        return torch.where(chosen.view(-1, 1, 1, 1), gray, images)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"SimCLRAugment expects RGB images [n, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"SimCLRAugment expects floating point images in [0, 1], got dtype {images.dtype}")
        if images.shape[0] == 0:
            return images.new_empty((0, 3, self.size, self.size))
        with torch.no_grad():
            views = self.crop_and_flip(images)
            views = self.colour_jitter(views)
            return self.random_grayscale(views)
