"""Writing tile predictions: a sink fed in plan order, run in its own thread.

The model loop hands each batch's results to :class:`SinkThread` through a
small bounded queue, so writing (compression included) overlaps the next
forward pass and memory stays bounded: when the writer lags, the model
loop waits. Only the writer thread touches the output datasets.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np
from rasterio.windows import Window

from ..geo.blend import NODATA, RowBlock, StripAccumulator
from ..geo.io import AtomicRasterWriter

# A tile's result: None (skipped, all nodata), (classes, confidence) uint8 (T, T) in hard
# mode, or (probabilities (K, T, T), validity (T, T)) in soft (blending) mode.
TileResult = tuple[np.ndarray, np.ndarray] | None


class TileSink:
    """Assembles tile results (plan order) into final rows and writes them.

    Args:
        plan: (strip index, tile window) in processing order.
        strips: column ranges of the strips.
        height: raster height.
        tile: tile size T.
        block: output block size (writes are aligned on it).
        classes_out / confidence_out: writers (confidence optional).
        num_classes: K when blending (soft mode); None for hard mode.
        row_areas: (row0, n) -> (n,) pixel areas in m2, or None when unknown.
    """

    def __init__(
        self,
        plan: list[tuple[int, Window]],
        strips: list[tuple[int, int]],
        height: int,
        tile: int,
        block: int,
        classes_out: AtomicRasterWriter,
        confidence_out: AtomicRasterWriter | None = None,
        num_classes: int | None = None,
        row_areas: Callable[[int, int], np.ndarray | None] | None = None,
    ) -> None:
        self.plan, self.strips, self.height = plan, strips, height
        self.tile, self.block = tile, block
        self.classes_out, self.confidence_out = classes_out, confidence_out
        self.num_classes = num_classes
        self.row_areas = row_areas
        self.acc: StripAccumulator | None = None
        self.strip = -1
        self.row = None
        self.pixels = np.zeros(256, np.int64)  # per class id; 255 = nodata
        self.areas = np.zeros(256, np.float64) if row_areas is not None else None
        self.peak_buffer_bytes = 0

    def put(self, pos: int, result: TileResult) -> None:
        strip, window = self.plan[pos]
        if strip != self.strip:
            self._finish_strip()
            x0, x1 = self.strips[strip]
            self.acc = StripAccumulator(x0, x1, self.height, self.tile, self.block, self.num_classes)
            self.peak_buffer_bytes = max(self.peak_buffer_bytes, self.acc.nbytes)
            self.strip, self.row = strip, int(window.row_off)
        if int(window.row_off) != self.row:  # a new tile row: the rows above it are final
            self._emit(self.acc.flush(int(window.row_off)))
            self.row = int(window.row_off)
        if result is None:
            return
        if self.num_classes is None:
            self.acc.add_hard(window, *result)
        else:
            self.acc.add_soft(window, *result)

    def close(self) -> None:
        self._finish_strip()

    def _finish_strip(self) -> None:
        if self.acc is not None:
            self._emit(self.acc.flush(None))
            self.acc = None

    def _emit(self, block: RowBlock | None) -> None:
        if block is None:
            return
        self.classes_out.write(block.window, block.classes)
        if self.confidence_out is not None:
            self.confidence_out.write(block.window, block.confidence)
        flat = block.classes.ravel()
        self.pixels += np.bincount(flat, minlength=256)
        if self.areas is not None:
            h, w = block.classes.shape
            rows = self.row_areas(int(block.window.row_off), h)
            if rows is None:
                self.areas = None
            else:
                self.areas += np.bincount(flat, weights=np.repeat(rows, w), minlength=256)


class SinkThread(threading.Thread):
    """Runs a :class:`TileSink` on batches from a bounded queue; errors surface in the caller."""

    def __init__(self, sink: TileSink, maxsize: int = 3) -> None:
        super().__init__(name="caswit-writer", daemon=True)
        self.sink = sink
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    item = self.queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is None:
                    self.sink.close()
                    return
                for pos, result in item:
                    self.sink.put(pos, result)
        except BaseException as e:  # re-raised in the model loop by submit()/finish()
            self.error = e

    def submit(self, item: list[tuple[int, TileResult]] | None) -> None:
        """Queue one batch of results (blocks while the queue is full)."""
        while True:
            self._raise_if_failed()
            if not self.is_alive():
                raise RuntimeError("the writer thread stopped unexpectedly")
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Flush everything and wait for the writes to end."""
        self.submit(None)
        self.join()
        self._raise_if_failed()

    def abort(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


__all__ = ["NODATA", "SinkThread", "TileResult", "TileSink"]
