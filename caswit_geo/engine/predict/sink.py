"""Writing tile predictions: each unit's tiles assembled into its part file, in a thread of its own.

The model loop hands each batch's results to :class:`SinkThread` through a
small bounded queue, so writing (compression included) overlaps the next
forward pass and memory stays bounded: when the writer lags, the model
loop waits. Only the writer thread touches the part files.

A :class:`UnitWriter` routes results (positions in this run's tile list) to
the :class:`TileSink` of their unit; when a unit's last tile arrives, its
part file is completed and renamed into the job folder, which is what makes
the unit done (``job.py``). Each block of rows also feeds the unit's
overview pyramid (``geo/pyramid.py``), written beside the part, so that
assembling the outputs needs no second pass to build overviews.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from caswit_geo.engine.predict.job import Job
from caswit_geo.engine.predict.plan import PredictPlan, Unit
from caswit_geo.geo.area import row_areas_m2
from caswit_geo.geo.blend import NODATA, RowBlock, StripAccumulator
from caswit_geo.geo.forks import track
from caswit_geo.geo.grid import strips
from caswit_geo.geo.masks import MaskRule, mask_rule, valid_mask
from caswit_geo.geo.mosaic import build_vrt_xml
from caswit_geo.geo.profiles import overview_levels_profile, part_profile
from caswit_geo.geo.pyramid import pack_layout, pyramid
from caswit_geo.safeio.writes import AtomicWrite, atomic_path

# A tile's result: None (skipped, all nodata), (classes, confidence) uint8 (T, T) in hard
# mode, plus (K, T, T) uint8 percent probabilities when they are written, or
# (probabilities (K, T, T), validity (T, T)) in soft (blending) mode.
TileResult = tuple[np.ndarray, ...] | None


class TileSink:
    """Assembles one unit's tile results (in its plan order) into final rows and hands them out.

    Args:
        plan: (strip index, tile window in the unit's pixels) in processing order.
        strips: column ranges of the strips (the unit's pixels).
        height: unit height.
        tile: tile size T.
        block: output block size (rows are handed out block-aligned).
        out: receives each block of final rows.
        num_classes: K when blending (soft mode); None for hard mode.
        probability_bands: K when the class probabilities are written too (0: not).
    """

    def __init__(
        self,
        plan: list[tuple[int, Window]],
        strips: list[tuple[int, int]],
        height: int,
        tile: int,
        block: int,
        out: Callable[[RowBlock], None],
        num_classes: int | None = None,
        probability_bands: int = 0,
    ) -> None:
        self.plan, self.strips, self.height = plan, strips, height
        self.tile, self.block = tile, block
        self.out = out
        self.num_classes = num_classes
        self.probability_bands = probability_bands
        self.acc: StripAccumulator | None = None
        self.strip = -1
        self.row = None
        self.peak_buffer_bytes = 0

    def put(self, pos: int, result: TileResult) -> None:
        strip, window = self.plan[pos]
        if strip != self.strip:
            self._finish_strip()
            x0, x1 = self.strips[strip]
            self.acc = StripAccumulator(x0, x1, self.height, self.tile, self.block, self.num_classes,
                                        probability_bands=self.probability_bands)
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
        if block is not None:
            self.out(block)


class _PartRaster:
    """A part raster of the job, open for writing under a temporary name until :meth:`commit`.

    Flushed to disk before it is renamed: a part's name alone says what is
    done (``job.py``), so a power loss must not leave the name on missing data.
    """

    def __init__(self, path: os.PathLike, profile: dict) -> None:
        self.file = AtomicWrite(path, fsync=True)
        try:
            self.dst = rasterio.open(self.file.tmp, "w", **profile)
        except BaseException:
            self.file.abort()
            raise

    def commit(self, tags: dict[str, str] | None = None) -> None:
        if tags:
            self.dst.update_tags(**tags)
        self.dst.close()
        self.file.commit()

    def abort(self) -> None:
        if not self.dst.closed:
            try:
                self.dst.close()
            except Exception:
                pass
        self.file.abort()


class PartWriter:
    """One unit's part file: classes (band 1) and confidence (band 2, when asked), uint8, nodata 255.

    Layout of :func:`~caswit_geo.geo.profiles.part_profile`; its tags carry the unit's statistics.
    """

    def __init__(self, path: os.PathLike, width: int, height: int, crs: CRS | None, transform: Affine,
                 block: int, confidence: bool) -> None:
        self.confidence = confidence
        self.part = _PartRaster(path, part_profile(width, height, crs, transform, block, count=2 if confidence else 1))

    def write(self, block: RowBlock) -> None:
        self.part.dst.write(block.classes, 1, window=block.window)
        if self.confidence:
            self.part.dst.write(block.confidence, 2, window=block.window)

    def commit(self, stats: dict, identity: dict) -> None:
        self.part.commit({"CASWIT_UNIT": json.dumps(stats), "CASWIT_PART": json.dumps(identity)})

    def abort(self) -> None:
        self.part.abort()


class ProbabilityPartWriter:
    """One unit's class probabilities: K uint8 bands, percent, nodata 255, beside its part file.

    Committed before the unit's part file, whose name alone says the unit is
    done: a done unit always has its probabilities.
    """

    def __init__(self, path: os.PathLike, width: int, height: int, crs: CRS | None, transform: Affine,
                 block: int, bands: int) -> None:
        self.part = _PartRaster(path, part_profile(width, height, crs, transform, block, count=bands))

    def write(self, block: RowBlock) -> None:
        self.part.dst.write(block.probabilities, window=block.window)

    def commit(self, identity: dict) -> None:
        self.part.commit({"CASWIT_PART": json.dumps(identity)})

    def abort(self) -> None:
        self.part.abort()


class UnitPyramid:
    """A unit's overview levels (classes, and confidence), filled block by block, written packed."""

    def __init__(self, height: int, width: int, factors: list[int], confidence: bool) -> None:
        self.factors, self.confidence = factors, confidence
        self.layout, rows, cols = pack_layout(height, width, factors)
        self.classes = np.full((rows, cols), NODATA, np.uint8)
        self.conf = np.full((rows, cols), NODATA, np.uint8) if confidence else None

    def add(self, block: RowBlock) -> None:
        """Levels of a block of rows whose offsets are multiples of every factor."""
        r0, c0 = int(block.window.row_off), int(block.window.col_off)
        levels = pyramid(block.classes, self.factors, True)
        conf = pyramid(block.confidence, self.factors, False) if self.confidence else [None] * len(levels)
        for f, (x, _, _), cls, cf in zip(self.factors, self.layout, levels, conf):
            h, w = cls.shape
            sl = (slice(r0 // f, r0 // f + h), slice(x + c0 // f, x + c0 // f + w))
            self.classes[sl] = cls
            if cf is not None:
                self.conf[sl] = cf

    def write(self, path: os.PathLike, identity: dict) -> None:
        """Write the levels to ``path`` (flushed to disk first), tagged with the unit's ``identity``."""
        rows, cols = self.classes.shape
        profile = overview_levels_profile(cols, rows, count=2 if self.confidence else 1)
        with atomic_path(path, fsync=True) as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(self.classes, 1)
                if self.confidence:
                    dst.write(self.conf, 2)
                dst.update_tags(CASWIT_PART=json.dumps(identity))


@dataclass
class UnitDone:
    """What a finished unit reports (also stored in its part file's tags)."""

    unit: int
    tiles: int
    tiles_run: int
    pixels: dict[int, int]  # class id -> pixels; 255 = nodata
    areas: dict[int, float] | None  # class id -> m2; None without a usable CRS
    seconds: float

    def to_dict(self) -> dict:
        return dict(unit=self.unit, tiles=self.tiles, tiles_run=self.tiles_run, seconds=round(self.seconds, 3),
                    pixels={str(k): v for k, v in self.pixels.items()},
                    areas=None if self.areas is None else {str(k): v for k, v in self.areas.items()})

    @classmethod
    def from_dict(cls, d: dict) -> "UnitDone":
        areas = d.get("areas")
        return cls(int(d["unit"]), int(d["tiles"]), int(d["tiles_run"]),
                   {int(k): int(v) for k, v in d["pixels"].items()},
                   None if areas is None else {int(k): float(v) for k, v in areas.items()}, float(d["seconds"]))


class UnitWriter:
    """Routes tile results (positions in this run's tile list) to their unit; completes each unit's part.

    Args:
        plan: the job's plan.
        job: the job folder (parts go to ``job.units_dir``).
        units: the units of this run, in order.
        tiles: each unit's (strip, tile window in mosaic pixels), as read by the source.
        on_done: called (in the writer thread) with each finished unit's report.
    """

    def __init__(self, plan: PredictPlan, job: Job, units: list[Unit],
                 tiles: list[list[tuple[int, Window]]], on_done: Callable[[UnitDone], None]) -> None:
        self.plan, self.job, self.units, self.tiles, self.on_done = plan, job, units, tiles, on_done
        self.ends = np.cumsum([len(t) for t in tiles])  # position after each unit's last tile
        self.current = -1
        self.sink: TileSink | None = None
        self.part: PartWriter | None = None
        self.probs: ProbabilityPartWriter | None = None
        self.pyramid: UnitPyramid | None = None
        self.masks: dict[int, tuple[rasterio.io.DatasetReader, MaskRule]] = {}
        self._reset_stats()

    def _reset_stats(self) -> None:
        self.pixels = np.zeros(256, np.int64)
        self.areas: np.ndarray | None = np.zeros(256, np.float64)
        self.tiles_run = 0
        self.started = time.perf_counter()

    def put(self, pos: int, result: TileResult) -> None:
        j = int(np.searchsorted(self.ends, pos, side="right"))
        if j != self.current:
            if self.part is not None:
                raise RuntimeError(f"unit {self.units[self.current].id} ended before its last tile")
            self._begin(j)
        start = int(self.ends[j - 1]) if j else 0
        self.sink.put(pos - start, result)
        self.tiles_run += result is not None
        if pos == int(self.ends[j]) - 1:
            self._complete()

    def _begin(self, j: int) -> None:
        unit = self.units[j]
        region = self.plan.region(unit)
        w, h = int(unit.window.width), int(unit.window.height)
        local = [(s, Window(int(t.col_off) - int(region.col_off), int(t.row_off) - int(region.row_off),
                            int(t.width), int(t.height))) for s, t in self.tiles[j]]
        self.part = PartWriter(self.job.part_path(unit.id), w, h, self.plan.mosaic.crs,
                               self.plan.unit_transform(unit), self.plan.block, self.plan.with_confidence)
        bands = len(self.plan.classes) if self.plan.with_probabilities else 0
        if bands:
            self.probs = ProbabilityPartWriter(self.job.probabilities_path(unit.id), w, h, self.plan.mosaic.crs,
                                               self.plan.unit_transform(unit), self.plan.block, bands)
        self.sink = TileSink(local, strips(w, self.plan.strip_width), h, self.plan.grid.tile, self.plan.block,
                             self._write, len(self.plan.classes) if self.plan.soft else None, bands)
        factors = self.plan.unit_levels(unit)
        self.pyramid = UnitPyramid(h, w, factors, self.plan.with_confidence) if factors else None
        self.current = j
        self._reset_stats()

    def _write(self, block: RowBlock) -> None:
        unit = self.units[self.current]
        raster = self.plan.rasters[unit.raster]
        valid = None
        if raster.source is not None:  # per-file output: nodata where this file is nodata
            src, rule = self._mask(unit.raster)
            win = Window(int(unit.window.col_off + block.window.col_off), int(unit.window.row_off + block.window.row_off),
                         int(block.window.width), int(block.window.height))
            valid = valid_mask(src, win, self.plan.mosaic.bands, rule=rule)
        if self.plan.roi is not None:  # nodata outside the region's polygons (pixel-centre rule)
            region = self.plan.region_window(unit, block.window)
            inside = self.plan.roi.mask(region)
            valid = inside if valid is None else valid & inside
        if valid is not None:
            block = RowBlock(block.window, np.where(valid, block.classes, NODATA).astype(np.uint8),
                             np.where(valid, block.confidence, NODATA).astype(np.uint8),
                             None if block.probabilities is None else
                             np.where(valid, block.probabilities, NODATA).astype(np.uint8))
        self.part.write(block)
        if self.probs is not None:
            self.probs.write(block)
        if self.pyramid is not None:
            self.pyramid.add(block)
        flat = block.classes.ravel()
        self.pixels += np.bincount(flat, minlength=256)
        if self.areas is not None:
            h, w = block.classes.shape
            rows = row_areas_m2(self.plan.mosaic.crs, self.plan.unit_transform(unit), int(block.window.row_off), h)
            if rows is None:
                self.areas = None
            else:
                self.areas += np.bincount(flat, weights=np.repeat(rows, w), minlength=256)

    def _mask(self, index: int) -> tuple[rasterio.io.DatasetReader, MaskRule]:
        if index not in self.masks:
            raster, mosaic = self.plan.rasters[index], self.plan.mosaic
            xml = build_vrt_xml([mosaic.files[raster.source]], raster.transform, int(raster.window.width),
                                int(raster.window.height), mosaic.bands, mosaic.crs, mosaic.resampled)
            src = rasterio.open(xml)
            self.masks[index] = (src, mask_rule(src, mosaic.bands))
        return self.masks[index]

    def _complete(self) -> None:
        unit = self.units[self.current]
        self.sink.close()
        nz = np.flatnonzero(self.pixels)
        done = UnitDone(
            unit=unit.id, tiles=len(self.tiles[self.current]), tiles_run=self.tiles_run,
            pixels={int(i): int(self.pixels[i]) for i in nz},
            areas=None if self.areas is None else {int(i): float(self.areas[i]) for i in nz if i != NODATA},
            seconds=time.perf_counter() - self.started,
        )
        identity = self.job.part_identity(unit)
        if self.pyramid is not None:
            self.pyramid.write(self.job.pyramid_path(unit.id), identity)
        if self.probs is not None:
            self.probs.commit(identity)
        self.part.commit(done.to_dict(), identity)  # last: the part's name says the unit is done
        self.part, self.sink, self.pyramid, self.probs = None, None, None, None
        self.on_done(done)

    def close(self) -> None:
        """After the last result: nothing may be pending (an unfinished unit is dropped)."""
        self.abort()

    def abort(self) -> None:
        if self.part is not None:
            self.part.abort()
            self.part, self.sink = None, None
        if self.probs is not None:
            self.probs.abort()
            self.probs = None
        for src, _ in self.masks.values():
            src.close()
        self.masks = {}


class SinkThread(threading.Thread):
    """Runs a :class:`UnitWriter` on batches from a bounded queue; errors surface in the caller."""

    def __init__(self, sink: UnitWriter, maxsize: int = 3) -> None:
        super().__init__(name="caswit-writer", daemon=True)
        self.sink = sink
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        track(self)  # it writes with GDAL: a later fork waits until its GDAL state is gone
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
        finally:
            if self.stop_event.is_set() or self.error is not None:
                self.sink.abort()

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

    def drain(self, timeout: float = 30.0) -> None:
        """Write what is queued (units whose last tile is in are completed), then stop."""
        end = time.monotonic() + timeout
        while self.is_alive() and time.monotonic() < end:
            try:
                self.queue.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        self.join(timeout=max(0.0, end - time.monotonic()))
        if self.is_alive():
            self.abort()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


__all__ = ["NODATA", "PartWriter", "ProbabilityPartWriter", "SinkThread", "TileResult", "TileSink", "UnitDone", "UnitWriter"]
