"""Polygons filled by GDAL's pixel-centre rule, vectorised over every edge of a window (no per-vertex Python).

``rasterio.features.rasterize`` hands each polygon to GDAL through a
Python-level GeoJSON walk, which costs more than the fill itself when a
tile meets hundreds of polygons of many vertices. This does GDAL's scanline
fill (``GDALdllImageFilledPolygon``, ``all_touched=False``) with numpy:

* in pixel coordinates (the inverse of the grid's transform), scanline r
  samples the pixel centres at y = r + 0.5; an edge from y0 to y1 (y0 < y1)
  crosses it when y0 <= r + 0.5 < y1 (horizontal edges never do), at
  x = x0 + (r + 0.5 - y0) (x1 - x0) / (y1 - y0);
* the crossings of one polygon on one scanline, sorted, pair up (even-odd:
  holes are left out, a valid polygon's parts never overlap), and a pair
  (xa, xb) fills the columns ``floor(xa + 0.5) .. floor(xb - 0.5)``, the
  pixels whose centre lies in (xa, xb];
* where polygons overlap the later one wins (a per-pixel maximum of the
  polygon's rank).

Equal to GDAL for every pixel whose centre does not lie exactly on an edge
(``tests/geo/test_polygon_raster.py`` checks it against rasterio).
"""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine


def fill_polygons(geoms: np.ndarray, values: np.ndarray, transform: Affine, out: np.ndarray,
                  disjoint: bool = False) -> np.ndarray:
    """Burn ``values[i]`` under ``geoms[i]`` (polygons, multipolygons; later wins) into ``out`` (H, W), in place.

    ``transform``: the grid of ``out`` (any affine: the fill happens in its pixel space).
    ``disjoint``: no two polygons share interior (a coverage, such as OCS GE): no pixel centre
    lies in two of them (a centre on a shared edge goes to one side only), so spans are
    painted with a running sum along each row instead of ranked pixel by pixel.
    """
    height, width = out.shape
    geoms, values = _polygonal(geoms, values)
    if len(geoms) == 0:
        return out
    _, coords, offsets = shapely.to_ragged_array(geoms)
    if len(offsets) == 2:  # polygons only: one part each
        offsets = (offsets[0], offsets[1], np.arange(len(geoms) + 1))
    ring_offsets, part_offsets, geom_offsets = offsets
    ring_of_coord = np.repeat(np.arange(len(ring_offsets) - 1), np.diff(ring_offsets))
    part_of_ring = np.repeat(np.arange(len(part_offsets) - 1), np.diff(part_offsets))
    geom_of_part = np.repeat(np.arange(len(geom_offsets) - 1), np.diff(geom_offsets))
    inv = ~transform
    px = inv.a * coords[:, 0] + inv.b * coords[:, 1] + inv.c
    py = inv.d * coords[:, 0] + inv.e * coords[:, 1] + inv.f
    same_ring = ring_of_coord[:-1] == ring_of_coord[1:]
    start = np.flatnonzero(same_ring)
    x0, y0, x1, y1 = px[start], py[start], px[start + 1], py[start + 1]
    geom = geom_of_part[part_of_ring[ring_of_coord[start]]]
    flip = y0 > y1
    x0, x1 = np.where(flip, x1, x0), np.where(flip, x0, x1)
    y0, y1 = np.where(flip, y1, y0), np.where(flip, y0, y1)
    # rows r with y0 <= r + 0.5 < y1, clipped to the grid
    first = np.maximum(np.ceil(y0 - 0.5), 0)
    last = np.minimum(np.ceil(y1 - 0.5) - 1, height - 1)
    count = np.maximum(last - first + 1, 0).astype(np.int64)
    if count.sum() == 0:
        return out
    edge = np.repeat(np.arange(len(count)), count)
    row = (np.repeat(first.astype(np.int64), count)
           + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    yc = row + 0.5
    x = x0[edge] + (yc - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    g = geom[edge]
    order = np.lexsort((x, g * height + row))  # by polygon, then scanline, then x: crossings pair up in turn
    x, row, g = x[order], row[order], g[order]
    xa, xb, row, g = x[0::2], x[1::2], row[0::2], g[0::2]
    c0 = np.maximum(np.floor(xa + 0.5), 0).astype(np.int64)
    c1 = np.minimum(np.floor(xb - 0.5), width - 1).astype(np.int64)
    n = np.maximum(c1 - c0 + 1, 0)
    total = int(n.sum())
    if total == 0:
        return out
    if disjoint:  # spans never overlap: value + 1 added at each start, taken off after each end, summed along rows
        keep = n > 0
        r, a, b, v = row[keep], c0[keep], c1[keep] + 1, values[g[keep]].astype(np.int32) + 1
        marks = np.zeros((height, width + 1), np.int32)
        np.add.at(marks, (r, a), v)
        np.add.at(marks, (r, b), -v)
        painted = np.cumsum(marks[:, :width], axis=1)
        painted -= 1  # -1 where no span: those pixels keep what ``out`` holds
        np.copyto(out, painted, casting="unsafe", where=painted >= 0)
        return out
    pixel = (np.repeat(row * width + c0, n) + np.arange(total) - np.repeat(np.cumsum(n) - n, n))
    rank = np.full(height * width, -1, np.int32)
    np.maximum.at(rank, pixel, np.repeat(g, n).astype(np.int32))
    hit = rank >= 0
    out.reshape(-1)[hit] = values[rank[hit]]
    return out


def _polygonal(geoms: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-empty polygonal geometries (a clipped polygon may come back as an empty collection)."""
    geoms = np.asarray(geoms, dtype=object)
    values = np.asarray(values)
    kinds = shapely.get_type_id(geoms)
    keep = ~shapely.is_empty(geoms)
    odd = keep & ~np.isin(kinds, (3, 6))
    if odd.any():  # a collection: keep its polygons
        geoms = geoms.copy()
        for i in np.flatnonzero(odd):
            parts = [p for p in shapely.get_parts(geoms[i]) if shapely.get_type_id(p) in (3, 6)]
            geoms[i] = shapely.multipolygons(shapely.get_parts(parts)) if parts else shapely.Polygon()
        keep = ~shapely.is_empty(geoms)
    return geoms[keep], values[keep]
