"""Tile grids and context windows: pure window arithmetic, no files.

Units are pixels of the raster being tiled. Windows are rasterio's
:class:`~rasterio.windows.Window` (col_off, row_off, width, height) and may
extend past the raster: edge tiles are padded and their output cropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Sequence

from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError


def tile_offsets(length: int, tile: int, stride: int) -> range:
    """Offsets of the tiles covering ``[0, length)``.

    ``max(1, ceil((length - tile) / stride) + 1)`` tiles: the last one may
    run past the end (it is padded), a raster smaller than one tile gets one.
    A ``range``, not a list: a raster declaring 1e8 px a side costs nothing.
    """
    if length < 1 or tile < 1 or not 1 <= stride <= tile:
        raise ConfigError(f"bad tiling: length={length}, tile={tile}, stride={stride}")
    n = 1 if length <= tile else math.ceil((length - tile) / stride) + 1
    return range(0, n * stride, stride)


@dataclass(frozen=True)
class TileGrid:
    """A grid of ``tile x tile`` windows over a ``width x height`` raster.

    ``overlap`` pixels are shared between neighbouring tiles (stride =
    tile - overlap); 0 is the paper's protocol. Overlap helps at tile borders,
    where a tile's receptive field is cut off.
    """

    width: int
    height: int
    tile: int
    overlap: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < self.tile:
            raise ConfigError(f"overlap must be in [0, {self.tile}), got {self.overlap}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @cached_property
    def col_offsets(self) -> range:
        return tile_offsets(self.width, self.tile, self.stride)

    @cached_property
    def row_offsets(self) -> range:
        return tile_offsets(self.height, self.tile, self.stride)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of tiles."""
        return len(self.row_offsets), len(self.col_offsets)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def windows(self) -> Iterator[tuple[int, int, Window]]:
        """(row index, col index, window) in row-major order."""
        for i, row in enumerate(self.row_offsets):
            for j, col in enumerate(self.col_offsets):
                yield i, j, Window(col, row, self.tile, self.tile)

    def valid(self, window: Window) -> Window:
        """The part of ``window`` inside the raster."""
        return clip_window(window, self.width, self.height)


def clip_window(window: Window, width: int, height: int) -> Window:
    """Intersection of ``window`` with ``[0, width) x [0, height)`` (may be empty)."""
    c0 = max(int(window.col_off), 0)
    r0 = max(int(window.row_off), 0)
    c1 = min(int(window.col_off + window.width), width)
    r1 = min(int(window.row_off + window.height), height)
    return Window(c0, r0, max(c1 - c0, 0), max(r1 - r0, 0))


def context_window(window: Window, factor: int) -> Window:
    """The ``factor``-times larger window centred on ``window`` (the LR field of view).

    For a T x T tile and factor k this is the kT x kT window starting
    (k-1)T/2 pixels up and left of the tile, so the tile is its central
    T/k x T/k part once resampled to T x T.
    """
    if factor < 1:
        raise ConfigError(f"context factor must be >= 1, got {factor}")
    w, h = int(window.width), int(window.height)
    if ((factor - 1) * w) % 2 or ((factor - 1) * h) % 2:
        raise ConfigError(f"a {w}x{h} tile has no centred x{factor} context window (use an even tile size)")
    dc, dr = (factor - 1) * w // 2, (factor - 1) * h // 2
    return Window(int(window.col_off) - dc, int(window.row_off) - dr, factor * w, factor * h)


def strips(width: int, strip_width: int | None) -> list[tuple[int, int]]:
    """Column ranges ``[x0, x1)`` of vertical strips of ``strip_width`` pixels covering ``[0, width)``.

    ``None`` (or a width >= the raster's) gives one strip. Processing a
    raster strip by strip keeps per-row buffers at the strip's width, not
    the raster's, so memory does not grow with the raster.
    """
    if strip_width is None or strip_width >= width:
        return [(0, width)]
    if strip_width < 1:
        raise ConfigError(f"strip width must be >= 1, got {strip_width}")
    return [(x0, min(x0 + strip_width, width)) for x0 in range(0, width, strip_width)]


def plan_tiles(grid: TileGrid, strip_width: int | None = None, region: Window | None = None) -> list[tuple[int, Window]]:
    """(strip index, tile window) in processing order: strip by strip, then row-major.

    ``region`` (raster pixels, default the whole raster) limits the plan to
    the tiles that touch it; its strips start at its left edge. A strip
    takes every tile whose columns intersect it, so with overlap a tile
    straddling two strips is listed (and predicted) in both; without overlap
    and a strip width that is a multiple of the tile size, every tile is
    listed once. Within a strip all tiles of a row come before the next row,
    so rows above the current tile row are final.
    """
    if region is None:
        region = Window(0, 0, grid.width, grid.height)
    r0, h = int(region.row_off), int(region.height)
    rows = [grid.row_offsets[i] for i in touching(grid.row_offsets, grid.tile, r0, r0 + h)]
    c0, w = int(region.col_off), int(region.width)
    cols = grid.col_offsets
    plan = []
    for s, (x0, x1) in enumerate(strips(w, strip_width)):
        strip_cols = [cols[i] for i in touching(cols, grid.tile, c0 + x0, c0 + x1)]
        for row in rows:
            plan.extend((s, Window(c, row, grid.tile, grid.tile)) for c in strip_cols)
    return plan


def touching(offsets: Sequence[int], tile: int, start: int, stop: int) -> range:
    """Indices of the tiles (at ``offsets``, evenly spaced, ``tile`` long) that intersect ``[start, stop)``."""
    if not offsets or stop <= start:
        return range(0)
    stride = offsets[1] - offsets[0] if len(offsets) > 1 else tile
    first = max(0, -(-(start - tile + 1) // stride))
    last = min(len(offsets) - 1, (stop - 1) // stride)
    return range(first, last + 1)


def split_span(length: int, target: int, align: int) -> list[tuple[int, int]]:
    """``[start, stop)`` pieces covering ``[0, length)``: as few as pieces of about ``target``
    allow, of near-equal lengths, every start a multiple of ``align``.

    For units of work: a 5000 px side with a 4096 px target and 512 px
    blocks gives (0, 2560), (2560, 5000) rather than a sliver of 904.
    """
    size = span_piece(length, target, align)
    return [(s, min(s + size, length)) for s in range(0, length, size)]


def span_piece(length: int, target: int, align: int) -> int:
    """The length of :func:`split_span`'s pieces (all but the last): piece ``i`` is
    ``[i * size, min((i + 1) * size, length))``, so a pixel's piece is ``x // size``
    without listing them."""
    if length < 1 or target < 1 or align < 1:
        raise ConfigError(f"bad split: length={length}, target={target}, align={align}")
    n = max(1, math.ceil(length / max(target, align)))
    return max(align, math.ceil(length / n / align) * align)
