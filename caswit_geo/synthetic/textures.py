"""Random texture fields for the synthetic orthophotos (numpy only).

Every field covers a whole (H, W) frame and is drawn from its own generator
without looking at the scene layout; the renderer then copies each class's
field into that class's pixels. That is what makes two classes sharing a
field (park and meadow share ``grass``) indistinguishable pixel by pixel.
"""

from __future__ import annotations

import numpy as np


def child_rngs(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    """``n`` independent generators seeded from ``rng`` (draw order fixed)."""
    return [np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, size=n)]


def _smooth_coords(length: int, cell: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index and smoothstep weight of each pixel centre along one axis."""
    t = (np.arange(length, dtype=np.float64) + 0.5) / cell + offset
    i0 = np.floor(t).astype(np.int64)
    f = t - i0
    return i0, (f * f * (3.0 - 2.0 * f)).astype(np.float32)


def value_noise(shape: tuple[int, int], cell: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 smooth noise with features ``cell`` px across, zero mean, std about 0.6.

    Gaussian values on a lattice of spacing ``cell`` (randomly shifted, so
    the lattice is not tied to the mosaic origin), smoothstep-interpolated.
    """
    h, w = shape
    oy, ox = rng.uniform(0.0, 1.0, size=2)
    iy, fy = _smooth_coords(h, cell, oy)
    ix, fx = _smooth_coords(w, cell, ox)
    grid = rng.standard_normal((int(iy[-1]) + 2, int(ix[-1]) + 2)).astype(np.float32)
    top = grid[iy][:, ix] * (1 - fx) + grid[iy][:, ix + 1] * fx  # (H, W)
    bottom = grid[iy + 1][:, ix] * (1 - fx) + grid[iy + 1][:, ix + 1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def tree_crowns(shape: tuple[int, int], cell: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Crown cover and sun-side shading of a stand of trees, (H, W) float32 each.

    One crown per ``cell x cell`` lattice cell (jittered centre, radius 0.55
    to 0.85 cell), so crowns touch and overlap like a closed canopy. ``cover``
    is 1 at a crown centre, 0 in the gaps; ``shade`` is brighter on the
    upper-left side of each crown (sun from the north-west, as the building
    shadows).
    """
    h, w = shape
    gh, gw = h // cell + 3, w // cell + 3
    jy = rng.uniform(0.15, 0.85, size=(gh, gw)).astype(np.float32)
    jx = rng.uniform(0.15, 0.85, size=(gh, gw)).astype(np.float32)
    radius = (rng.uniform(0.55, 0.85, size=(gh, gw)) * cell).astype(np.float32)
    py = np.arange(h, dtype=np.float32)[:, None] + 0.5  # (H, 1)
    px = np.arange(w, dtype=np.float32)[None, :] + 0.5  # (1, W)
    cy = np.arange(h) // cell + 1  # lattice row of each pixel, +1 for the padding row
    cx = np.arange(w) // cell + 1
    cover = np.zeros((h, w), np.float32)
    shade = np.ones((h, w), np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            gy, gx = (cy + dy)[:, None], (cx + dx)[None, :]
            r = radius[gy, gx]  # (H, W)
            oy = (py - (gy - 1 + jy[gy, gx]) * cell) / r
            ox = (px - (gx - 1 + jx[gy, gx]) * cell) / r
            v = 1.0 - (oy * oy + ox * ox)
            better = v > cover
            cover = np.where(better, v, cover)
            shade = np.where(better, 1.0 - 0.35 * (oy + ox), shade)
    return np.clip(cover, 0.0, 1.0), shade


def binomial_blur(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C, H, W): separable [1, 2, 1] / 4 blur, edges replicated (a sharp lens PSF)."""
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    img = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    p = np.pad(img, ((0, 0), (0, 0), (1, 1)), mode="edge")
    return 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]
