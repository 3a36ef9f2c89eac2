"""A raster read at another pixel size, the same pixels whatever the window read.

``--resample`` reads the input on the model's grid. GDAL resamples per
request: a VRT source whose rectangle falls between pixels gives values that
depend on the window asked for, so a tile read alone and the same pixels cut
from a larger read differ, and the LR context of a file edge is off.

Here every output pixel is a function of its position on the output grid
alone: its kernel taps and weights come from its global column and row, and
the native pixels are read (decoded once) over the window plus the kernel's
reach. Shrinking averages the native pixels under the output pixel, weighted
by the area they cover (GDAL's warper 'average'); enlarging is bilinear
between the four nearest pixel centres. Both are separable: one pass over
rows, one over columns. Invalid native pixels (nodata, outside the raster)
carry no weight; an output pixel is valid where the native pixel under its
centre is (nearest, as masks are resampled).

The native raster may be an overview of the files (``mosaic.py`` picks the
level as gdalwarp does); a window whose native footprint is larger than
``READ_PIXELS`` is read in parts, with the same values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from caswit_geo.geo.context import read_canvas
from caswit_geo.geo.masks import mask_rule

STRIP_ROWS = 256  # output rows resampled at once: bounds the float copies of a large read
READ_PIXELS = 1 << 23  # native pixels decoded at once: a larger window is read in parts (same values)


def axis_taps(first: int, count: int, origin: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Kernel of output pixels ``first .. first + count - 1`` along one axis.

    Output pixel x covers native coordinates [origin + x * step, origin + (x + 1) * step).
    Returns (taps, count) native indices and float64 weights: the length of native pixel covered
    when ``step`` >= 1 (shrinking; not normalised, so that halves and quarters stay exact and a mean
    that ends in .5 rounds as it should), bilinear weights (summing to 1) otherwise.
    """
    x = np.arange(first, first + count, dtype=np.float64)
    if step >= 1:
        lo, hi = origin + x * step, origin + (x + 1) * step
        start = np.floor(lo).astype(np.int64)
        taps = int(math.ceil(step)) + 1
        index = start[None, :] + np.arange(taps)[:, None]
        return index, np.clip(np.minimum(hi[None, :], index + 1.0) - np.maximum(lo[None, :], index), 0.0, None)
    centre = origin + (x + 0.5) * step - 0.5  # the output pixel's centre, in native pixel-centre coordinates
    start = np.floor(centre).astype(np.int64)
    frac = centre - start
    return np.stack([start, start + 1]), np.stack([1.0 - frac, frac])


def nearest_index(first: int, count: int, origin: float, step: float) -> np.ndarray:
    """The native index under the centre of output pixels ``first .. first + count - 1``."""
    x = np.arange(first, first + count, dtype=np.float64)
    return np.floor(origin + (x + 0.5) * step).astype(np.int64)


def _apply(x: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Sum over taps of ``weights`` x the gathered ``x`` along ``axis`` (tap by tap: the same sums in the
    same order for a pixel whatever the window, so the same bits; a tap of zero weights everywhere adds
    nothing and is skipped)."""
    shape = (-1,) + (1,) * (x.ndim - 1 - axis)
    out = term = None
    for j in range(index.shape[0]):
        if j and not weights[j].any():
            continue
        term = np.take(x, index[j], axis=axis, out=term)
        term *= weights[j].reshape(shape)
        if out is None:
            out, term = term, None
        else:
            out += term
    return out


def _separable(x: np.ndarray, rows: tuple, cols: tuple, shrink: bool) -> np.ndarray:
    """Both passes, the one over rows first when shrinking (row gathers are plain copies, and the
    slower column pass then runs on fewer rows), the one over columns first when enlarging."""
    if shrink:
        return _apply(_apply(x, *rows, 1), *cols, 2)
    return _apply(_apply(x, *cols, 2), *rows, 1)


def _unit_weights(rows: np.ndarray, cols: np.ndarray, shrink: bool) -> np.ndarray:
    """(h, w): what :func:`_separable` gives for a canvas of ones, by the same operations in the same order
    (bit for bit), without reading one: a pixel's mean is then the same whether its window has nodata
    somewhere (divided by the resampled mask) or not."""
    first, second = (rows, cols) if shrink else (cols, rows)
    total = first[0].copy()
    for w in first[1:]:
        total += w
    out = None
    for w in second:
        term = total[:, None] * w[None, :] if shrink else w[:, None] * total[None, :]
        out = term if out is None else np.add(out, term, out=out)
    return out


def resample_canvas(
    canvas: np.ndarray, valid: np.ndarray, origin: tuple[float, float], step: tuple[float, float],
    window: Window, start: tuple[int, int], dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample the native (C, h, w) ``canvas`` (and its (h, w) ``valid``) to the output ``window``.

    ``origin`` (col, row) and ``step`` (x, y): native coordinates of output pixel (0, 0)'s top-left
    corner and native pixels per output pixel; ``start`` (col, row): the native pixel at canvas[:, 0, 0].
    The canvas must hold every tap of the window (:func:`native_window`).
    """
    c0, r0, w, h = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
    ci, cw = axis_taps(c0, w, origin[0], step[0])
    ri, rw = axis_taps(r0, h, origin[1], step[1])
    ci, ri = ci - start[0], ri - start[1]
    work = np.float64 if np.dtype(dtype).itemsize >= 4 else np.float32
    cw, rw = cw.astype(work), rw.astype(work)
    out = np.empty((canvas.shape[0], h, w), dtype)
    # validity: the native pixel under each output centre
    cn = nearest_index(c0, w, origin[0], step[0]) - start[0]
    rn = nearest_index(r0, h, origin[1], step[1]) - start[1]
    out_valid = valid[np.ix_(rn, cn)]
    all_valid = bool(valid.all())
    shrink = step[1] >= 1
    for s in range(0, h, STRIP_ROWS):
        rows = slice(s, min(s + STRIP_ROWS, h))
        lo, hi = int(ri[:, rows].min()), int(ri[:, rows].max()) + 1
        part = canvas[:, lo:hi].astype(work)
        taps = ((ri[:, rows] - lo, rw[:, rows]), (ci, cw))
        if all_valid:
            value = _separable(part, *taps, shrink)
            value /= _unit_weights(rw[:, rows], cw, shrink)
        else:
            m = valid[lo:hi].astype(work)
            part *= m
            num = _separable(part, *taps, shrink)
            den = _separable(m[None], *taps, shrink)
            value = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        out[:, rows] = _to_dtype(value, dtype)
    return out, out_valid


def _to_dtype(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round to nearest (halves up, as GDAL) and clip to an integer type's range."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return value.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.floor(value + 0.5), info.min, info.max).astype(dtype)


def native_window(window: Window, origin: tuple[float, float], step: tuple[float, float]) -> Window:
    """The native pixels every tap of the output ``window`` reads (may extend past the raster)."""
    ci, _ = axis_taps(int(window.col_off), int(window.width), origin[0], step[0])
    ri, _ = axis_taps(int(window.row_off), int(window.height), origin[1], step[1])
    cn = nearest_index(int(window.col_off), int(window.width), origin[0], step[0])
    rn = nearest_index(int(window.row_off), int(window.height), origin[1], step[1])
    c_lo, c_hi = min(int(ci.min()), int(cn.min())), max(int(ci.max()), int(cn.max())) + 1
    r_lo, r_hi = min(int(ri.min()), int(rn.min())), max(int(ri.max()), int(rn.max())) + 1
    return Window(c_lo, r_lo, c_hi - c_lo, r_hi - r_lo)


def read_parts(window: Window, step: tuple[float, float], budget: int | None = None) -> list[Window]:
    """``window`` cut into parts whose native footprints hold about ``budget`` (default ``READ_PIXELS``)
    pixels at most (whole rows of the window when they fit): a tenfold shrink reads 100 native pixels
    per output pixel."""
    budget = budget or READ_PIXELS
    c0, r0, w, h = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
    sx, sy = max(step[0], 1.0), max(step[1], 1.0)
    pw = w if (w * sx + 2) * (sy + 2) <= budget else max(1, int(math.sqrt(budget / (sx * sy))))
    ph = max(1, int((budget / (pw * sx + 2) - 2) / sy))
    return [Window(c, r, min(pw, c0 + w - c), min(ph, r0 + h - r))
            for r in range(r0, r0 + h, ph) for c in range(c0, c0 + w, pw)]


def overview_for(native_res: float, overview_factors: Sequence[int], target_res: float) -> int | None:
    """The overview level to read ``target_res`` from, as gdalwarp does by default (-ovr AUTO): the
    coarsest whose pixels are not larger than the target's; None: the full resolution."""
    level = None
    for i, factor in enumerate(overview_factors):
        if native_res * factor <= target_res * (1 + 1e-9):
            level = i
    return level


@dataclass(frozen=True)
class ResampledSource:
    """``native`` (a path or a VRT document; its ``overview`` level, None for the full resolution) read
    on the grid ``transform`` (``width`` x ``height``); picklable, so readers in other processes open it
    themselves."""

    native: str
    width: int
    height: int
    transform: Affine
    overview: int | None = None

    def open(self) -> "ResampledReader":
        kwargs = {} if self.overview is None else {"overview_level": self.overview}
        return ResampledReader(rasterio.open(self.native, **kwargs), self.width, self.height, self.transform)


class ResampledReader:
    """The few dataset attributes and reads predict uses, over a native dataset read resampled."""

    def __init__(self, native: rasterio.io.DatasetReader, width: int, height: int, transform: Affine):
        self.native, self.width, self.height, self.transform = native, width, height, transform
        inv = ~native.transform
        self.origin = inv * (transform.c, transform.f)  # native (col, row) of output pixel (0, 0)'s corner
        self.step = (abs(transform.a / native.transform.a), abs(transform.e / native.transform.e))
        self.crs, self.count, self.dtypes = native.crs, native.count, native.dtypes
        self.nodatavals, self.colorinterp = native.nodatavals, native.colorinterp
        self.mask_flag_enums = native.mask_flag_enums
        self._rule = None

    def read_valid(self, bands: Sequence[int], window: Window, rule=None) -> tuple[np.ndarray, np.ndarray]:
        """(C, h, w) values and (h, w) validity of ``window`` (inside this grid), decoded once (in parts
        of at most ``READ_PIXELS`` native pixels)."""
        if rule is None:
            rule = self._rule = self._rule or mask_rule(self.native, bands)
        dtype = np.dtype(self.dtypes[bands[0] - 1])
        parts = read_parts(window, self.step)
        if len(parts) > 1:
            out = np.empty((len(bands), int(window.height), int(window.width)), dtype)
            out_valid = np.empty((int(window.height), int(window.width)), bool)
            for part in parts:
                at = (slice(int(part.row_off - window.row_off), int(part.row_off - window.row_off + part.height)),
                      slice(int(part.col_off - window.col_off), int(part.col_off - window.col_off + part.width)))
                out[(slice(None), *at)], out_valid[at] = self.read_valid(bands, part, rule)
            return out, out_valid
        need = native_window(window, self.origin, self.step)
        canvas, valid = read_canvas(self.native, need, bands, fill=0, with_mask=True, mask=rule)
        return resample_canvas(canvas, valid, self.origin, self.step, window,
                               (int(need.col_off), int(need.row_off)), dtype)

    def read(self, indexes: int | Sequence[int], window: Window | None = None) -> np.ndarray:
        bands = [indexes] if isinstance(indexes, int) else list(indexes)
        data, _ = self.read_valid(bands, window or Window(0, 0, self.width, self.height))
        return data[0] if isinstance(indexes, int) else data

    def read_masks(self, band: int = 1, window: Window | None = None) -> np.ndarray:
        _, valid = self.read_valid([band], window or Window(0, 0, self.width, self.height))
        return valid.astype(np.uint8) * 255

    def close(self) -> None:
        self.native.close()

    def __enter__(self) -> "ResampledReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_reader(source: "str | ResampledSource"):
    """Open what a :class:`.mosaic.Mosaic` reads from: a rasterio dataset, or a resampled reader."""
    return source.open() if isinstance(source, ResampledSource) else rasterio.open(source)


__all__ = ["ResampledReader", "ResampledSource", "axis_taps", "native_window", "open_reader", "overview_for",
           "read_parts", "resample_canvas"]
