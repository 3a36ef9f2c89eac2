"""Polygons burnt into raster windows, through a spatial index (labels from vector data).

The polygons are indexed once (a shapely STRtree) and their edges laid out
once; each window selects the polygons that meet it, gathers their edges and
fills them by GDAL's pixel-centre rule (``all_touched=False``, as
``rasterio.features.rasterize``; ``scanline.py`` does it vectorised), in the
layer's order, so where polygons overlap the later one wins. A window costs
the polygons it meets, never the whole layer.

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

from caswit_geo.geo.scanline import PolygonEdges, fill_edges


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
        self.edges = PolygonEdges.from_geoms(self.geoms)  # laid out once: a window gathers its polygons' edges

    def __len__(self) -> int:
        return len(self.geoms)

    def __getstate__(self) -> dict:
        # an STRtree does not pickle: rebuilt in the receiving process (spawned DataLoader workers)
        return {"geoms": self.geoms, "values": self.values}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["geoms"], state["values"])

    def query(self, bounds: tuple[float, float, float, float]) -> np.ndarray:
        """Indices of the polygons whose envelope meets ``bounds``, in burn order."""
        return np.sort(self.tree.query(shapely.box(*bounds)))

    def burn(self, transform: Affine, height: int, width: int, fill: int) -> np.ndarray:
        """(height, width) uint8: the last polygon's value under each pixel centre, else ``fill``."""
        out = np.full((height, width), fill, np.uint8)
        hits = self.query(grid_bounds(transform, height, width))
        if hits.size == 0:
            return out
        # only the edges of the polygons met are gathered; those outside the window's rows cross no scanline,
        # those left or right of it cross at its borders: a large polygon costs its edge count, no clipping
        edge, rank = self.edges.select(hits)
        return fill_edges(self.edges, edge, rank, self.values[hits], transform, out)

    def overlapping_pairs(self) -> int:
        """How many pairs of polygons share some interior (the later one is burnt there)."""
        left, right = self.tree.query(self.geoms, predicate="intersects")
        keep = left < right
        left, right = left[keep], right[keep]
        return int(shapely.relate_pattern(self.geoms[left], self.geoms[right], "T********").sum()) if left.size else 0


def grid_bounds(transform: Affine, height: int, width: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a ``height x width`` grid (any sign of the pixel sizes)."""
    t = transform
    cols, rows = (0, width, 0, width), (0, 0, height, height)
    xs = [t.a * c + t.b * r + t.c for c, r in zip(cols, rows)]
    ys = [t.d * c + t.e * r + t.f for c, r in zip(cols, rows)]
    return min(xs), min(ys), max(xs), max(ys)
