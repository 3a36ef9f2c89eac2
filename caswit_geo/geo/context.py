"""HR tiles and LR context read from a raster (docs/ARCHITECTURE.md, "HR tile and LR context").

The LR input of a tile is its ``k``-times larger centred window, resampled
to the tile size: area average for imagery, nearest for labels. Pixels
outside the raster are 0 (black) for imagery and 255 (ignore) for labels.
Reads never use ``boundless=True`` (slow, fill bugs): the part of the window
inside the raster is read and pasted onto a constant canvas.
"""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.windows import Window

from caswit_geo.core.spec import IGNORE_INDEX
from caswit_geo.geo.grid import clip_window, context_window
from caswit_geo.geo.masks import MaskRule, valid_mask, zero_invalid


def read_canvas(
    src: rasterio.io.DatasetReader,
    window: Window,
    bands: tuple[int, ...] | list[int],
    fill: int = 0,
    with_mask: bool = False,
    mask: MaskRule | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Read ``window`` (may extend past the raster) as a (C, h, w) array.

    Outside pixels are ``fill``. With ``with_mask`` also returns the (h, w)
    bool validity mask: inside the raster and valid in the GDAL dataset mask
    (nodata value, alpha band or internal mask; see :func:`.masks.valid_mask`;
    ``mask``: the dataset's rule, when the caller keeps it).
    """
    h, w = int(window.height), int(window.width)
    shape, dtype = (len(bands), h, w), src.dtypes[bands[0] - 1]
    inside = clip_window(window, src.width, src.height)
    if (int(inside.width), int(inside.height)) == (w, h) and not hasattr(src, "read_valid"):
        # wholly inside (most windows): read straight into the canvas, no fill and no copy
        out = src.read(list(bands), window=inside, out=np.empty(shape, dtype))
        return (out, valid_mask(src, inside, bands, data=out, rule=mask)) if with_mask else out
    out = np.full(shape, fill, dtype=dtype)
    valid = np.zeros((h, w), dtype=bool)
    if inside.width > 0 and inside.height > 0:
        r0 = int(inside.row_off - window.row_off)
        c0 = int(inside.col_off - window.col_off)
        sl = (slice(r0, r0 + int(inside.height)), slice(c0, c0 + int(inside.width)))
        if hasattr(src, "read_valid"):  # read at another pixel size (.resampled.ResampledReader)
            out[(slice(None), *sl)], valid[sl] = src.read_valid(bands, inside, mask)
            return (out, valid) if with_mask else out
        part = src.read(list(bands), window=inside, out=out[(slice(None), *sl)])
        if with_mask:
            valid[sl] = valid_mask(src, inside, bands, data=part, rule=mask)
    return (out, valid) if with_mask else out


def area_downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """(C, kH, kW) -> (C, H, W) float32 mean over k x k blocks (GDAL 'average')."""
    if factor == 1:
        return x.astype(np.float32)
    c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"{h}x{w} is not a multiple of the factor {factor}")
    # Summing the k*k strided views is several times faster than a reshaped mean and
    # exact for 8/16-bit values (sums stay below 2**24), so the result is the same.
    acc = np.zeros((c, h // factor, w // factor), np.float32)
    for i in range(factor):
        for j in range(factor):
            acc += x[:, i::factor, j::factor]
    return acc / np.float32(factor * factor)


def nearest_downsample(y: np.ndarray, factor: int) -> np.ndarray:
    """(..., kH, kW) -> (..., H, W): the pixel under each output pixel's centre (GDAL 'nearest')."""
    off = factor // 2
    return y[..., off::factor, off::factor]


def lowres_valid(valid: np.ndarray, factor: int) -> np.ndarray:
    """(kH, kW) bool -> (H, W) bool: True where the whole k x k block is valid.

    An LR pixel made partly of padding or nodata is black in part, so its
    label is not trusted (255).
    """
    if factor == 1:
        return valid.copy()
    h, w = valid.shape
    if h % factor or w % factor:
        raise ValueError(f"{h}x{w} is not a multiple of the factor {factor}")
    if valid.all():  # the usual tile, far from edges and nodata: a reduction over blocks is slow
        return np.ones((h // factor, w // factor), bool)
    return valid.reshape(h // factor, factor, w // factor, factor).all(axis=(1, 3))


def _tile_and_canvas(src, window: Window, bands, factor: int, mask: MaskRule | None):
    """(HR tile, kT context canvas with nodata set to 0, canvas validity, HR validity)."""
    ctx = context_window(window, factor)
    canvas, valid = read_canvas(src, ctx, bands, fill=0, with_mask=True, mask=mask)
    if not valid.all():
        zero_invalid(canvas, valid)
    t_h, t_w = int(window.height), int(window.width)
    r0, c0 = int(window.row_off - ctx.row_off), int(window.col_off - ctx.col_off)
    hr = canvas[:, r0 : r0 + t_h, c0 : c0 + t_w].copy()
    hr_valid = valid[r0 : r0 + t_h, c0 : c0 + t_w].copy()
    return hr, canvas, valid, hr_valid


def read_tile_and_context(
    src: rasterio.io.DatasetReader,
    window: Window,
    bands: tuple[int, ...] | list[int],
    factor: int,
    mask: MaskRule | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HR tile (C, T, T) raw values, LR context (C, T, T) float32, HR validity (T, T).

    Nodata pixels are set to 0 in both, so the model sees them as black.
    Reads the kT window once and cuts the tile from its centre.
    """
    hr, canvas, _, hr_valid = _tile_and_canvas(src, window, bands, factor, mask)
    return hr, area_downsample(canvas, factor), hr_valid


def read_tile_context_valid(
    src: rasterio.io.DatasetReader,
    window: Window,
    bands: tuple[int, ...] | list[int],
    factor: int,
    mask: MaskRule | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`read_tile_and_context` plus the LR validity (T, T) (:func:`lowres_valid`), for LR labels."""
    hr, canvas, valid, hr_valid = _tile_and_canvas(src, window, bands, factor, mask)
    return hr, area_downsample(canvas, factor), hr_valid, lowres_valid(valid, factor)


def read_label_and_context(
    src: rasterio.io.DatasetReader,
    window: Window,
    factor: int,
    band: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """HR labels (T, T) and LR labels (T, T) uint8, 255 outside the raster and at label nodata."""
    ctx = context_window(window, factor)
    canvas, valid = read_canvas(src, ctx, [band], fill=IGNORE_INDEX, with_mask=True)
    canvas = canvas[0].astype(np.uint8)
    canvas[~valid] = IGNORE_INDEX
    r0, c0 = int(window.row_off - ctx.row_off), int(window.col_off - ctx.col_off)
    hr = canvas[r0 : r0 + int(window.height), c0 : c0 + int(window.width)].copy()
    return hr, np.ascontiguousarray(nearest_downsample(canvas, factor))
