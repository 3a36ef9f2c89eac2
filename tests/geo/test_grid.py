"""Tile grids, context windows and strip plans against brute-force constructions."""

import numpy as np
import pytest
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError
from caswit_geo.geo.grid import TileGrid, clip_window, context_window, plan_tiles, strips, tile_offsets


@pytest.mark.parametrize(
    "length, tile, stride, expected",
    [
        (1, 128, 128, [0]),  # 1-pixel edge: one padded tile
        (100, 128, 128, [0]),  # smaller than a tile
        (128, 128, 128, [0]),  # exactly one tile
        (129, 128, 128, [0, 128]),  # one pixel more: a second, mostly padded tile
        (300, 128, 128, [0, 128, 256]),  # not a multiple of the tile
        (256, 128, 96, [0, 96, 192]),  # overlap 32: last tile ends at 320 >= 256
        (224, 128, 96, [0, 96]),  # overlap: the last tile ends exactly at the edge
        (5, 2, 1, [0, 1, 2, 3]),
    ],
)
def test_tile_offsets_table(length, tile, stride, expected):
    assert list(tile_offsets(length, tile, stride)) == expected


@pytest.mark.parametrize("length, tile, stride", [(0, 128, 128), (10, 0, 1), (10, 8, 9), (10, 8, 0)])
def test_tile_offsets_rejects_bad_tiling(length, tile, stride):
    with pytest.raises(ConfigError, match=f"bad tiling: length={length}, tile={tile}, stride={stride}"):
        tile_offsets(length, tile, stride)


def _coverage(grid: TileGrid) -> np.ndarray:
    """How many tiles cover each raster pixel (brute force on an array)."""
    count = np.zeros((grid.height, grid.width), np.int32)
    for _, _, w in grid.windows():
        v = grid.valid(w)
        count[v.row_off : v.row_off + v.height, v.col_off : v.col_off + v.width] += 1
    return count


@pytest.mark.parametrize(
    "width, height, tile, overlap",
    [(1, 1, 128, 0), (1, 300, 128, 0), (300, 1, 128, 0), (100, 77, 128, 0), (257, 129, 128, 0),
     (257, 129, 128, 32), (640, 128, 128, 64), (129, 1000, 64, 0)],
)
def test_grid_covers_odd_rasters(width, height, tile, overlap):
    grid = TileGrid(width, height, tile, overlap)
    cover = _coverage(grid)
    assert cover.min() >= 1  # every pixel predicted
    if overlap == 0:
        assert cover.max() == 1  # the paper's protocol: each pixel by exactly one tile
    rows, cols = grid.shape
    assert len(grid) == rows * cols == len(list(grid.windows()))
    # no tile lies entirely outside the raster; tiles are full size (padded at edges)
    for _, _, w in grid.windows():
        assert (w.width, w.height) == (tile, tile)
        v = grid.valid(w)
        assert v.width > 0 and v.height > 0


@pytest.mark.parametrize(
    "window, width, height, expected",
    [
        (Window(-5, -3, 10, 10), 20, 20, Window(0, 0, 5, 7)),
        (Window(15, 15, 10, 10), 20, 20, Window(15, 15, 5, 5)),
        (Window(30, 0, 10, 10), 20, 20, Window(30, 0, 0, 10)),  # empty (outside)
        (Window(0, 0, 128, 128), 1, 300, Window(0, 0, 1, 128)),
    ],
)
def test_clip_window_table(window, width, height, expected):
    got = clip_window(window, width, height)
    assert (got.width, got.height) == (expected.width, expected.height)
    if expected.width and expected.height:
        assert (got.col_off, got.row_off) == (expected.col_off, expected.row_off)


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("col, row", [(0, 0), (128, 256), (384, 0)])
def test_context_window_is_centred_and_k_times_larger(factor, col, row):
    tile = 128
    w = Window(col, row, tile, tile)
    c = context_window(w, factor)
    assert (c.width, c.height) == (factor * tile, factor * tile)
    # same centre (in pixel coordinates)
    assert c.col_off + c.width / 2 == col + tile / 2
    assert c.row_off + c.height / 2 == row + tile / 2
    # brute force: the tile is the central T/k of the context once downsampled by k
    if factor > 1:
        assert (col - c.col_off) == (factor - 1) * tile // 2


def test_context_window_rejects_uncentrable_tile():
    with pytest.raises(ConfigError, match="a 65x65 tile has no centred x2 context window"):
        context_window(Window(0, 0, 65, 65), 2)


@pytest.mark.parametrize("width, strip_width, expected", [
    (100, None, [(0, 100)]),
    (100, 200, [(0, 100)]),
    (300, 128, [(0, 128), (128, 256), (256, 300)]),
])
def test_strips_table(width, strip_width, expected):
    assert strips(width, strip_width) == expected


@pytest.mark.parametrize("width, height, tile, overlap, strip_width", [
    (1000, 300, 128, 0, 512), (1000, 300, 128, 64, 256), (257, 129, 64, 16, 64), (50, 50, 64, 0, None),
])
def test_plan_covers_each_strip_row_major(width, height, tile, overlap, strip_width):
    grid = TileGrid(width, height, tile, overlap)
    plan = plan_tiles(grid, strip_width)
    all_tiles = {(int(w.col_off), int(w.row_off)) for _, _, w in grid.windows()}
    listed = [(int(w.col_off), int(w.row_off)) for _, w in plan]
    assert set(listed) == all_tiles
    if overlap == 0 and (strip_width is None or strip_width % tile == 0):
        assert len(listed) == len(all_tiles)  # no tile predicted twice
    for s, (x0, x1) in enumerate(strips(width, strip_width)):
        mine = [w for si, w in plan if si == s]
        # every output pixel of the strip is covered by the strip's own tiles
        cover = np.zeros((height, x1 - x0), bool)
        for w in mine:
            c0, c1 = max(int(w.col_off), x0), min(int(w.col_off) + tile, x1)
            r0, r1 = int(w.row_off), min(int(w.row_off) + tile, height)
            cover[r0:r1, c0 - x0 : c1 - x0] = True
        assert cover.all()
        rows = [int(w.row_off) for w in mine]
        assert rows == sorted(rows)  # row-major: rows above the current tile row are final
    strip_ids = [s for s, _ in plan]
    assert strip_ids == sorted(strip_ids)
