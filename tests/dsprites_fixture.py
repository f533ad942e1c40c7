"""Tiny dSprites look-alike in the two real ``.npz`` forms, for tests and smoke runs.

Latent classes are drawn at random over the official grid (color 1, shape 3, scale 6, orientation 40,
posX 32, posY 32); ``latents_values`` are the official values at those classes. Each image is a binary
64x64 rendering of its latents (square, ellipse or a heart-like blob, scaled, rotated, positioned), so
the shapes are learnable. Two forms:

* ``official``: ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` with ``imgs``, ``latents_classes``,
  ``latents_values`` and a pickled ``metadata`` dict (as the official file has);
* ``subset``: ``dsprites_subset.npz`` with the same three arrays plus ``original_index`` and the two
  bookkeeping masks of the shared subset file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["make_dsprites_like", "write_dsprites_npz"]

_GRID = (1, 3, 6, 40, 32, 32)
_BASES = np.array([737280, 245760, 40960, 1024, 32, 1])
_FILES = {"official": "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz", "subset": "dsprites_subset.npz"}


def _values(classes: np.ndarray) -> np.ndarray:
    scales = np.linspace(0.5, 1.0, 6)
    orientations = np.linspace(0.0, 2 * np.pi, 40)
    positions = np.linspace(0.0, 1.0, 32)
    return np.stack([
        np.ones(len(classes)), classes[:, 1] + 1.0, scales[classes[:, 2]], orientations[classes[:, 3]],
        positions[classes[:, 4]], positions[classes[:, 5]],
    ], axis=1)


def make_dsprites_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(imgs uint8 [n, 64, 64] in {0, 1}, latents_classes int64 [n, 6], latents_values float64 [n, 6])``."""
    rng = np.random.default_rng(seed)
    classes = np.stack([rng.integers(0, size, n) for size in _GRID], axis=1).astype(np.int64)
    values = _values(classes)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
    imgs = np.zeros((n, 64, 64), dtype=np.uint8)
    for i, (_, shape, scale, angle, px, py) in enumerate(values):
        cx, cy = 15.5 + 32 * px, 15.5 + 32 * py
        dx, dy = xx - cx, yy - cy
        u = np.cos(angle) * dx + np.sin(angle) * dy
        v = -np.sin(angle) * dx + np.cos(angle) * dy
        half = 10.0 * scale
        if shape == 1:  # square
            inside = (np.abs(u) <= half) & (np.abs(v) <= half)
        elif shape == 2:  # ellipse, long axis along u
            inside = (u / (1.3 * half)) ** 2 + (v / (0.7 * half)) ** 2 <= 1.0
        else:  # heart-like: two discs over a triangle
            r = 0.5 * half
            lobes = ((u + r) ** 2 + (v + r) ** 2 <= r**2) | ((u - r) ** 2 + (v + r) ** 2 <= r**2)
            inside = lobes | ((v >= -r) & (v <= half) & (np.abs(u) <= (half - v) * 0.9))
        imgs[i] = inside
    return imgs, classes, values


def write_dsprites_npz(root: Path, n: int = 120, form: str = "subset", seed: int = 0) -> Path:
    """Write ``n`` images in ``form`` (``official`` or ``subset``) under ``root/dsprites/``; returns ``root``."""
    if form not in _FILES:
        raise ValueError(f"form must be one of {list(_FILES)}, got {form!r}")
    imgs, classes, values = make_dsprites_like(n, seed)
    folder = Path(root) / "dsprites"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"imgs": imgs, "latents_classes": classes, "latents_values": values}
    if form == "official":
        metadata = {"description": "tiny dSprites look-alike", "latents_sizes": np.array(_GRID)}
        np.savez_compressed(folder / _FILES[form], metadata=np.array(metadata, dtype=object), **arrays)
    else:
        np.savez_compressed(
            folder / _FILES[form], original_index=classes @ _BASES, in_nma_random_subset=np.ones(n, dtype=bool),
            in_nma_downsampled_grid=np.zeros(n, dtype=bool), **arrays,
        )
    return Path(root)
