"""The park / meadow rule: a grass patch is named by its surroundings only.

A grass patch is a 4-connected component of grass pixels (park or meadow).
Its ring is every pixel of the mosaic within Chebyshev distance D of the
patch that is not in the patch (holes such as ponds included). The patch is
a park when buildings cover at least a fraction f of its ring, a meadow
otherwise (also when the ring is empty). The grass pixels themselves never
enter the decision.
"""

from __future__ import annotations

import numpy as np
import rasterio.features
from rasterio.transform import Affine

from caswit_geo.synthetic.classes import BUILDING, MEADOW, PARK


def grass_components(grass: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W) bool -> ((H, W) int32 component ids 1..n, 0 off grass; n), 4-connected.

    GDAL's polygonize finds the components, rasterising each polygon back
    (pixel centres inside) restores them exactly: the polygons run along
    pixel edges.
    """
    ids = np.zeros(grass.shape, np.int32)
    if not grass.any():
        return ids, 0
    polygons = rasterio.features.shapes(
        grass.astype(np.uint8), mask=grass, connectivity=4, transform=Affine.identity()
    )
    shapes = [(geom, n) for n, (geom, _) in enumerate(polygons, start=1)]
    rasterio.features.rasterize(shapes, out=ids, transform=Affine.identity())
    return ids, len(shapes)


def box_dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool -> pixels within Chebyshev distance ``radius`` of ``mask`` (square dilation)."""
    m = mask.astype(np.int32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(m, pad), axis=axis)
        n = mask.shape[axis]
        # window sum over [i - radius, i + radius] from the running sum
        hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        m = ((hi - lo) > 0).astype(np.int32)
    return m.astype(bool)


def ring_building_fractions(labels: np.ndarray, components: np.ndarray, n: int, distance: int) -> np.ndarray:
    """Building share of each patch's ring: (n + 1,) float64, entry 0 unused.

    A patch with an empty ring (it fills the mosaic) gets 0.
    """
    fractions = np.zeros(n + 1, np.float64)
    h, w = labels.shape
    rows, cols = np.nonzero(components)
    ids = components[rows, cols]
    order = np.argsort(ids, kind="stable")
    starts = np.searchsorted(ids[order], np.arange(1, n + 2))
    for k in range(1, n + 1):
        sel = order[starts[k - 1] : starts[k]]
        # work in the patch's bounding box grown by the ring width
        r0, r1 = max(rows[sel].min() - distance, 0), min(rows[sel].max() + distance + 1, h)
        c0, c1 = max(cols[sel].min() - distance, 0), min(cols[sel].max() + distance + 1, w)
        patch = components[r0:r1, c0:c1] == k
        ring = box_dilate(patch, distance) & ~patch
        total = int(ring.sum())
        if total:
            fractions[k] = np.count_nonzero(ring & (labels[r0:r1, c0:c1] == BUILDING)) / total
    return fractions


def name_grass(labels: np.ndarray, distance: int, min_building_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Apply the rule: returns (labels with every grass pixel PARK or MEADOW, per-patch fractions).

    ``labels`` may hold either PARK or MEADOW on grass pixels: only "grass or
    not" and the buildings around are read.
    """
    grass = (labels == PARK) | (labels == MEADOW)
    components, n = grass_components(grass)
    fractions = ring_building_fractions(labels, components, n, distance)
    is_park = fractions >= min_building_fraction
    is_park[0] = False
    out = labels.copy()
    out[grass] = np.where(is_park[components[grass]], PARK, MEADOW).astype(labels.dtype)
    return out, fractions
