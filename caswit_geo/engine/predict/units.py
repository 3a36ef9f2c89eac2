"""Step 2 of ``predict``: run units (reader, model, writer). The only part a shard executes.

Reading, the model and writing overlap: DataLoader workers read batches of
tiles (HR tile, LR context from the pre-pass chunks, validity), a thread
writes the pre-pass chunks in the order the tiles need them, the main
thread runs the model, a writer thread assembles each unit's rows and
writes its part file. Batches never span two units, and a unit's tiles come
in a fixed order, so a unit's pixels do not depend on which run computes it;
the readers take runs of batches by source block rows, put back in plan
order for the model (batches.py). Memory is bounded: strip buffers, bounded
queues, no full-raster array.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from caswit_geo.core.errors import CaswitError, no_space_error
from caswit_geo.engine.predict.batches import (
    ReaderBatches,
    UnitBatches,
    block_rows,
    in_plan_order,
    reader_order,
    reader_runs,
)
from caswit_geo.engine.predict.job import Job
from caswit_geo.engine.predict.plan import PredictPlan, Unit
from caswit_geo.engine.predict.sink import SinkThread, UnitDone, UnitWriter
from caswit_geo.engine.predict.source import InputBuffers, PredictTiles, TileBatch, model_inputs
from caswit_geo.geo.blend import NODATA
from caswit_geo.geo.lowres import DecodedChunks, LowResBuilder, chunk_groups, plan_lowres
from caswit_geo.geo.remote import clear_connections_at_forks, gdal_remote_options
from caswit_geo.geo.sources import read_error
from caswit_geo.geo.webmap import service_options
from caswit_geo.model.tta import average_probabilities
from caswit_geo.runtime.device import CpuThreads, stop_workers
from caswit_geo.runtime.precision import Precision

GDAL_POOL = 32  # files of a mosaic kept open per process (a tile row touches a few)
DECODED_BUDGET = 1 << 30  # bytes of decoded source pixels kept on disk for the readers at a time
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
DECODED_MEMORY = 128 << 20  # ...of which first in memory, when the tiles are read in the run's own process
LR_AHEAD_BYTES = 32 << 20  # LR chunks the pre-pass holds ahead of the tiles read in its own process


def predict_probabilities(model: torch.nn.Module, hr: torch.Tensor, lr: torch.Tensor | None,
                          precision: Precision | None = None, tta: str = "none") -> torch.Tensor:
    """(B, C, T, T) normalised HR (and LR) -> (B, K, T, T) float32 class probabilities.

    ``precision``: the autocast of the forward pass (None = fp32). ``tta``:
    test-time augmentation, a mode of ``model/tta.py`` ("none", "flips",
    "dihedral"), applied to the HR tile and its LR context together.
    """
    device = next(model.parameters()).device
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()

    def forward(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with autocast:
            return model(x, y)

    with torch.inference_mode():
        return average_probabilities(forward, hr.to(device, non_blocking=True),
                                     None if lr is None else lr.to(device, non_blocking=True), tta)


def workers_for(n: int | None, device: torch.device | None = None) -> int:
    """Reader processes. Default: on CUDA one fewer than the CPUs (max 4); on the CPU, where the
    model itself needs the cores, none on small machines (reading is cheap next to a forward
    pass) and one otherwise."""
    if n is not None:
        return n
    cpus = os.cpu_count() or 1
    if device is not None and device.type == "cpu":
        return 0 if cpus <= 4 else 1
    return max(0, min(4, cpus - 1))


def _init_reader(worker_id: int, cache_bytes: int | None = None) -> None:
    # Batches are shared by passing descriptors (torch's default): sharing by file name starts a
    # torch_shm_manager process beside each reader, 70 MB of memory each.
    release_large_buffers()
    if cache_bytes is not None:
        # the plan's per-worker GDAL block cache, not the pre-pass's (the run's process sets that one, sized
        # to unit-wide rows of source blocks, and a forked reader inherits it): a reader decodes source blocks
        # only for the tiles whose pixels the pre-pass did not keep
        rasterio.env.set_gdal_config("GDAL_CACHEMAX", cache_bytes)


def release_large_buffers() -> None:
    """Give the memory of freed buffers of 1 MiB and more (tiles, batches) back to the system at once.

    glibc otherwise raises its mmap threshold after the first such buffer is freed, serves the next ones
    from the heap, and keeps what they leave: a reader process grew by hundreds of MB that way."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc
        pass


def make_loader(dataset: PredictTiles, sizes: list[int], batch_size: int, workers: int,
                device: torch.device, rows: list[tuple[int, int]] | None = None,
                cache_bytes: int | None = None) -> DataLoader:
    """The readers' batches. ``rows``: each tile's source block rows; with several readers, each then takes
    runs of batches sharing block rows (batches.py: the loader's order is not the plan's). ``cache_bytes``:
    each reader's GDAL block cache (None: the one it inherits)."""
    sampler = UnitBatches(sizes, batch_size)
    if workers > 1 and rows is not None:
        sampler = ReaderBatches(reader_order(reader_runs(list(sampler), rows), workers))
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=dataset.collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        worker_init_fn=functools.partial(_init_reader, cache_bytes=cache_bytes) if workers else None,
    )


class Progress:
    """Tiles done over the whole job (every shard and earlier runs), rate and ETA.

    This process's batches move the bar; the units other processes finish
    (their part files appear in the job folder) are added every few seconds.
    """

    def __init__(self, plan: PredictPlan, job: Job, mine: list[Unit], enabled: bool, desc: str = "predict",
                 refresh_s: float = 5.0) -> None:
        self.job, self.refresh_s = job, refresh_s
        self.counts = {u.id: plan.tile_count(u) for u in plan.units}
        self.mine = {u.id for u in mine}
        self.others_done = self._others()
        done = job.done_units()
        initial = sum(self.counts.get(i, 0) for i in done)  # a stray part is refused at assembly, not here
        self.bar = tqdm(total=sum(self.counts.values()), initial=initial, unit="tile", desc=desc,
                        disable=not enabled, dynamic_ncols=True, smoothing=0.1)
        self.last = time.monotonic()

    def _others(self) -> int:
        return sum(self.counts.get(i, 0) for i in self.job.done_units() if i not in self.mine)

    def update(self, n: int) -> None:
        self.bar.update(n)
        if time.monotonic() - self.last > self.refresh_s:
            self.last = time.monotonic()
            others = self._others()
            if others > self.others_done:
                self.bar.update(others - self.others_done)
                self.others_done = others

    def close(self) -> None:
        self.bar.close()


@dataclass
class UnitsRun:
    """What :func:`run_units` did."""

    done: list[UnitDone] = field(default_factory=list)
    tiles: int = 0  # tiles of the units run (predicted or skipped as nodata)
    tiles_run: int = 0
    forward_seconds: float = 0.0
    seconds: float = 0.0
    stopped: bool = False  # the deadline stopped the run between units
    lowres_chunks: int = 0  # pre-pass chunks this run computed

    @property
    def area_m2(self) -> float | None:
        if any(d.areas is None for d in self.done):
            return None
        return float(sum(sum(d.areas.values()) for d in self.done))


def run_units(
    plan: PredictPlan,
    job: Job,
    units: list[Unit],
    model: torch.nn.Module,
    device: torch.device,
    *,
    batch_size: int = 8,
    workers: int | None = None,
    precision: Precision | None = None,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> UnitsRun:
    """Predict ``units`` of ``plan`` into part files of ``job``.

    ``deadline`` (``time.monotonic()`` value): after it, stop once the
    current unit is complete (the run stays resumable). The caller holds
    the job folder (``job.hold()``).
    """
    run = UnitsRun()
    if not units:
        return run
    t0 = time.perf_counter()
    tiles = [plan.tiles(u) for u in units]
    sizes = [len(t) for t in tiles]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    workers = workers_for(workers, device)
    soft = plan.soft
    lock = threading.Lock()

    def on_done(done: UnitDone) -> None:  # in the writer thread
        with lock:
            run.done.append(done)
        job.log("unit", unit=done.unit, tiles=done.tiles, tiles_run=done.tiles_run, seconds=round(done.seconds, 3))

    reading = Reading(plan)
    sink_thread: SinkThread | None = None
    with reading_env(plan):
        try:
            batches = reading.start(tiles, job.lowres_dir, batch_size, workers, device)
            builder = reading.builder
            sink_thread = SinkThread(UnitWriter(plan, job, units, tiles, on_done))
            sink_thread.start()
            try:
                _model_loop(model, batches, workers, sink_thread, device, precision, plan.spec, plan.tta,
                            plan.with_probabilities, soft, starts, units, job, run, progress, deadline,
                            builder is not None)
            finally:
                reading.stop_readers()  # shuts the readers down at once
            sink_thread.finish()
            if builder is not None:
                builder.join()
                if builder.error is not None:
                    raise builder.error
                run.lowres_chunks = builder.written
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: keep the units whose tiles are all computed
            reading.stop_builder()
            if sink_thread is not None and sink_thread.is_alive():
                sink_thread.drain()
            raise
        except BaseException as exc:
            # decided before the temporaries go: a full disk is recognised by what is left of it
            failure = _user_failure(exc, reading.builder, job.dir.parent, plan)
            reading.stop_builder()
            if sink_thread is not None and sink_thread.is_alive():
                sink_thread.abort()
            if failure is not None:
                raise failure from failure.__cause__
            raise
        finally:
            reading.close()
    run.tiles = sum(d.tiles for d in run.done)
    run.seconds = time.perf_counter() - t0
    return run


def reading_env(plan: PredictPlan) -> rasterio.Env:
    """GDAL settings of a run's reading: a bounded block cache (by default it grows with the raster up to
    5% of the RAM, in every process) with room for the pre-pass to decode each source block once, a
    smaller pool of open mosaic files (each costs about 1 MB); for remote inputs bounded retries and
    waits and a bounded /vsicurl/ cache (geo/remote.py); one connection per reader for a web service."""
    options = {"GDAL_CACHEMAX": max(plan.cache_bytes, prepass_cache_bytes(plan)),
               "GDAL_MAX_DATASET_POOL_SIZE": GDAL_POOL, **gdal_remote_options(plan.inputs, GDAL_POOL),
               **(service_options() if plan.web_service else {})}  # one dict: both name GDAL_ENABLE_WMS_CACHE
    return rasterio.Env(**options)


class Reading:
    """The reading side of a run (and of the dry run's reading estimate): the LR pre-pass builder, the
    tile dataset and its reader processes, started in the one safe order. Use inside
    :func:`reading_env`; :meth:`close` whatever :meth:`start` got to."""

    def __init__(self, plan: PredictPlan) -> None:
        self.plan = plan
        self.builder: LowResBuilder | None = None
        self.dataset: PredictTiles | None = None
        self._batches = None

    def start(self, tiles: list[list[tuple[int, Window]]], lowres_dir, batch_size: int, workers: int,
              device: torch.device):
        """Start reading the tiles of ``tiles`` (one list per unit); returns the batches, in order."""
        plan = self.plan
        if device.type == "cuda":
            # the pre-pass's freed buffers given back at once, as in the readers (about 350 MB kept otherwise).
            # Not on the CPU: the model's activations would then be new pages at every allocation (a forward
            # pass of caswit-tiny ran 20 % slower)
            release_large_buffers()
        windows = [w for t in tiles for _, w in t]
        # the tiles run: those meeting the region, when one is asked (decided once, here)
        inside = None if plan.roi is None else np.array([plan.roi.meets(w) for w in windows], bool)
        lowres = decoded = None
        frees: list[tuple[Callable, list[tuple[int, tuple[int, int]]]]] = []  # (free, its release order)
        # a web map service: the pre-pass alone first, so requests never outnumber the readers
        sequential = plan.context == "prepass" and plan.web_service
        # tiles read in this process, beside the pre-pass: its chunks handed over in memory, no file written
        in_memory = plan.context == "prepass" and not workers and not sequential
        if plan.context == "prepass":
            with plan.mosaic.open() as src:
                lowres = plan_lowres(src, plan.spec.bands, plan.grid, plan.spec.context_factor, lowres_dir)
            # the pre-pass gets as many cores as there are readers (decoding threads, and threads taking a
            # unit's chunks each when reads meet too few blocks for them); only the context of the tiles run
            starts = np.cumsum([0] + [len(t) for t in tiles])
            run_tiles = [[w for j, (_, w) in enumerate(t) if inside is None or inside[s + j]]
                         for s, t in zip(starts, tiles)]
            releases = release_order(lowres, windows)
            decoded = decoded_chunks(plan, lowres, releases, in_process=not workers)
            frees.append((decoded.release, releases))
        self.dataset = PredictTiles(plan.mosaic.reader, windows, plan.spec, plan.context, lowres, inside=inside,
                                    decoded=decoded)
        if lowres is not None:
            self.builder = LowResBuilder(plan.mosaic.reader, plan.spec.bands, lowres, chunk_groups(lowres, run_tiles),
                                         decoded, threads=workers, publish=not in_memory,
                                         memory=self.dataset.chunks if not workers else None,
                                         pinned_bytes=LR_AHEAD_BYTES,
                                         blocks_per_read=lowres.blocks_per_read(plan.mosaic.block_width))
            self.dataset.chunks.failed = self.builder.failed  # readers stop waiting when the builder fails
            if in_memory:
                chunks = self.dataset.chunks
                frees.append((lambda bi, bj: chunks.release(lowres, bi, bj), lr_release_order(lowres, windows)))
        rows = block_rows(windows, plan.mosaic.block_height) if workers > 1 else None  # used by several readers
        loader = make_loader(self.dataset, [len(t) for t in tiles], batch_size, workers, device, rows,
                             cache_bytes=plan.cache_bytes)
        if sequential:
            self.builder.start()
            self.builder.join()
        clear_connections_at_forks(plan.inputs)  # a reader must not share our HTTP sockets
        # forks the readers first: never fork while our threads hold GDAL locks. The objects of this process
        # (torch's modules...) frozen meanwhile: a reader's garbage collector then leaves them alone instead of
        # writing to every page holding one, which would copy those pages into each reader
        gc.freeze()
        try:
            self._batches = iter(loader)
        finally:
            gc.unfreeze()
        if self.builder is not None and not sequential:
            self.builder.start()
        return releasing(in_plan_order(self._batches), frees)

    def stop_readers(self) -> None:
        if self._batches is not None:
            stop_workers(self._batches)
        if self.builder is not None and not self.builder.publish:
            self.builder.cancel()  # its chunks were for these readers only (none left when all tiles were read)

    def stop_builder(self) -> None:
        if self.builder is not None and self.builder.is_alive():
            self.builder.stop()

    def close(self) -> None:
        if self.dataset is not None:
            self.dataset.close()
        if self.builder is not None:
            self.builder.close()


def prepass_cache_bytes(plan: PredictPlan) -> int:
    """GDAL block cache for the pre-pass to decode each source block once: it walks a unit column
    (plus the context's margin) chunk row by chunk row, so two rows of source blocks that wide."""
    bh = max(info.block_shape[0] for info in plan.mosaic.files)
    bw = max(info.block_shape[1] for info in plan.mosaic.files)
    width = min(plan.mosaic.width, (plan.unit_width or plan.unit_size) + plan.grid.tile * plan.spec.context_factor)
    # read resampled by us: the native pixels (the files' or their overviews'), more of them when the mosaic's
    # are larger
    mosaic = plan.mosaic
    scale = max(1.0, mosaic.res[0] / (mosaic.files[0].res[0] * mosaic.native_factor)) if mosaic.native else 1.0
    itemsize = np.dtype(plan.mosaic.dtype).itemsize
    return int(1.25 * 2 * (bh + scale * plan.grid.tile) * (scale * width + 2 * bw) * plan.mosaic.count * itemsize)


def decoded_chunks(plan: PredictPlan, lowres, releases: list, in_process: bool = False) -> DecodedChunks:
    """Where the pre-pass keeps its decoded pixels for the readers (``in_process``: tiles read in this
    process, so the first of them held in memory). A mosaic's pixels never depend on the window read
    (a resampled one is resampled by geo/resampled.py), so tiles can always be copied from there."""
    return DecodedChunks(lowres, DECODED_BUDGET, needed=[c for _, c in releases],
                         memory=DECODED_MEMORY if in_process else 0)


def release_order(lowres, windows: list) -> list[tuple[int, tuple[int, int]]]:
    """(last tile position needing its pixels, chunk) for each chunk holding some tile's pixels, by position."""
    return _last_uses(windows, lowres.source_chunks)


def lr_release_order(lowres, windows: list) -> list[tuple[int, tuple[int, int]]]:
    """(last tile position needing its LR context from it, chunk) for each chunk, by position."""
    return _last_uses(windows, lowres.chunks_for)


def _last_uses(windows: list, chunks_of: Callable) -> list[tuple[int, tuple[int, int]]]:
    last: dict[tuple[int, int], int] = {}
    for pos, w in enumerate(windows):
        for chunk in chunks_of(w):
            last[chunk] = pos
    return sorted((pos, chunk) for chunk, pos in last.items())


def releasing(batches, frees: list[tuple[Callable, list[tuple[int, tuple[int, int]]]]]):
    """``batches``, calling each ``free(bi, bj)`` of ``frees`` once the last tile needing that chunk
    (its release order) has been read.

    Batches arrive in order, so every tile up to the last of a batch has been read;
    readers still busy with later batches need only chunks whose last tile is later.
    """
    done = [0] * len(frees)
    for batch in batches:
        last = int(batch.index[-1])
        for f, (free, releases) in enumerate(frees):
            while done[f] < len(releases) and releases[done[f]][0] <= last:
                free(*releases[done[f]][1])
                done[f] += 1
        yield batch


def _user_failure(exc: BaseException, builder: LowResBuilder | None, work_dir, plan: PredictPlan) -> CaswitError | None:
    """The user error behind a failed run (full disk, unreadable input), or None for the exception as is.

    A reader that stopped waiting for the LR pre-pass says less than the
    pre-pass thread's own error, which is preferred.
    """
    if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM
        return None
    cause = builder.error if builder is not None and builder.error is not None else exc
    return no_space_error(cause, work_dir) or read_error(
        cause, [info.path for info in plan.mosaic.files], fallback=", ".join(str(p) for p in plan.inputs[:3])
    )


def _model_loop(model, batches, workers, sink_thread, device, precision, spec, tta, with_probs, soft, starts, units,
                job, run, progress, deadline, builder_busy) -> None:
    """Batches in order -> the model -> results to the writer thread; stops between units after ``deadline``."""
    unit_of = lambda pos: int(np.searchsorted(starts, pos, side="right")) - 1  # noqa: E731
    with CpuThreads(device, workers) as threads:
        # decided once, not as the pre-pass thread comes and goes: on the CPU the number of
        # threads changes the last bits of the sums, and a unit must not depend on timing
        threads.update(int(builder_busy))
        job.log("threads", threads=torch.get_num_threads())
        buffers = InputBuffers()  # on the CPU, each batch's inputs are made in the last one's
        for batch in batches:
            batch: TileBatch
            first, last = int(batch.index[0]), int(batch.index[-1])
            j = unit_of(first)
            if first == starts[j]:
                job.log("unit-start", unit=units[j].id)
            results: list = [None] * len(batch.index)  # None: all nodata, not run
            if len(batch.hr):
                t0 = time.perf_counter()
                hr, lr = model_inputs(batch, spec, device, buffers)  # on the device: the batch holds raw pixels
                probs = predict_probabilities(model, hr, lr, precision, tta)  # (N, K, T, T)
                if soft:
                    host = probs.half().cpu().numpy()
                    payload = [(host[i], batch.valid[i].numpy()) for i in range(len(host))]
                else:
                    valid = batch.valid.to(probs.device, non_blocking=True)
                    conf, cls = probs.max(dim=1)  # (N, T, T)
                    conf = (conf * 100).round().to(torch.uint8)
                    cls = cls.to(torch.uint8)
                    cls = torch.where(valid, cls, torch.full_like(cls, NODATA)).cpu().numpy()
                    conf = torch.where(valid, conf, torch.full_like(conf, NODATA)).cpu().numpy()
                    if with_probs:  # percent, rounded as the confidence is: its max is the confidence
                        pct = (probs * 100).round().to(torch.uint8)
                        pct = torch.where(valid[:, None], pct, torch.full_like(pct, NODATA)).cpu().numpy()
                        payload = list(zip(cls, conf, pct))
                    else:
                        payload = list(zip(cls, conf))
                run.forward_seconds += time.perf_counter() - t0
                ran = iter(payload)
                results = [next(ran) if r else None for r in batch.run.tolist()]
                run.tiles_run += len(payload)
            sink_thread.submit(list(zip(batch.index.tolist(), results)))
            if progress is not None:
                progress.update(len(batch.index))
            if last == starts[j + 1] - 1 and deadline is not None and time.monotonic() >= deadline:
                run.stopped = j + 1 < len(units)
                if run.stopped:
                    return
