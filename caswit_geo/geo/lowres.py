"""LR context of every tile from one k-times downsampled raster (a single pre-pass).

The LR input of a T x T tile at (row, col) is its kT x kT centred window,
area-averaged k x k to T x T, black outside the raster and at nodata
(docs/ARCHITECTURE.md, "HR tile and LR context"; :func:`.context.read_tile_and_context` builds it per
tile). Read that way, every source pixel is read k^2 times for the context
alone. Instead, one pass computes the k x k *sums* of the whole raster on a
grid whose origin is the context origin of tile (0, 0), i.e. shifted by
-(k-1)T/2 pixels; the LR context of the tile at (row, col) is then the
T x T window at (row/k, col/k) of that "pre-pass raster", divided by k^2.
Each source pixel is read once here, and the pre-pass raster (k^2 times
fewer pixels) about k^2 times in total. Sums are integers (exact), so the
result equals the per-tile mean bit for bit.

The pre-pass raster is stored as chunk files (``chunk`` pixels each),
written one by one under a temporary name and renamed when complete. A
:class:`LowResBuilder` thread writes them in the order the tile plan needs
them while the model already runs; readers (DataLoader workers) wait for
the chunks of their tile. A chunk's content depends only on the source and
the grid, so several processes (shards, resumed runs) may share the chunk
folder: a builder skips the chunks that exist, and two processes writing
the same chunk at once write the same bytes under their own temporary
names. This needs tile offsets that are multiples of k
(the stride a multiple of k); :func:`prepass_supported` says when,
otherwise read per tile.

When the tiles are read in the builder's own process (no reader process),
its chunks are handed over in memory and no file is written: a file would
only be read back by this process.

The pixels the pre-pass decodes are kept for the tile readers
(:class:`DecodedChunks`), so a run decodes each source block once. The
builder gets as many cores as there are readers: GDAL decodes the source
blocks of each chunk's read in parallel, and only when a read meets fewer
blocks than there are cores do more threads take groups of chunks (a
unit's) of their own (:func:`decoding_threads`).
"""

from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from caswit_geo.core.errors import InputError
from caswit_geo.geo.context import read_canvas
from caswit_geo.geo.forks import track
from caswit_geo.geo.grid import TileGrid
from caswit_geo.geo.masks import MaskRule, mask_rule, zero_invalid
from caswit_geo.geo.profiles import lowres_chunk_profile
from caswit_geo.geo.raster_cache import RasterHandles
from caswit_geo.geo.resampled import ResampledSource, open_reader
from caswit_geo.safeio.files import remove_path, temp_path
from caswit_geo.safeio.sweep import holding
from caswit_geo.safeio.writes import atomic_path

RUNNING = "RUNNING"  # marker made when a builder starts (a name of its process's own)...
FAILED = "FAILED"  # ...renamed to this when it stops early: readers must not wait (LowResBuilder.failed)


def prepass_supported(tile: int, stride: int, factor: int) -> bool:
    """True when every tile's context window starts on the pre-pass grid."""
    return factor >= 1 and stride % factor == 0 and ((factor - 1) * tile) % 2 == 0


def decoding_threads(cores: int, groups: int, blocks_per_read: int) -> tuple[int, int]:
    """(threads taking groups of chunks, GDAL decoding threads of each) for a pre-pass given ``cores``.

    Each thread decodes through its own GDAL handle and block cache, so a source block on the edge between
    two threads' groups is decoded by both (JPEG 2000 at 8192 px with a chunk row that never lines up with
    its 1024 px codestream tiles: 14-16 CPU-s in two threads, 13 in one). Within one thread GDAL decodes
    the blocks of a read in parallel (GDAL_NUM_THREADS). So: as few threads as keep the cores busy, given
    the blocks a chunk's read meets.
    """
    cores = max(1, cores)
    threads = max(1, min(groups, -(-cores // max(1, blocks_per_read))))
    return threads, -(-cores // threads)


def largest_sum(src_dtype: str, factor: int) -> int:
    """The largest k x k sum of ``src_dtype`` values."""
    return int(np.iinfo(np.dtype(src_dtype)).max) * factor * factor


def sum_dtype(src_dtype: str, factor: int) -> np.dtype:
    """Smallest unsigned type holding a k x k sum of ``src_dtype`` values."""
    return np.dtype(np.uint16) if largest_sum(src_dtype, factor) <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


@dataclass(frozen=True)
class LowResRaster:
    """Geometry of the pre-pass raster of a tile grid, stored as chunk files in ``folder``.

    ``width``/``height`` in pre-pass pixels (k source pixels each);
    ``chunk`` = (rows, cols) of a chunk file; ``transform`` georeferences
    the pre-pass grid (source transform shifted by the context origin,
    scaled by k).
    """

    folder: str
    tile: int
    factor: int
    width: int
    height: int
    count: int
    dtype: str
    transform: Affine
    crs: object = None
    chunk: tuple[int, int] = (256, 1024)
    max_sum: int | None = None  # the largest k x k sum of the source's values (None: not checked)

    @property
    def origin(self) -> int:
        """Offset (pixels of the source raster) of the pre-pass grid origin: -(k-1)T/2."""
        return -(self.factor - 1) * self.tile // 2

    @property
    def chunk_grid(self) -> tuple[int, int]:
        return -(-self.height // self.chunk[0]), -(-self.width // self.chunk[1])

    def blocks_per_read(self, block_width: float) -> int:
        """The most source blocks ``block_width`` pixels wide (from the source's column 0) a chunk's read meets
        across."""
        bw, most = max(1.0, block_width), 1
        for bj in range(self.chunk_grid[1]):
            w = self.source_window(0, bj)
            c0, c1 = max(0, int(w.col_off)), int(w.col_off) + int(w.width)
            if c1 > c0:
                most = max(most, int((c1 - 1) // bw - c0 // bw + 1))
        return most

    def chunk_path(self, bi: int, bj: int) -> Path:
        return Path(self.folder) / f"lr_{bi:05d}_{bj:05d}.tif"

    def chunk_window(self, bi: int, bj: int) -> Window:
        ch, cw = self.chunk
        return Window(bj * cw, bi * ch, min(cw, self.width - bj * cw), min(ch, self.height - bi * ch))

    def source_window(self, bi: int, bj: int) -> Window:
        """The source pixels summed into chunk (bi, bj) (may extend past the source raster)."""
        k, out = self.factor, self.chunk_window(bi, bj)
        return Window(self.origin + k * int(out.col_off), self.origin + k * int(out.row_off),
                      k * int(out.width), k * int(out.height))

    def source_chunks(self, window: Window) -> list[tuple[int, int]]:
        """The chunks whose source pixels meet ``window`` (source pixels, inside the pre-pass raster)."""
        k, o = self.factor, self.origin
        r0, c0 = (int(window.row_off) - o) // k, (int(window.col_off) - o) // k
        r1 = (int(window.row_off) + int(window.height) - 1 - o) // k
        c1 = (int(window.col_off) + int(window.width) - 1 - o) // k
        return self._chunks(Window(c0, r0, c1 - c0 + 1, r1 - r0 + 1))

    def window_for(self, tile_window: Window) -> Window:
        """T x T window of the pre-pass raster holding the context of ``tile_window``."""
        k = self.factor
        col, row = int(tile_window.col_off), int(tile_window.row_off)
        if col % k or row % k:
            raise ValueError(f"tile offset ({col}, {row}) is not a multiple of the context factor {k}")
        return Window(col // k, row // k, self.tile, self.tile)

    def read_chunk(self, src: rasterio.io.DatasetReader, bi: int, bj: int) -> np.ndarray:
        """Chunk (bi, bj)'s sums from its open file, checked first: a chunk file is state left on disk (by
        an earlier run, another shard), so its size, type and values are those of this grid's chunk, or
        an InputError names it."""
        out = self.chunk_window(bi, bj)
        want = _chunk_layout(self.count, self.dtype, int(out.width), int(out.height))
        found = _chunk_layout(src.count, src.dtypes[0], src.width, src.height)
        if found != want or len(set(src.dtypes)) != 1:
            raise self._not_ours(src.name, bi, bj, f"{want} expected, found {found}")
        data = src.read()
        top = int(data.max()) if data.size else 0
        if self.max_sum is not None and top > self.max_sum:
            raise self._not_ours(src.name, bi, bj, f"sums up to {self.max_sum} expected, found {top}")
        return data

    def _not_ours(self, path: str, bi: int, bj: int, problem: str) -> InputError:
        return InputError(f"{path}: not chunk ({bi}, {bj}) of this job's LR pre-pass ({problem}): "
                          "remove it (it is computed again)")

    def chunks_for(self, tile_window: Window) -> list[tuple[int, int]]:
        return self._chunks(self.window_for(tile_window))

    def _chunks(self, w: Window) -> list[tuple[int, int]]:
        ch, cw = self.chunk
        r0, c0 = int(w.row_off), int(w.col_off)
        rows = range(r0 // ch, (r0 + int(w.height) - 1) // ch + 1)
        cols = range(c0 // cw, (c0 + int(w.width) - 1) // cw + 1)
        return [(bi, bj) for bi in rows for bj in cols]

    def read(self, reader: "ChunkReader", tile_window: Window) -> np.ndarray:
        """(C, T, T) float32 LR context of the tile (same values as the per-tile construction)."""
        return self.read_window(reader, self.window_for(tile_window))

    def read_window(self, reader: "ChunkReader", w: Window) -> np.ndarray:
        """(C, h, w) float32 k x k means of window ``w`` of the pre-pass raster (inside it)."""
        return block_means(self.sums_window(reader, w), self.factor)

    def sums_window(self, reader: "ChunkReader", w: Window) -> np.ndarray:
        """(C, h, w) k x k sums (``dtype``) of window ``w`` of the pre-pass raster (inside it)."""
        (ch, cw), (wr, wc) = self.chunk, (int(w.row_off), int(w.col_off))
        h, width = int(w.height), int(w.width)
        sums = np.empty((self.count, h, width), self.dtype)
        for bi, bj in self._chunks(w):
            # intersection of the window with chunk (bi, bj), in pre-pass pixels
            r0, r1 = max(wr, bi * ch), min(wr + h, (bi + 1) * ch, self.height)
            c0, c1 = max(wc, bj * cw), min(wc + width, (bj + 1) * cw, self.width)
            sums[:, r0 - wr : r1 - wr, c0 - wc : c1 - wc] = reader.array(self, bi, bj)[
                :, r0 - bi * ch : r1 - bi * ch, c0 - bj * cw : c1 - bj * cw
            ]
        return sums


def _chunk_layout(count: int, dtype: str, width: int, height: int) -> str:
    return f"{count} band{'s' if count != 1 else ''} of {dtype}, {width} x {height} px"


def means_in_float32(sums_max: int, k: int) -> bool:
    """True when k x k means of sums up to ``sums_max`` are exact as float32 quotients: k^2 a power of two
    and the sums exact in float32. Otherwise the mean is computed in float64 and rounded."""
    n = k * k
    return n & (n - 1) == 0 and sums_max < 2**24


def block_means(sums: np.ndarray, k: int) -> np.ndarray:
    """float32 k x k means from their sums, the same values as the per-tile k x k mean (float64, rounded)."""
    n = k * k
    if means_in_float32(int(np.iinfo(sums.dtype).max), k):  # the same value as in float64, faster
        return np.divide(sums, np.float32(n), dtype=np.float32)
    return (sums / float(n)).astype(np.float32)


def plan_lowres(
    src: rasterio.io.DatasetReader, bands: Sequence[int], grid: TileGrid, factor: int, folder: str | Path,
    chunk: tuple[int, int] = (256, 1024),
) -> LowResRaster:
    """The pre-pass raster covering every context window of ``grid`` (no pixel computed yet)."""
    tile, k = grid.tile, factor
    if not prepass_supported(tile, grid.stride, k):
        raise ValueError(f"stride {grid.stride} / tile {tile} cannot use the x{k} pre-pass")
    origin = -(k - 1) * tile // 2
    return LowResRaster(
        folder=str(folder),
        tile=tile,
        factor=k,
        width=grid.col_offsets[-1] // k + tile,
        height=grid.row_offsets[-1] // k + tile,
        count=len(bands),
        dtype=sum_dtype(src.dtypes[bands[0] - 1], k).name,
        max_sum=largest_sum(src.dtypes[bands[0] - 1], k),
        # georeferenced like the source: handy to inspect
        transform=src.transform @ Affine.translation(origin, origin) @ Affine.scale(k),
        crs=src.crs,
        chunk=chunk,
    )


def chunk_order(lowres: LowResRaster, windows: Iterable[Window], complete: bool = True) -> list[tuple[int, int]]:
    """Chunks in the order tiles (in plan order) first need them; with ``complete``, then any left
    (none for a whole grid; a shard's tiles need only some)."""
    order = dict.fromkeys(c for w in windows for c in lowres.chunks_for(w))
    if complete:
        rows, cols = lowres.chunk_grid
        order.update(dict.fromkeys((bi, bj) for bi in range(rows) for bj in range(cols)))
    return list(order)


def chunk_groups(lowres: LowResRaster, windows: Iterable[Iterable[Window]]) -> list[list[tuple[int, int]]]:
    """:func:`chunk_order` cut by group of tiles (a unit's): each chunk in the group of the first tiles
    needing it, in order; groups that need no new chunk are left out."""
    seen: set[tuple[int, int]] = set()
    groups = []
    for ws in windows:
        group = [c for c in chunk_order(lowres, ws, complete=False) if c not in seen]
        seen.update(group)
        if group:
            groups.append(group)
    return groups


def write_chunk(
    src: rasterio.io.DatasetReader, bands: Sequence[int], lowres: LowResRaster, bi: int, bj: int,
    mask: MaskRule | None = None, decoded: "DecodedChunks | None" = None,
) -> Path:
    """Compute one chunk (:func:`compute_chunk`) and publish it (:func:`publish_chunk`)."""
    return publish_chunk(lowres, bi, bj, compute_chunk(src, bands, lowres, bi, bj, mask, decoded))


def compute_chunk(
    src: rasterio.io.DatasetReader, bands: Sequence[int], lowres: LowResRaster, bi: int, bj: int,
    mask: MaskRule | None = None, decoded: "DecodedChunks | None" = None,
) -> np.ndarray | None:
    """(C, h, w) k x k sums of chunk (bi, bj) (outside and nodata pixels count 0), None when all are 0.

    ``decoded``: where to keep the source pixels read for it (nodata set to 0) and their validity, for
    the tile readers, before the chunk's file is published (a reader that sees the file sees them).
    """
    return sum_chunk(lowres, bi, bj, decode_chunk(src, bands, lowres, bi, bj, mask), decoded)


def decode_chunk(
    src: rasterio.io.DatasetReader, bands: Sequence[int], lowres: LowResRaster, bi: int, bj: int,
    mask: MaskRule | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The (C, kh, kw) source pixels summed into chunk (bi, bj) (0 outside the source) and their (kh, kw)
    validity; None when none is valid."""
    src_win = lowres.source_window(bi, bj)
    if not _intersects(src_win, src.width, src.height):  # all black
        return None
    canvas, valid = read_canvas(src, src_win, bands, fill=0, with_mask=True, mask=mask)
    return (canvas, valid) if valid.any() else None


def sum_chunk(lowres: LowResRaster, bi: int, bj: int, pixels: tuple[np.ndarray, np.ndarray] | None,
              decoded: "DecodedChunks | None" = None) -> np.ndarray | None:
    """Chunk (bi, bj)'s sums from its :func:`decode_chunk` pixels, whose invalid ones are set to 0 (in
    place) and then kept in ``decoded``."""
    canvas = valid = sums = None
    if pixels is not None:
        canvas, valid = pixels
        if not valid.all():
            zero_invalid(canvas, valid)
        sums = block_sums(canvas, lowres.factor, np.dtype(lowres.dtype))
    if decoded is not None:
        decoded.put(bi, bj, canvas, valid)
    return sums


def chunk_or_zeros(lowres: LowResRaster, bi: int, bj: int, sums: np.ndarray | None) -> np.ndarray:
    """Chunk (bi, bj)'s sums as :func:`compute_chunk` returns them, zeros for None."""
    out = lowres.chunk_window(bi, bj)
    return np.zeros((lowres.count, int(out.height), int(out.width)), lowres.dtype) if sums is None else sums


def publish_chunk(lowres: LowResRaster, bi: int, bj: int, sums: np.ndarray | None) -> Path:
    """Write chunk (bi, bj)'s file (``sums`` None: all 0, a sparse file) under a temporary name of this
    process's own (the folder may be shared), on disk before its name says it is there."""
    out = lowres.chunk_window(bi, bj)
    path = lowres.chunk_path(bi, bj)
    profile = lowres_chunk_profile(int(out.width), int(out.height), lowres.count, lowres.dtype, lowres.crs,
                                   lowres.transform @ Affine.translation(int(out.col_off), int(out.row_off)))
    with atomic_path(path, fsync=True) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        if sums is not None:
            dst.write(sums)
    return path


def block_sums(x: np.ndarray, k: int, dtype: np.dtype) -> np.ndarray:
    """(C, kH, kW) -> (C, H, W) sums over k x k blocks, in ``dtype``.

    Strided adds (rows, then columns): ten times faster than a reshape-sum
    over non-adjacent axes. The first two terms of each are added into a new
    array, so no pass zeroes one.
    """
    if k == 1:
        return x.astype(dtype)
    rows = np.add(x[:, 0::k, :], x[:, 1::k, :], dtype=dtype)  # (C, H, kW)
    for i in range(2, k):
        rows += x[:, i::k, :]
    out = np.add(rows[:, :, 0::k], rows[:, :, 1::k])  # (C, H, W)
    for j in range(2, k):
        out += rows[:, :, j::k]
    return out


def build_lowres(
    src: rasterio.io.DatasetReader,
    bands: Sequence[int],
    grid: TileGrid,
    factor: int,
    folder: str | Path,
    chunk: tuple[int, int] = (256, 1024),
) -> LowResRaster:
    """Write the whole pre-pass raster of ``src`` for the tiles of ``grid`` into ``folder`` (synchronously)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    lowres = plan_lowres(src, bands, grid, factor, folder, chunk)
    rows, cols = lowres.chunk_grid
    rule = mask_rule(src, bands)
    with holding(folder):
        for bi in range(rows):
            for bj in range(cols):
                write_chunk(src, bands, lowres, bi, bj, rule)
    return lowres


class LowResBuilder(threading.Thread):
    """Writes the chunks of ``lowres`` in ``order`` from ``source`` while tiles are predicted.

    GDAL reads and numpy sums release the GIL, so this thread runs beside
    the model. Chunks that exist already (written by an earlier run or
    another process sharing the folder) are skipped. On failure it leaves a
    marker (``failed``, a name of this process's own: pass it to the
    readers' :class:`ChunkReader`) so that its readers stop waiting, and
    keeps the exception in ``error``.
    The marker is made by renaming one created at the start, because on a
    full disk a new file may not fit (readers would then wait forever).

    ``threads``: the cores it may use, shared between threads taking groups and GDAL's decoding threads
    (:func:`decoding_threads`, given ``blocks_per_read``). The chunks they decode are summed, handed
    over and written by as many more threads, so decoding (most of a chunk's time) never waits for the rest.

    ``memory``: the chunk reader of the tiles read in this process, handed
    each chunk as soon as it is computed. With ``publish`` False no file is
    written: the chunks are pinned there until the reader releases them
    (:meth:`ChunkReader.release`), and the builder holds back while more than
    ``pinned_bytes`` are pinned or decoded on their way, unless the reader waits for a chunk.
    """

    def __init__(self, source: "str | ResampledSource", bands: Sequence[int], lowres: LowResRaster,
                 order: list[tuple[int, int]] | list[list[tuple[int, int]]], decoded: "DecodedChunks | None" = None,
                 threads: int = 1, memory: "ChunkReader | None" = None, publish: bool = True,
                 pinned_bytes: int = 32 << 20, blocks_per_read: int = 1) -> None:
        if not publish and memory is None:
            raise ValueError("chunks that are not published need a chunk reader to hold them")
        super().__init__(name="caswit-lowres", daemon=True)
        self.source, self.bands, self.lowres = source, tuple(bands), lowres
        # groups of chunks, each written by one thread in its order (a flat order: one group)
        self.groups = order if order and isinstance(order[0], list) else [list(order)]
        self.threads, self.decoders = decoding_threads(threads, len(self.groups), blocks_per_read)
        self.decoded, self.memory = decoded, memory
        self.publish, self.pinned_bytes = publish, pinned_bytes
        self.cancelled = False
        self.error: BaseException | None = None
        self.stop_event = threading.Event()
        Path(lowres.folder).mkdir(parents=True, exist_ok=True)
        folder = Path(os.path.abspath(lowres.folder))
        self.failed = temp_path(folder / FAILED, "")
        self.running = temp_path(folder / RUNNING, "")
        self.running.touch()
        self.written = 0  # chunks this builder computed (the others existed)
        # decoded chunks to sum and hand over (a few MB each): decoding is most of a chunk's time, and the
        # decoding threads need not wait for the rest
        self._to_finish: queue.Queue = queue.Queue(maxsize=4)
        self._coming: dict[tuple[str, int, int], int] = {}  # bytes of the sums of the chunks in it
        self._next = iter(self.groups)
        self._lock = threading.Lock()

    def run(self) -> None:
        track(self)  # a fork right after join() waits until its GDAL state is gone
        try:
            with holding(self.lowres.folder):
                # more threads take the next groups: each decodes with its own GDAL handle and block
                # cache, so a group is a region whose source blocks its neighbours share little
                helpers = [threading.Thread(target=self._work, name=f"caswit-lowres-{i}", daemon=True)
                           for i in range(1, self.threads)]
                # as many finishing threads as decoding ones: summing and writing a chunk (about 9 ms) would
                # otherwise set the pace of several threads decoding JPEG 2000
                finishers = [threading.Thread(target=self._finish, name=f"caswit-lowres-finish-{i}", daemon=True)
                             for i in range(self.threads)]
                for t in finishers + helpers:
                    t.start()
                    track(t)
                try:
                    self._work()
                    for h in helpers:
                        h.join()
                finally:
                    for _ in finishers:
                        self._to_finish.put(None)
                    for f in finishers:
                        f.join()
            if self.error is not None:
                raise self.error
            self.running.unlink(missing_ok=True)  # done: no failure to announce
        except BaseException as e:
            if self.cancelled:  # stopped on purpose (cancel): no reader is left to tell
                self.error = None
                return
            self.error = e
            self._mark_failed(e)

    def _work(self) -> None:
        """Decode the chunks of the next groups, in order."""
        try:
            with rasterio.Env(GDAL_NUM_THREADS=str(self.decoders)), open_reader(self.source) as src:
                rule = mask_rule(src, self.bands)
                while True:
                    with self._lock:
                        group = next(self._next, None)
                    if group is None:
                        return
                    for bi, bj in group:
                        if self.stop_event.is_set() or self.error is not None:
                            raise RuntimeError("pre-pass stopped")
                        if self.lowres.chunk_path(bi, bj).exists():
                            continue
                        if not self.publish:  # bounded memory: no further ahead of the reader than that
                            self.memory.wait_for_room(self.pinned_bytes, self.stop_event, self._on_their_way)
                        pixels = decode_chunk(src, self.bands, self.lowres, bi, bj, rule)
                        with self._lock:
                            self._coming[self.lowres.folder, bi, bj] = self._sums_bytes(bi, bj)
                        self._put_decoded((bi, bj, pixels))
        except BaseException as e:
            self._fail(e)

    def _sums_bytes(self, bi: int, bj: int) -> int:
        w = self.lowres.chunk_window(bi, bj)
        return self.lowres.count * int(w.width) * int(w.height) * np.dtype(self.lowres.dtype).itemsize

    def _on_their_way(self) -> tuple[int, set]:
        """Bytes and keys of the chunks decoded, not yet handed to the reader."""
        with self._lock:
            return sum(self._coming.values()), set(self._coming)

    def _put_decoded(self, item: tuple) -> None:
        while not self.stop_event.is_set():  # bounded queue: give up when the finishing thread has failed
            try:
                return self._to_finish.put(item, timeout=0.1)
            except queue.Full:
                pass
        raise RuntimeError("pre-pass stopped")

    def _finish(self) -> None:
        """Sum the decoded chunks, keep their pixels for the readers, hand the sums to the reader in this
        process and publish their files (compressing and syncing a file is a third of a GeoTIFF chunk's
        time), until a None (one for each finishing thread)."""
        while (item := self._to_finish.get()) is not None:
            if self.stop_event.is_set():
                continue  # drain: the decoding threads may be blocked on a full queue
            try:
                bi, bj, pixels = item
                sums = sum_chunk(self.lowres, bi, bj, pixels, self.decoded)
                if self.memory is not None:  # before the file exists: its reader need not wait for it
                    self.memory.keep(self.lowres, bi, bj, chunk_or_zeros(self.lowres, bi, bj, sums),
                                     pinned=not self.publish)
                with self._lock:
                    self._coming.pop((self.lowres.folder, bi, bj), None)
                if self.publish:
                    publish_chunk(self.lowres, bi, bj, sums)
                with self._lock:
                    self.written += 1
            except BaseException as e:
                self._fail(e)  # stops the decoding threads; the queue is drained until its None

    def _fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e
        self.stop_event.set()

    def _mark_failed(self, error: BaseException) -> None:
        for make in (lambda: os.replace(self.running, self.failed), self.failed.touch):
            try:
                make()
                break
            except OSError:  # no marker to rename (removed from outside): try a new one
                pass
        try:  # the reason is a courtesy to readers; ``error`` holds it for the main thread
            self.failed.write_text(f"{type(error).__name__}: {error}")
        except OSError:
            pass

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)

    def cancel(self) -> None:
        """Stop without an error: the readers of the chunks are gone (chunks not published are of no
        further use)."""
        self.cancelled = True
        self.stop()

    def close(self) -> None:
        """Remove the markers and the decoded pixels (once the readers are gone)."""
        self.failed.unlink(missing_ok=True)
        self.running.unlink(missing_ok=True)
        if self.decoded is not None:
            self.decoded.close()


class ChunkReader:
    """Per-process chunks of the pre-pass raster: their sums kept in memory (the least recently used
    dropped past ``cache_bytes``), a few chunk files open; waits for unwritten ones.

    A chunk is read whole once, then each tile's context is a slice of it
    (a tile row's windows fall in the same few chunks). A builder in the
    same process hands its chunks over as it computes them, before their
    files exist (:meth:`keep`); pinned ones (never written to a file) stay
    until :meth:`release`.
    ``failed``: the marker of the builder writing the chunks
    (:attr:`LowResBuilder.failed`); when it appears, readers stop waiting.
    """

    def __init__(self, max_open: int = 8, poll: float = 0.005, failed: str | Path | None = None,
                 cache_bytes: int = 16 << 20) -> None:
        self.poll = poll
        self.max_open = max_open
        self.failed = None if failed is None else Path(failed)
        self.cache_bytes = cache_bytes
        self._handles = RasterHandles(max_open)
        self._arrays: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._held = 0
        self._pinned: dict[tuple[str, int, int], np.ndarray] = {}
        self._pinned_bytes = 0
        self._awaited: list[tuple[str, int, int]] = []  # chunks readers wait for (one entry per waiting reader)
        self._kept = threading.Condition()  # the builder's threads keep chunks while the reader reads

    def array(self, lowres: LowResRaster, bi: int, bj: int) -> np.ndarray:
        """(C, h, w) sums of chunk (bi, bj), whole (read only: shared with later calls)."""
        key, path = (lowres.folder, bi, bj), lowres.chunk_path(bi, bj)
        while True:
            with self._kept:
                data = self._pinned.get(key)
                if data is not None:
                    return data
                data = self._arrays.get(key)
                if data is not None:
                    self._arrays.move_to_end(key)
                    return data
                if not path.exists():  # not computed yet: a builder here wakes us when it keeps a chunk
                    self._check_failed()
                    self._awaited.append(key)
                    self._kept.notify_all()  # a builder holding back for room goes on (wait_for_room)
                    try:
                        self._kept.wait(self.poll)
                    finally:
                        self._awaited.remove(key)
                    continue
            data = lowres.read_chunk(self._handles.get(path), bi, bj)
            self.keep(lowres, bi, bj, data)
            return data

    def _check_failed(self) -> None:
        if self.failed is not None and self.failed.exists():
            reason = self.failed.read_text().strip() or "no reason recorded"
            raise RuntimeError(f"the LR pre-pass failed: {reason}")

    def keep(self, lowres: LowResRaster, bi: int, bj: int, data: np.ndarray, pinned: bool = False) -> None:
        """Hold chunk (bi, bj)'s sums for :meth:`array`: ``pinned`` until :meth:`release`, otherwise
        among the most recently used."""
        data.flags.writeable = False
        key = (lowres.folder, bi, bj)
        with self._kept:
            if pinned:
                old = self._pinned.pop(key, None)
                self._pinned_bytes += data.nbytes - (0 if old is None else old.nbytes)
                self._pinned[key] = data
                self._kept.notify_all()
                return
            old = self._arrays.pop(key, None)
            self._held += data.nbytes - (0 if old is None else old.nbytes)
            self._arrays[key] = data
            while self._held > self.cache_bytes and len(self._arrays) > 1:
                self._held -= self._arrays.popitem(last=False)[1].nbytes
            self._kept.notify_all()

    def release(self, lowres: LowResRaster, bi: int, bj: int) -> None:
        """Drop pinned chunk (bi, bj): no tile left needs it."""
        with self._kept:
            data = self._pinned.pop((lowres.folder, bi, bj), None)
            if data is not None:
                self._pinned_bytes -= data.nbytes
                self._kept.notify_all()

    def wait_for_room(self, budget: int, stop: threading.Event,
                      coming: Callable[[], tuple[int, set]] = lambda: (0, set())) -> None:
        """Return once at most ``budget`` bytes are pinned or on their way (``coming()``: the bytes and keys
        of the chunks computed, not kept yet), a reader waits for a chunk neither kept nor on its way (the
        next one computed, as chunks are computed in the order tiles need them) or ``stop`` is set."""
        with self._kept:
            while not stop.is_set():
                nbytes, keys = coming()
                if (self._pinned_bytes + nbytes <= budget
                        or any(k not in self._pinned and k not in self._arrays and k not in keys
                               for k in self._awaited)):
                    return
                self._kept.wait(0.1)

    def close(self) -> None:
        self._handles.close()
        with self._kept:
            self._arrays.clear()
            self._held = 0
            self._pinned.clear()
            self._pinned_bytes = 0

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open, "poll": self.poll, "failed": self.failed,
                "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


class DecodedChunks:
    """The source pixels each pre-pass chunk was summed from, kept for the tile readers.

    The pre-pass decodes every source pixel its chunks cover; the tiles lie
    inside those chunks. Keeping the decoded pixels (nodata set to 0) and
    their validity in a raw file per chunk lets the readers copy their tiles
    from there instead of decoding the source a second time: each source
    pixel is then decoded once per run. The files are private to this run
    (a folder of this process's own in the chunk folder), written only for
    the chunks some tile's pixels need (``needed``), removed by
    :meth:`release` once the last of those tiles is read, and limited to
    ``budget`` bytes at a time: a chunk over it gets no file and its tiles
    are read from the source, as are those of chunks that existed already
    (an earlier run, another shard). When the tiles are read in this very
    process, the first ``memory`` bytes of them are held in memory instead
    of files (no write, no read back).
    """

    def __init__(self, lowres: LowResRaster, budget: int, needed: Iterable[tuple[int, int]] = (),
                 memory: int = 0) -> None:
        self.lowres, self.budget, self.memory = lowres, budget, memory
        self.needed = set(needed)
        self._arrays: dict[tuple[int, int], np.ndarray] = {}
        Path(lowres.folder).mkdir(parents=True, exist_ok=True)
        self.folder = temp_path(Path(os.path.abspath(lowres.folder)) / "DECODED", "")
        self.folder.mkdir()
        self.held = 0
        self._memory_bytes = 0  # of _arrays
        self._sizes: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def path(self, bi: int, bj: int) -> Path:
        return self.folder / f"hr_{bi:05d}_{bj:05d}.npy"

    def put(self, bi: int, bj: int, canvas: np.ndarray | None, valid: np.ndarray | None) -> bool:
        """Keep chunk (bi, bj)'s pixels (None: no valid pixel); False when not needed or over the budget."""
        if (bi, bj) not in self.needed:
            return False
        # kept as they are (no copy): pixels and validity, or nothing for no valid pixel
        data = () if canvas is None else (canvas, valid)
        nbytes = sum(a.nbytes for a in data)
        with self._lock:
            # only with a reader in this process (memory > 0): another process sees files alone, even of
            # a chunk without a valid pixel
            if self.memory and self._memory_bytes + nbytes <= self.memory:
                self._arrays[bi, bj] = data
                self._memory_bytes += nbytes
                return True
            if self.held + nbytes > self.budget:
                return False
            self.held += nbytes
            self._sizes[bi, bj] = nbytes
        path = self.path(bi, bj)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:  # one (C + 1, h, w) array: the pixels, then the validity as a band
            if canvas is None:
                np.save(f, np.empty(0, np.uint8), allow_pickle=False)
            else:
                shape = (canvas.shape[0] + 1, *canvas.shape[1:])
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(canvas.dtype),
                                                         "fortran_order": False, "shape": shape})
                f.write(np.ascontiguousarray(canvas).data)
                f.write(valid.astype(canvas.dtype).data)
        os.replace(tmp, path)
        return True

    def release(self, bi: int, bj: int) -> None:
        """The tiles needing chunk (bi, bj)'s pixels are all read: free its file."""
        with self._lock:
            self._memory_bytes -= sum(a.nbytes for a in self._arrays.pop((bi, bj), ()))
            size = self._sizes.pop((bi, bj), None)
            if size is None:
                return
            self.held -= size
        self.path(bi, bj).unlink(missing_ok=True)

    def read(self, window: Window, count: int, dtype: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(C, h, w) pixels (nodata 0) and (h, w) validity of source ``window``, or None when a chunk it
        needs has no file (read the source then). Call once the chunks themselves exist."""
        h, w = int(window.height), int(window.width)
        wr, wc = int(window.row_off), int(window.col_off)
        pixels, valid = np.zeros((count, h, w), dtype), np.zeros((h, w), bool)
        for bi, bj in self.lowres.source_chunks(window):
            part = self._arrays.get((bi, bj))
            try:
                if part is None:
                    stored = np.load(self.path(bi, bj), mmap_mode="r", allow_pickle=False)
                    part = (stored[:count], stored[count]) if stored.size else ()
            except (FileNotFoundError, ValueError):
                return None
            if not part:  # no valid pixel: zeros
                continue
            cw = self.lowres.source_window(bi, bj)
            r0, r1 = max(wr, int(cw.row_off)), min(wr + h, int(cw.row_off) + int(cw.height))
            c0, c1 = max(wc, int(cw.col_off)), min(wc + w, int(cw.col_off) + int(cw.width))
            inside = (slice(r0 - int(cw.row_off), r1 - int(cw.row_off)),
                      slice(c0 - int(cw.col_off), c1 - int(cw.col_off)))
            pixels[:, r0 - wr : r1 - wr, c0 - wc : c1 - wc] = part[0][(slice(None), *inside)]
            valid[r0 - wr : r1 - wr, c0 - wc : c1 - wc] = part[1][inside]
            del part
        return pixels, valid

    def close(self) -> None:
        self._arrays.clear()
        self._memory_bytes = 0
        remove_path(self.folder)

    def __getstate__(self) -> dict:
        # readers only read: no lock, no accounting; those of another process read files only
        return {"lowres": self.lowres, "budget": self.budget, "memory": 0, "folder": self.folder, "needed": set(),
                "held": 0, "_memory_bytes": 0, "_sizes": {}, "_arrays": {}, "_lock": None}


def _intersects(window: Window, width: int, height: int) -> bool:
    return (
        window.col_off < width
        and window.row_off < height
        and window.col_off + window.width > 0
        and window.row_off + window.height > 0
    )
