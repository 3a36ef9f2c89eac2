"""Assembling tile predictions into output rows, with bounded memory.

Tiles arrive strip by strip, row-major within a strip (``grid.plan_tiles``).
A :class:`StripAccumulator` keeps only the rows a pending tile can still
touch: ``tile + block`` rows of the strip's width. Rows above the current
tile row are final; they are handed out in whole blocks (block-aligned
writes, each output block written once).

Two modes:
- hard (no overlap): tiles bring class ids and confidences, pasted as is;
- soft (overlap): tiles bring class probabilities, summed with a Hann
  weight window (smooth seams: a tile's border pixels, which saw the least
  context, weigh least) and normalised per pixel when the rows are final.

Units are pixels of the output raster. Nodata is 255 in both outputs;
confidences are the winning probability in percent (0..100).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

NODATA = 255


def hann_weights(tile: int, floor: float = 1e-3) -> np.ndarray:
    """(T, T) float32 separable Hann window, >= ``floor`` so edge-only pixels keep a weight."""
    i = np.arange(tile, dtype=np.float64)
    w1 = np.maximum(np.sin(np.pi * (i + 0.5) / tile) ** 2, floor)
    return np.outer(w1, w1).astype(np.float32)


@dataclass
class RowBlock:
    """Final output rows of one strip: ``window`` in raster pixels, (h, w) uint8 arrays.

    ``probabilities``: (K, h, w) uint8 percent per class (255 at nodata), when asked for.
    """

    window: Window
    classes: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None = None


class StripAccumulator:
    """Rolling buffer of one vertical strip ``[x0, x1)`` of a ``height``-row raster.

    Args:
        x0, x1: strip columns (raster pixels).
        height: raster height.
        tile: tile size T.
        block: output block size; flushed rows end on multiples of it.
        num_classes: K for soft mode (probabilities); None for hard mode.
        weights: (T, T) blending weights for soft mode (default Hann).
        probability_bands: K to hand out the class probabilities in percent too (0: not).
    """

    def __init__(
        self,
        x0: int,
        x1: int,
        height: int,
        tile: int,
        block: int,
        num_classes: int | None = None,
        weights: np.ndarray | None = None,
        probability_bands: int = 0,
    ) -> None:
        self.x0, self.x1, self.height = x0, x1, height
        self.tile, self.block = tile, block
        self.cap = tile + block  # rows a pending tile can reach below the last flushed row
        self.top = 0  # raster row of buffer row 0
        width = x1 - x0
        self.soft = num_classes is not None
        if self.soft:
            self.weights = hann_weights(tile) if weights is None else weights.astype(np.float32)
            self.psum = np.zeros((num_classes, self.cap, width), np.float32)  # (K, rows, W)
            self.wsum = np.zeros((self.cap, width), np.float32)
        else:
            self.cls = np.full((self.cap, width), NODATA, np.uint8)
            self.conf = np.full((self.cap, width), NODATA, np.uint8)
        self.with_probs = probability_bands > 0
        if self.with_probs and not self.soft:
            self.prob = np.full((probability_bands, self.cap, width), NODATA, np.uint8)  # (K, rows, W)

    @property
    def nbytes(self) -> int:
        if self.soft:
            return self.psum.nbytes + self.wsum.nbytes
        return self.cls.nbytes + self.conf.nbytes + (self.prob.nbytes if self.with_probs else 0)

    def _slices(self, window: Window) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """(buffer slices, tile slices) of the part of ``window`` inside the strip and raster."""
        c, r, t = int(window.col_off), int(window.row_off), self.tile
        r0, r1 = max(r, 0), min(r + t, self.height)
        c0, c1 = max(c, self.x0), min(c + t, self.x1)
        if r0 >= r1 or c0 >= c1:
            return None
        if r0 < self.top or r1 - self.top > self.cap:
            raise ValueError(f"tile at row {r} arrived after rows up to {self.top} were flushed")
        buf = (slice(r0 - self.top, r1 - self.top), slice(c0 - self.x0, c1 - self.x0))
        til = (slice(r0 - r, r1 - r), slice(c0 - c, c1 - c))
        return buf, til

    def add_hard(self, window: Window, classes: np.ndarray, confidence: np.ndarray,
                 probabilities: np.ndarray | None = None) -> None:
        """Paste (T, T) uint8 class ids and confidences, and (K, T, T) percent probabilities (255 already at nodata)."""
        s = self._slices(window)
        if s is not None:
            buf, til = s
            self.cls[buf] = classes[til]
            self.conf[buf] = confidence[til]
            if self.with_probs:
                self.prob[(slice(None), *buf)] = probabilities[(slice(None), *til)]

    def add_soft(self, window: Window, probs: np.ndarray, valid: np.ndarray) -> None:
        """Add (K, T, T) class probabilities where ``valid`` (T, T) holds, weighted."""
        s = self._slices(window)
        if s is not None:
            buf, til = s
            w = self.weights[til] * valid[til]  # (h, w): nodata pixels get no weight
            self.psum[(slice(None), *buf)] += probs[(slice(None), *til)].astype(np.float32) * w
            self.wsum[buf] += w

    def flush(self, next_row: int | None = None) -> RowBlock | None:
        """Hand out the rows above ``next_row`` (rounded down to a block); None = all rows left."""
        end = self.height if next_row is None else min(self.height, (next_row // self.block) * self.block)
        n = end - self.top
        if n <= 0:
            return None
        probs = None
        if self.soft:
            wsum = self.wsum[:n]
            cls = self.psum[:, :n].argmax(axis=0).astype(np.uint8)
            pmax = self.psum[:, :n].max(axis=0) / np.maximum(wsum, 1e-12)
            conf = np.rint(np.clip(pmax, 0, 1) * 100).astype(np.uint8)
            empty = wsum <= 0
            cls[empty] = NODATA
            conf[empty] = NODATA
            if self.with_probs:
                probs = percent(self.psum[:, :n] / np.maximum(wsum, 1e-12))
                probs[:, empty] = NODATA
            _shift(self.psum, n, 0, axis=1)
            _shift(self.wsum, n, 0, axis=0)
        else:
            cls = self.cls[:n].copy()
            conf = self.conf[:n].copy()
            _shift(self.cls, n, NODATA, axis=0)
            _shift(self.conf, n, NODATA, axis=0)
            if self.with_probs:
                probs = self.prob[:, :n].copy()
                _shift(self.prob, n, NODATA, axis=1)
        out = RowBlock(Window(self.x0, self.top, self.x1 - self.x0, n), cls, conf, probs)
        self.top = end
        return out


def percent(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 percent, rounded to the nearest (the confidence's rule)."""
    return np.rint(np.clip(probabilities, 0, 1) * 100).astype(np.uint8)


def _shift(a: np.ndarray, n: int, fill, axis: int) -> None:
    """Move ``a`` up by ``n`` rows along ``axis`` in place, filling the freed rows."""
    idx_src = [slice(None)] * a.ndim
    idx_dst = [slice(None)] * a.ndim
    idx_fill = [slice(None)] * a.ndim
    idx_src[axis], idx_dst[axis], idx_fill[axis] = slice(n, None), slice(None, a.shape[axis] - n), slice(-n, None)
    if n < a.shape[axis]:
        a[tuple(idx_dst)] = a[tuple(idx_src)]
    else:
        idx_fill[axis] = slice(None)
    a[tuple(idx_fill)] = fill
