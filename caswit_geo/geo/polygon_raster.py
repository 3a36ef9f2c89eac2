"""Polygons burnt into raster windows, through a spatial index (labels from vector data).

The polygons are indexed once (a shapely STRtree); each window selects the
polygons that meet it, cuts them to the window and fills them by GDAL's
pixel-centre rule (``all_touched=False``, as ``rasterio.features.rasterize``;
``scanline.py`` does it vectorised), in the layer's order, so where polygons
overlap the later one wins. A window costs the polygons it meets, never the
whole layer.

The LR labels of a context window (the pixel under the centre of each
``k x k`` block, ``context.nearest_downsample`` of the ``kT`` canvas) are
burnt directly on the ``T x T`` LR grid, whose pixel centres are placed on
those HR pixel centres (:func:`lowres_transform`): the same values for a
quarter of the work at k = 2.
"""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from rasterio.windows import Window

from caswit_geo.geo.scanline import fill_polygons


def window_transform(transform: Affine, window: Window) -> Affine:
    """The transform of ``window`` of a raster with ``transform`` (pixel units of that raster)."""
    return transform * Affine.translation(int(window.col_off), int(window.row_off))


def lowres_transform(transform: Affine, factor: int) -> Affine:
    """The grid of ``nearest_downsample(canvas, factor)`` for a canvas with ``transform``.

    LR pixel ``i`` takes HR pixel ``k*i + k//2``, whose centre is at
    ``k*i + k//2 + 0.5`` HR px: a grid of ``k`` px cells shifted by
    ``k//2 + 0.5 - k/2`` HR px puts its centres there.
    """
    shift = factor // 2 + 0.5 - factor / 2
    return transform * Affine.translation(shift, shift) * Affine.scale(factor)


class PolygonIndex:
    """Polygons with one burn value each, indexed for window queries.

    Args:
        geoms: shapely polygons in the raster's CRS, in burn order (later wins).
        values: (N,) burn values 0..255.
    """

    def __init__(self, geoms: np.ndarray, values: np.ndarray) -> None:
        self.geoms = np.asarray(geoms, dtype=object)
        self.values = np.asarray(values, dtype=np.uint8)
        if len(self.geoms) != len(self.values):
            raise ValueError(f"{len(self.geoms)} polygons but {len(self.values)} values")
        self.tree = shapely.STRtree(self.geoms)
        self.disjoint = False  # set by overlapping_pairs(): no two polygons share interior

    def __len__(self) -> int:
        return len(self.geoms)

    def __getstate__(self) -> dict:
        # an STRtree does not pickle: rebuilt in the receiving process (spawned DataLoader workers)
        return {"geoms": self.geoms, "values": self.values, "disjoint": self.disjoint}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["geoms"], state["values"])
        self.disjoint = state["disjoint"]

    def query(self, bounds: tuple[float, float, float, float]) -> np.ndarray:
        """Indices of the polygons whose envelope meets ``bounds``, in burn order."""
        return np.sort(self.tree.query(shapely.box(*bounds)))

    def burn(self, transform: Affine, height: int, width: int, fill: int) -> np.ndarray:
        """(height, width) uint8: the last polygon's value under each pixel centre, else ``fill``."""
        out = np.full((height, width), fill, np.uint8)
        left, bottom, right, top = grid_bounds(transform, height, width)
        hits = self.query((left, bottom, right, top))
        if hits.size == 0:
            return out
        # large polygons (a field, a forest with clearings) are cut to the window plus a pixel first:
        # GDAL then walks a few edges instead of the whole outline; no pixel centre changes
        mx, my = abs(transform.a) + abs(transform.b), abs(transform.d) + abs(transform.e)
        geoms = self.geoms[hits]
        b = shapely.bounds(geoms)
        large = (b[:, 0] < left - mx) | (b[:, 1] < bottom - my) | (b[:, 2] > right + mx) | (b[:, 3] > top + my)
        if large.any():
            geoms = geoms.copy()
            geoms[large] = shapely.clip_by_rect(geoms[large], left - mx, bottom - my, right + mx, top + my)
        return fill_polygons(geoms, self.values[hits], transform, out, disjoint=self.disjoint)

    def overlapping_pairs(self) -> int:
        """How many pairs of polygons share some interior (the later one is burnt there)."""
        left, right = self.tree.query(self.geoms, predicate="intersects")
        keep = left < right
        left, right = left[keep], right[keep]
        count = int(shapely.relate_pattern(self.geoms[left], self.geoms[right], "T********").sum()) if left.size else 0
        self.disjoint = count == 0
        return count


def grid_bounds(transform: Affine, height: int, width: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a ``height x width`` grid (any sign of the pixel sizes)."""
    xs, ys = zip(*(transform * (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))))
    return min(xs), min(ys), max(xs), max(ys)
