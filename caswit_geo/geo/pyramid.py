"""Overview pyramids of class and confidence rasters, level by level, in pieces.

Each level halves the one below: a class pixel is the majority class of
its 2 x 2 block (ties go to the smaller class id; nodata 255 does not vote
and wins only where the block has no class), a confidence pixel is the mean
of the valid values of its block, rounded half up. At a raster edge of odd
size the last row or column of a level covers one pixel of the level below.

Because a level depends only on 2 x 2 blocks of the level below, any
piece of a raster whose offsets (in pixels) are multiples of 2^L has, up
to level 2^L, the pyramid of its own pixels: the units of a prediction
compute theirs while they are written, and the outputs are assembled
without reading the whole raster again to build overviews. Pure numpy.
"""

from __future__ import annotations

import numpy as np

NODATA = 255


def levels_for(width: int, height: int, block: int) -> list[int]:
    """Overview factors 2, 4, ... until the level's larger side fits in one block (GDAL's COG rule)."""
    factors, f = [], 2
    while max(-(-width // (f // 2)), -(-height // (f // 2))) > block:
        factors.append(f)
        f *= 2
    return factors


def level_shape(height: int, width: int, factor: int) -> tuple[int, int]:
    """(rows, cols) of the level ``factor`` of a ``height`` x ``width`` raster (ceil at each halving)."""
    while factor > 1:
        height, width, factor = -(-height // 2), -(-width // 2), factor // 2
    return height, width


def _blocks(a: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four pixels of each 2 x 2 block, the raster padded with nodata to even sizes."""
    h, w = a.shape
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2)), constant_values=NODATA)
    return a[0::2, 0::2], a[0::2, 1::2], a[1::2, 0::2], a[1::2, 1::2]


def majority2(classes: np.ndarray) -> np.ndarray:
    """(h, w) uint8 class ids -> (ceil(h/2), ceil(w/2)): the majority class of each 2 x 2 block."""
    quad = _blocks(classes)
    best = np.full(quad[0].shape, -1, np.int32)
    for x in quad:
        votes = sum((x == y).astype(np.int32) for y in quad)
        # rank by votes, then by the smaller id; nodata never wins against a class
        key = np.where(x != NODATA, votes * 256 + (255 - x.astype(np.int32)), -1)
        np.maximum(best, key, out=best)
    return np.where(best >= 0, 255 - best % 256, NODATA).astype(np.uint8)


def mean2(confidence: np.ndarray) -> np.ndarray:
    """(h, w) uint8 -> (ceil(h/2), ceil(w/2)): the mean of each block's valid values, rounded half up."""
    quad = _blocks(confidence)
    total = np.zeros(quad[0].shape, np.int32)
    count = np.zeros(quad[0].shape, np.int32)
    for x in quad:
        valid = x != NODATA
        total += np.where(valid, x, 0)
        count += valid
    mean = (2 * total + count) // np.maximum(2 * count, 1)  # floor(total / count + 1/2)
    return np.where(count > 0, mean, NODATA).astype(np.uint8)


def pyramid(image: np.ndarray, factors: list[int], is_classes: bool) -> list[np.ndarray]:
    """The levels ``factors`` (2, 4, ... in order) of ``image``, each from the one below."""
    reduce = majority2 if is_classes else mean2
    out, level, f = [], image, 1
    for target in factors:
        while f < target:
            level, f = reduce(level), f * 2
        out.append(level)
    return out


def pack_layout(height: int, width: int, factors: list[int]) -> tuple[list[tuple[int, int, int]], int, int]:
    """Levels packed side by side in one raster: [(x offset, rows, cols)], total rows, total cols."""
    layout, x = [], 0
    for f in factors:
        rows, cols = level_shape(height, width, f)
        layout.append((x, rows, cols))
        x += cols
    rows = max((r for _, r, _ in layout), default=0)
    return layout, rows, x
