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
    gh, gw = -(-h // cell) + 2, -(-w // cell) + 2  # lattice cells plus a ring of padding
    jy = rng.uniform(0.15, 0.85, size=(gh, gw)).astype(np.float32)
    jx = rng.uniform(0.15, 0.85, size=(gh, gw)).astype(np.float32)
    inv_r = 1.0 / (rng.uniform(0.55, 0.85, size=(gh, gw)) * cell).astype(np.float32)
    # pixel centre relative to its cell's corner, in px: (cell, 1) and (1, cell) tiled over the frame
    fy = np.tile(np.arange(cell, dtype=np.float32) + 0.5, gh - 2)[:, None]
    fx = np.tile(np.arange(cell, dtype=np.float32) + 0.5, gw - 2)[None, :]

    def up(a: np.ndarray) -> np.ndarray:  # (cells) -> (cells * cell) px, nearest
        return np.repeat(np.repeat(a, cell, axis=0), cell, axis=1)

    cover = np.zeros(((gh - 2) * cell, (gw - 2) * cell), np.float32)
    shade = np.ones_like(cover)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            sel = (slice(1 + dy, gh - 1 + dy), slice(1 + dx, gw - 1 + dx))
            ir = up(inv_r[sel])
            oy = (fy - (dy + up(jy[sel])) * cell) * ir  # offset from the crown centre, in radii
            ox = (fx - (dx + up(jx[sel])) * cell) * ir
            v = 1.0 - (oy * oy + ox * ox)
            better = v > cover
            cover[better] = v[better]
            shade[better] = 1.0 - 0.35 * (oy[better] + ox[better])
    cover, shade = cover[:h, :w], shade[:h, :w]
    return np.clip(cover, 0.0, 1.0), shade


def binomial_blur(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C, H, W): separable [1, 2, 1] / 4 blur, edges replicated (a sharp lens PSF)."""
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    img = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    p = np.pad(img, ((0, 0), (0, 0), (1, 1)), mode="edge")
    return 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]
