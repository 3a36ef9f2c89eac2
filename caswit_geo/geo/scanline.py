"""Polygons filled by GDAL's pixel-centre rule, vectorised over every edge of a window (no per-vertex Python).

``rasterio.features.rasterize`` hands each polygon to GDAL through a
Python-level GeoJSON walk, which costs more than the fill itself when a
tile meets hundreds of polygons of many vertices. This does GDAL's scanline
fill (``GDALdllImageFilledPolygon``, ``all_touched=False``) with numpy:

* in pixel coordinates (the inverse of the grid's transform), scanline r
  samples the pixel centres at y = r + 0.5; an edge from y0 to y1 (y0 < y1)
  crosses it when y0 <= r + 0.5 < y1 (horizontal edges never do), at
  x = x0 + (r + 0.5 - y0) (x1 - x0) / (y1 - y0), rounded to the column
  ``floor(x + 0.5)`` as GDAL does;
* the columns of one polygon on one scanline, sorted, pair up (even-odd:
  holes are left out, a valid polygon's parts never overlap), and a pair
  (a, b) fills the columns ``a .. b - 1``, the pixels whose centre lies in
  (xa, xb];
* the spans are written as runs along the rows; where polygons overlap
  the later one wins (spans cut where they overlap, each piece taking the
  highest rank).

The edges of a layer are laid out once (:class:`PolygonEdges`), so a window
only gathers the edges of the polygons that meet it. Equal to GDAL for every
pixel whose centre does not lie exactly on an edge
(``tests/geo/test_polygon_raster.py`` checks it against rasterio).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine


@dataclass(frozen=True)
class PolygonEdges:
    """The edges of N polygons, grouped by polygon: edge j runs from vertex ``start[j]`` to ``start[j] + 1``.

    ``x``, ``y``: every ring's vertices (closed rings), ``start``: the first vertex of each edge,
    ``offsets`` (N + 1,): polygon i owns edges ``offsets[i]:offsets[i + 1]`` (none when it is
    empty or holds no polygon).
    """

    x: np.ndarray
    y: np.ndarray
    start: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_geoms(cls, geoms: np.ndarray) -> PolygonEdges:
        geoms = _polygonal(np.asarray(geoms, dtype=object))
        if len(geoms) == 0 or shapely.is_empty(geoms).all():
            return cls(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(len(geoms) + 1, np.int64))
        _, coords, offsets = shapely.to_ragged_array(geoms)
        if len(offsets) == 2:  # polygons only: one part each
            offsets = (offsets[0], offsets[1], np.arange(len(geoms) + 1))
        ring_offsets, part_offsets, geom_offsets = offsets
        # every vertex starts an edge but the last of each ring
        closes = np.zeros(len(coords), bool)
        closes[ring_offsets[1:] - 1] = True
        start = np.flatnonzero(~closes).astype(np.int32 if len(coords) < 2**31 else np.int64)
        del closes
        # a polygon's edges end where its last ring does: vertex offsets -> edge offsets
        edge_offsets = np.searchsorted(start, ring_offsets[part_offsets[geom_offsets]])
        return cls(coords[:, 0], coords[:, 1], start, edge_offsets)  # views: the coordinates are held once

    def select(self, polygons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(edge indices, rank) of the edges of ``polygons``; rank i for the edges of ``polygons[i]``."""
        lo, hi = self.offsets[polygons], self.offsets[np.asarray(polygons) + 1]
        n = hi - lo
        total = int(n.sum())
        rank = np.repeat(np.arange(len(n)), n)
        edge = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(total)
        return edge, rank


def fill_polygons(geoms: np.ndarray, values: np.ndarray, transform: Affine, out: np.ndarray) -> np.ndarray:
    """Burn ``values[i]`` under ``geoms[i]`` (polygons, multipolygons; later wins) into ``out`` (H, W), in place.

    ``transform``: the grid of ``out`` (any affine: the fill happens in its pixel space).
    """
    edges = PolygonEdges.from_geoms(geoms)
    edge, rank = edges.select(np.arange(len(geoms)))
    return fill_edges(edges, edge, rank, np.asarray(values), transform, out)


def fill_edges(edges: PolygonEdges, edge: np.ndarray, rank: np.ndarray, values: np.ndarray, transform: Affine,
               out: np.ndarray) -> np.ndarray:
    """:func:`fill_polygons` of the polygons owning ``edges``' ``edge``, ``rank`` their burn order (values[rank])."""
    height, width = out.shape
    if edge.size == 0:
        return out
    a, b = edges.start[edge], edges.start[edge] + 1
    inv = ~transform
    xa, ya = edges.x[a], edges.y[a]
    xb, yb = edges.x[b], edges.y[b]
    py0 = inv.d * xa + inv.e * ya + inv.f
    py1 = inv.d * xb + inv.e * yb + inv.f
    # rows r with min(y) <= r + 0.5 < max(y), clipped to the grid; other edges (horizontal, outside) cross none
    lo, hi = np.minimum(py0, py1), np.maximum(py0, py1)
    first = np.maximum(np.ceil(lo - 0.5), 0)
    count = np.minimum(np.ceil(hi - 0.5), height) - first
    crosses = np.flatnonzero(count > 0)
    if crosses.size == 0:
        return out
    xa, ya, xb, yb, rank = xa[crosses], ya[crosses], xb[crosses], yb[crosses], rank[crosses]
    first, count = first[crosses], count[crosses]
    total = int(count.sum())
    # integer keys (polygon, scanline, column) fit in 32 bits for the usual window: half the memory traffic
    int_t = np.int32 if max((int(rank.max()) + 1) * height * (width + 1), total) < 2**31 else np.int64
    first, count = first.astype(int_t), count.astype(int_t)
    x0 = inv.a * xa + inv.b * ya + inv.c
    x1 = inv.a * xb + inv.b * yb + inv.c
    y0, y1 = py0[crosses], py1[crosses]
    flip = y0 > y1
    x0, x1 = np.where(flip, x1, x0), np.where(flip, x0, x1)
    y0, y1 = np.where(flip, y1, y0), np.where(flip, y0, y1)
    row = np.repeat(first - (np.cumsum(count, dtype=int_t) - count), count) + np.arange(total, dtype=int_t)
    dx, dy = np.repeat(x1 - x0, count), np.repeat(y1 - y0, count)
    x = (row + 0.5 - np.repeat(y0, count)) * dx / dy + np.repeat(x0, count)  # GDAL's order of operations
    col = np.clip(np.floor(x + 0.5), 0, width).astype(int_t)
    # one integer key: by polygon, then scanline, then column; the columns of a polygon's scanline pair up
    key = (np.repeat(rank.astype(int_t), count) * int_t(height) + row) * int_t(width + 1) + col
    key.sort()
    starts, ends = key[0::2], key[1::2]
    c0, c1 = starts % (width + 1), ends % (width + 1)
    line = starts // (width + 1)
    row, g = line % height, line // height
    keep = c1 > c0
    _write_spans(out, (row.astype(np.int64) * width + c0)[keep], (c1 - c0)[keep], g[keep], values)
    return out


def _write_spans(out: np.ndarray, start: np.ndarray, length: np.ndarray, rank: np.ndarray, values: np.ndarray) -> None:
    """Spans (flat pixel ``start``, ``length``, polygon ``rank``) written into ``out``, the highest rank on top.

    Where spans overlap (overlapping polygons, or a border shared by two polygons through
    different vertices, whose crossings round apart by a pixel), they are cut at each other's
    ends and each piece keeps its highest rank. The spans, now apart, and the gaps between
    them are runs of one value along the rows: one ``np.repeat``.
    """
    if start.size == 0:
        return
    flat = out.reshape(-1)
    order = _argsort(start, flat.size)
    start, length, rank = start[order], length[order], rank[order]
    end = start + length
    conflict = np.zeros(len(start), bool)
    conflict[1:] = start[1:] < np.maximum.accumulate(end)[:-1]
    conflict[:-1] |= end[:-1] > start[1:]
    if conflict.any():  # a coverage, such as OCS GE, has none
        cut, cut_len, cut_rank = _visible_pieces(start[conflict], end[conflict], rank[conflict])
        clean = ~conflict
        start, length, rank = start[clean], length[clean], rank[clean]
        # both sorted: the pieces are slotted in among the spans left whole
        at = np.searchsorted(start, cut) + np.arange(len(cut))
        whole = np.ones(len(start) + len(cut), bool)
        whole[at] = False
        merged = [np.empty(len(whole), np.int64) for _ in range(3)]
        for into, kept, pieces in zip(merged, (start, length, rank), (cut, cut_len, cut_rank)):
            into[whole], into[at] = kept, pieces
        start, length, rank = merged
    runs = np.empty(2 * len(start) + 1, np.int64)
    runs[0:-1:2] = start - np.concatenate(([0], (start + length)[:-1]))
    runs[1::2], runs[-1] = length, flat.size - start[-1] - length[-1]
    value = values[rank]
    if (flat == flat[0]).all():  # a blank canvas (the usual case): one run-length decode
        fills = np.empty(len(runs), out.dtype)
        fills[0::2], fills[1::2] = flat[0], value
        flat[:] = np.repeat(fills, runs)
        return
    fills = np.full(len(runs), -1, np.int32)  # -1: a gap, where ``out`` keeps what it holds
    fills[1::2] = value
    painted = np.repeat(fills, runs)
    np.copyto(flat, painted, casting="unsafe", where=painted >= 0)


def _argsort(keys: np.ndarray, bound: int) -> np.ndarray:
    """``np.argsort`` of non-negative integer ``keys`` below ``bound``, as a sort of ``key * n + index`` (faster)."""
    n = len(keys)
    if bound * n >= 2**62:
        return np.argsort(keys)
    packed = keys.astype(np.int64) * n + np.arange(n)
    packed.sort()
    return packed % n


def _visible_pieces(start: np.ndarray, end: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping spans [start, end) cut at every span's ends: (start, length, rank) of each covered piece, top rank."""
    bounds = np.sort(np.concatenate([start, end]))  # repeated bounds make empty pieces, left out below
    first, last = np.searchsorted(bounds, start), np.searchsorted(bounds, end)
    n = last - first
    piece = np.repeat(first - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
    top = np.full(len(bounds) - 1, -1, np.int64)
    np.maximum.at(top, piece, np.repeat(rank.astype(np.int64), n))
    length = np.diff(bounds)
    keep = (top >= 0) & (length > 0)
    return bounds[:-1][keep], length[keep], top[keep]


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """Each geometry's polygons: a collection (``make_valid`` may return one) keeps only them, lines and points go."""
    kinds = shapely.get_type_id(geoms)
    odd = ~shapely.is_empty(geoms) & ~np.isin(kinds, (3, 6))
    if odd.any():
        geoms = geoms.copy()
        for i in np.flatnonzero(odd):
            parts = [p for p in shapely.get_parts(geoms[i]) if shapely.get_type_id(p) in (3, 6)]
            geoms[i] = shapely.multipolygons(shapely.get_parts(parts)) if parts else shapely.Polygon()
    return geoms
