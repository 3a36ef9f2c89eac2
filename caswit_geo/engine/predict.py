"""``predict``: orthophoto mosaic -> land-cover class raster (and polygons).

Reads top to bottom:

1. resolve weights, inputs and outputs (every user error raised before any
   file is written);
2. load the checkpoint, check bands / data type / pixel size;
3. build the virtual mosaic (one input, several files, or a resampled
   read) and plan the LR pre-pass raster (``geo/lowres.py``);
4. run the model over the tile plan: a thread writes the pre-pass chunks
   in the order the tiles need them, DataLoader workers read batches, the
   main thread runs the model, a writer thread assembles and writes rows;
5. finish every output under a temporary name, then rename them all.

Tiles follow the paper's protocol (stride = tile, no overlap) unless
``overlap`` is given, in which case class probabilities are blended with a
Hann window. Memory is bounded: strip buffers, bounded queues, no
full-raster array.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import torch
from affine import Affine
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..bounds import Text, bounded, check_settings
from ..checkpoint import load_checkpoint
from ..device import CpuThreads, select_device, stop_workers
from ..errors import CaswitError, CheckpointError, ConfigError, OutputError, no_space_error
from ..geo.area import row_areas_m2, unit_to_m
from ..geo.grid import TileGrid, plan_tiles, strips
from ..geo.io import (
    NODATA,
    AtomicRasterWriter,
    Mosaic,
    build_vrt_xml,
    check_folder_writable,
    check_output_path,
    class_description,
    commit_file,
    copy_window_masked,
    expand_inputs,
    model_tags,
    open_mosaic,
)
from ..geo.lowres import LowResBuilder, chunk_order, plan_lowres, prepass_supported
from ..geo.sources import read_error
from ..geo.vectorize import VectorResult, vector_format, vectorize
from ..precision import PRECISIONS, Precision, prepare_inference, resolve_precision
from ..preview import write_preview
from ..spec import ClassTable, InputSpec
from ..weights import resolve_weights
from .tile_sink import SinkThread, TileSink
from .tile_source import PredictTiles, TileBatch, collate_tiles

GSD_TOLERANCE = 0.10  # relative pixel-size difference that deserves a warning
GDAL_POOL = 32  # files of a mosaic kept open per process (a tile row touches a few)
RASTER_OUT_SUFFIXES = (".tif", ".tiff")


@dataclass
class PredictConfig:
    """Settings of one ``predict`` run (CLI options, one per field).

    ``out``: a ``.tif`` file (one mosaic output) or a folder (one
    ``<stem>_landcover.tif`` per input file). ``confidence`` follows the
    same rule (``<stem>_confidence.tif`` in a folder). ``overlap`` in
    pixels; ``min_area`` in m2; ``simplify`` in m. ``workers`` None = one
    fewer than the CPUs (max 4) on CUDA; on the CPU none up to 4 CPUs, else
    one (see :func:`_workers`). ``strip_width`` None = chosen from
    ``blend_memory_mb``. ``gdal_cache_mb``: GDAL block cache (raised for
    striped inputs, whose blocks span the whole width).
    """

    inputs: Sequence[str | Path]
    out: str | Path
    weights: str | Path | None = None
    overwrite: bool = False
    batch_size: int = bounded(8, ge=1)
    device: str = "auto"
    workers: int | None = bounded(None, ge=0)
    overlap: int = bounded(0, ge=0)
    resample: bool = False
    confidence: str | Path | None = None
    vector: str | Path | None = None
    min_area: float | None = bounded(None, ge=0)
    simplify: float | None = bounded(None, ge=0)
    preview: str | Path | None = None  # quick-look PNG: input RGB beside the classes, with a legend
    precision: str = bounded("auto", Text(choices=PRECISIONS))  # see precision.py
    progress: bool = True
    lr_prepass: bool = True
    blend_memory_mb: int = bounded(256, ge=1)
    strip_width: int | None = bounded(None, ge=1)
    gdal_cache_mb: int = bounded(32, ge=1)


@dataclass
class PredictResult:
    outputs: list[Path]
    confidence_outputs: list[Path]
    vector: Path | None
    tiles: int  # tiles in the plan
    tiles_run: int  # tiles the model saw (the others were all nodata)
    seconds: float
    forward_seconds: float  # model forward passes (inputs on the device -> outputs on the host)
    class_pixels: dict[str, int]
    class_areas_m2: dict[str, float] | None  # None without a usable CRS
    nodata_pixels: int
    width: int
    height: int
    device: str
    context: str  # "prepass", "direct" or "none"
    precision: str = "fp32"  # what ran and why, e.g. "bf16 (auto: CPU with AMX bf16, ...)"
    preview: Path | None = None
    vector_features: int = 0
    vector_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds: setup, tiles, finish

    @property
    def tiles_skipped(self) -> int:
        return self.tiles - self.tiles_run


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


@dataclass
class OutputPlan:
    """Where each output goes. ``per_file``: one class raster per input file."""

    per_file: bool
    classes: list[Path]  # one (mosaic) or one per input, in input order
    confidence: list[Path]  # empty without --confidence
    vector: Path | None
    work_dir: Path  # where temporary rasters go (the output folder)


def _is_folder_arg(p: str | Path) -> bool:
    s = str(p)
    return Path(s).is_dir() or s.endswith(("/", os.sep))


def plan_outputs(config: PredictConfig, inputs: list[Path]) -> OutputPlan:
    """Decide and check every destination (nothing is created)."""
    out = Path(config.out)
    per_file = _is_folder_arg(config.out)
    if per_file:
        folder = check_folder_writable(out, "--out")
        classes = [folder / f"{p.stem}_landcover.tif" for p in inputs]
    else:
        if out.suffix.lower() not in RASTER_OUT_SUFFIXES:
            raise OutputError(f"--out {out}: expected a .tif file or an existing folder")
        classes = [out]
    confidence: list[Path] = []
    if config.confidence:
        if per_file:
            if not _is_folder_arg(config.confidence):
                raise OutputError("--confidence: must be a folder when --out is a folder")
            cfolder = check_folder_writable(config.confidence, "--confidence")
            confidence = [cfolder / f"{p.stem}_confidence.tif" for p in inputs]
        else:
            c = Path(config.confidence)
            if _is_folder_arg(c) or c.suffix.lower() not in RASTER_OUT_SUFFIXES:
                raise OutputError(f"--confidence {c}: expected a .tif file (--out is a file)")
            confidence = [c]
    vector = Path(config.vector) if config.vector else None
    if vector is not None:
        vector_format(vector)
    preview = Path(config.preview) if config.preview else None
    if preview is not None and preview.suffix.lower() != ".png":
        raise OutputError(f"--preview {preview}: expected a .png file")
    extra = ([(vector, "--vector")] if vector else []) + ([(preview, "--preview")] if preview else [])
    for path, option in [(p, "--out") for p in classes] + [(p, "--confidence") for p in confidence] + extra:
        check_output_path(path, config.overwrite, option)
    everything = [p.resolve() for p in classes + confidence + [p for p, _ in extra]]
    if len(set(everything)) != len(everything):
        raise OutputError("two outputs have the same path (--out, --confidence, --vector, --preview)")
    clash = set(everything) & {p.resolve() for p in inputs}
    if clash:
        raise OutputError(f"{next(iter(clash))}: an output would replace an input")
    work_dir = classes[0].parent
    return OutputPlan(per_file, classes, confidence, vector, work_dir)


# ---------------------------------------------------------------------------
# Checks against the checkpoint
# ---------------------------------------------------------------------------


def check_resolution(mosaic: Mosaic, spec: InputSpec, resample: bool) -> tuple[float | None, list[str]]:
    """Pixel size against the checkpoint's GSD: (resolution to read at or None, warnings)."""
    notes = []
    crs = mosaic.crs
    factor = unit_to_m(crs)
    if crs is None:
        notes.append(f"{mosaic.files[0].name}: no CRS; working in pixel coordinates, outputs have no CRS")
        if resample:
            raise ConfigError("--resample needs a raster with a CRS")
        return None, notes
    if spec.gsd is None:
        if resample:
            raise ConfigError("--resample: the checkpoint does not record a ground sampling distance")
        return None, notes
    if factor is None:
        notes.append(f"{mosaic.files[0].name}: geographic CRS; its pixel size cannot be compared with the model's GSD")
        if resample:
            raise ConfigError("--resample needs a projected CRS (metres)")
        return None, notes
    # the pixel's sides are the affine's column vectors: a rotated grid has them off the axes
    t = mosaic.transform
    px = (math.hypot(t.a, t.d) + math.hypot(t.b, t.e)) / 2 * factor
    north_up = t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0
    if not north_up and resample:
        raise ConfigError(
            f"--resample: {mosaic.files[0].name} is rotated or south-up; warp it to a north-up grid first "
            f"(gdalwarp -tr {spec.gsd:g} {spec.gsd:g})"
        )
    if resample:
        return spec.gsd / factor, notes
    if abs(px - spec.gsd) > GSD_TOLERANCE * spec.gsd:
        fix = (f"--resample reads the input at {spec.gsd:.3g} m" if north_up else
               f"the raster is rotated: warp it to {spec.gsd:.3g} m (gdalwarp -tr {spec.gsd:g} {spec.gsd:g})")
        notes.append(
            f"pixel size {px:.3g} m differs from the model's {spec.gsd:.3g} m by "
            f"{abs(px / spec.gsd - 1) * 100:.0f}%; {fix}"
        )
    return None, notes


def check_scaling(mosaic: Mosaic, spec: InputSpec) -> list[str]:
    if mosaic.dtype == "uint16" and spec.scale <= 255:
        return [f"16-bit input but the checkpoint scales values by {spec.scale:g} (8-bit imagery)"]
    if mosaic.dtype == "uint8" and spec.scale > 255:
        return [f"8-bit input but the checkpoint scales values by {spec.scale:g} (16-bit imagery)"]
    return []


# ---------------------------------------------------------------------------
# Model on tiles
# ---------------------------------------------------------------------------


def predict_probabilities(model: torch.nn.Module, hr: torch.Tensor, lr: torch.Tensor | None,
                          precision: Precision | None = None) -> torch.Tensor:
    """(B, C, T, T) normalised HR (and LR) -> (B, K, T, T) float32 class probabilities.

    ``precision``: the autocast of the forward pass (None = fp32).
    """
    device = next(model.parameters()).device
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        logits = model(hr.to(device, non_blocking=True), None if lr is None else lr.to(device, non_blocking=True))
    return logits.float().softmax(dim=1)


def output_block(tile: int) -> int:
    """GeoTIFF block size: the largest of 512..16 dividing the tile (tiles then fill whole blocks)."""
    return next((b for b in (512, 256, 128, 64, 32, 16) if tile % b == 0), 256)


def choose_strip_width(width: int, tile: int, block: int, soft_classes: int | None, memory_mb: int) -> int:
    """Strip width (multiple of the block, and of the tile without blending) within the memory budget."""
    if soft_classes is None:  # two uint8 rows buffers of (tile + block) rows
        return max(tile, (8192 // tile) * tile)
    per_column = (soft_classes + 1) * (tile + block) * 4
    w = (memory_mb * 2**20 // per_column) // block * block
    return max(w, 2 * tile, block)


def gdal_cache_bytes(mosaic: Mosaic, tile: int, base_mb: int) -> tuple[int, list[str]]:
    """GDAL block cache for the run, and a warning for striped inputs.

    Tiled inputs need little cache (a tile row of blocks of one strip). A
    striped file's blocks span its whole width: without room for a tile row
    of them, every tile would decode them again.
    """
    notes, extra = [], 0
    itemsize = np.dtype(mosaic.dtype).itemsize
    for info in mosaic.files:
        bh, bw = info.block_shape
        if bw >= info.width and info.width > 2048:
            notes.append(
                f"{info.name} is a striped TIFF: reading it is slow and needs a larger cache; "
                "gdal_translate -co TILED=YES makes a tiled copy"
            )
            extra = max(extra, mosaic.width * (tile + bh) * mosaic.count * itemsize)
    return base_mb * 2**20 + int(extra * 1.25), notes[:1]


def _workers(n: int | None, device: torch.device | None = None) -> int:
    """Reader processes. Default: on CUDA one fewer than the CPUs (max 4); on the CPU, where the
    model itself needs the cores, none on small machines (reading is cheap next to a forward
    pass) and one otherwise."""
    if n is not None:
        if n < 0:
            raise ConfigError(f"--workers must be >= 0, got {n}")
        return n
    cpus = os.cpu_count() or 1
    if device is not None and device.type == "cpu":
        return 0 if cpus <= 4 else 1
    return max(0, min(4, cpus - 1))


def make_loader(dataset: PredictTiles, config: PredictConfig, device: torch.device) -> tuple[DataLoader, int]:
    workers = _workers(config.workers, device)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_tiles,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        worker_init_fn=_init_reader if workers else None,
    )
    return loader, workers


def _init_reader(worker_id: int) -> None:
    # Share batches by shared-memory file name rather than by passing descriptors: the descriptor
    # server thread prints a traceback when an interrupted run stops its readers.
    torch.multiprocessing.set_sharing_strategy("file_system")


def _run_tiles(
    model: torch.nn.Module,
    batches,
    workers: int,
    sink_thread: SinkThread,
    device: torch.device,
    config: PredictConfig,
    soft: bool,
    total: int,
    builder: LowResBuilder | None = None,
    precision: Precision | None = None,
) -> tuple[int, float]:
    """The model loop: batches in plan order -> results to the writer thread. Returns (tiles run, forward s)."""
    tiles_run, forward = 0, 0.0
    bar = tqdm(total=total, unit="tile", desc="predict", disable=not config.progress, dynamic_ncols=True)
    try:
        with CpuThreads(device, workers) as threads:
            for batch in batches:
                batch: TileBatch
                threads.update(int(builder is not None and builder.is_alive()))
                results: list = [None] * len(batch.index)  # None: all nodata, not run
                if len(batch.hr):
                    t0 = time.perf_counter()
                    probs = predict_probabilities(model, batch.hr, batch.lr, precision)  # (N, K, T, T)
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
                        payload = list(zip(cls, conf))
                    forward += time.perf_counter() - t0
                    ran = iter(payload)
                    results = [next(ran) if r else None for r in batch.run.tolist()]
                    tiles_run += len(payload)
                sink_thread.submit(list(zip(batch.index.tolist(), results)))
                bar.update(len(batch.index))
    finally:
        bar.close()
    return tiles_run, forward


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------


def predict(config: PredictConfig) -> PredictResult:
    """Run a whole prediction (see the module docstring); raise CaswitError on user errors."""
    t_start = time.perf_counter()
    check_settings(config)
    if (config.min_area or config.simplify) and not config.vector:
        raise ConfigError("--min-area and --simplify apply to polygons: add --vector PATH")
    _workers(config.workers)
    weights = resolve_weights(config.weights)
    inputs = expand_inputs(config.inputs)
    plan = plan_outputs(config, inputs)

    device = select_device(config.device)
    model, meta = load_checkpoint(weights, device=device)
    if meta.kind != "segmentation":
        raise CheckpointError(f"{weights}: a {meta.kind} checkpoint cannot predict classes")
    precision = resolve_precision(config.precision, device, model, model_name=meta.name)
    prepare_inference(model, precision)
    spec, classes = meta.input_spec, meta.classes
    tile, k = spec.tile_size, spec.context_factor
    if not 0 <= config.overlap < tile:
        raise ConfigError(f"--overlap must be in [0, {tile}) pixels for {tile} px tiles, got {config.overlap}")

    mosaic = open_mosaic(inputs, spec.bands)
    target_res, notes = check_resolution(mosaic, spec, config.resample)
    if target_res is not None:
        mosaic = open_mosaic(inputs, spec.bands, target_res=target_res)
    cache_bytes, cache_notes = gdal_cache_bytes(mosaic, tile, config.gdal_cache_mb)
    notes = mosaic.warnings + notes + check_scaling(mosaic, spec) + cache_notes
    for note in notes:
        warnings.warn(note, stacklevel=2)

    grid = TileGrid(mosaic.width, mosaic.height, tile, config.overlap)
    soft = config.overlap > 0
    block = output_block(tile)
    strip_width = config.strip_width or choose_strip_width(
        mosaic.width, tile, block, len(classes) if soft else None, config.blend_memory_mb
    )
    if strip_width % block or (not soft and strip_width % tile):
        raise ConfigError(f"strip width {strip_width} must be a multiple of the block ({block}) and tile")
    column_strips = strips(mosaic.width, strip_width)
    tile_plan = plan_tiles(grid, strip_width)

    if not model.config.dual:
        context = "none"
    elif config.lr_prepass and prepass_supported(tile, grid.stride, k):
        context = "prepass"
    else:
        context = "direct"

    tags = model_tags(
        meta.name,
        str(weights),
        classes,
        extra=dict(
            input_spec=spec.to_dict(),
            tile_size=str(tile),
            context_factor=str(k),
            overlap=str(config.overlap),
            precision=precision.name,
            sources=[p.name for p in inputs],
            metadata=meta.metadata,
            provenance=meta.provenance,
        ),
    )
    writers: list[AtomicRasterWriter] = []
    sink_thread: SinkThread | None = None
    builder: LowResBuilder | None = None
    vector_result: VectorResult | None = None
    dataset: PredictTiles | None = None
    # a bounded GDAL block cache (by default it grows with the raster up to 5% of the RAM, in
    # every process) and a smaller pool of open mosaic files (each costs about 1 MB)
    with rasterio.Env(GDAL_CACHEMAX=cache_bytes, GDAL_MAX_DATASET_POOL_SIZE=GDAL_POOL), tempfile.TemporaryDirectory(
        dir=plan.work_dir, prefix=".caswit-work-"
    ) as work:
        work = Path(work)
        phases = {"setup": time.perf_counter() - t_start}
        try:
            # -- LR pre-pass geometry (its chunks are written by a thread, see below) --
            lowres = None
            if context == "prepass":
                with mosaic.open() as src:
                    lowres = plan_lowres(src, spec.bands, grid, k, work / "context")

            # -- mosaic outputs (final files, or temporaries split per input later) --
            split = plan.per_file and (len(inputs) > 1 or mosaic.resampled)
            mosaic_classes = work / "classes.tif" if split else plan.classes[0]
            mosaic_conf = (work / "confidence.tif" if split else plan.confidence[0]) if plan.confidence else None

            def writer(path: Path, with_classes: bool, overviews: bool) -> AtomicRasterWriter:
                w = AtomicRasterWriter(
                    path,
                    width=mosaic.width,
                    height=mosaic.height,
                    crs=mosaic.crs,
                    transform=mosaic.transform,
                    block=block,
                    classes=classes if with_classes else None,
                    description=class_description(classes) if with_classes else CONFIDENCE_DESCRIPTION,
                    tags=tags,
                    overviews=overviews,
                )
                writers.append(w)
                return w

            class_writer = writer(mosaic_classes, True, not split)
            conf_writer = writer(mosaic_conf, False, not split) if mosaic_conf else None

            # -- model loop ----------------------------------------------------------
            t0 = time.perf_counter()
            dataset = PredictTiles(mosaic.source, [w for _, w in tile_plan], spec, context, lowres)
            loader, workers = make_loader(dataset, config, device)
            batches = iter(loader)  # forks the readers first: never fork while our threads hold GDAL locks
            if lowres is not None:
                builder = LowResBuilder(mosaic.source, spec.bands, lowres, chunk_order(lowres, dataset.windows))
                builder.start()
            sink = TileSink(
                tile_plan,
                column_strips,
                mosaic.height,
                tile,
                block,
                class_writer,
                conf_writer,
                num_classes=len(classes) if soft else None,
                row_areas=lambda r0, n: row_areas_m2(mosaic.crs, mosaic.transform, r0, n),
            )
            sink_thread = SinkThread(sink)
            sink_thread.start()
            try:
                tiles_run, forward = _run_tiles(
                    model, batches, workers, sink_thread, device, config, soft, len(tile_plan), builder, precision
                )
            finally:
                stop_workers(batches)
            sink_thread.finish()
            if builder is not None:
                builder.join()
                if builder.error is not None:
                    raise builder.error
            phases["tiles"] = time.perf_counter() - t0
            t0 = time.perf_counter()

            # -- finish outputs ----------------------------------------------------------
            pending: list[tuple[AtomicRasterWriter | Path, Path | None]] = []
            class_writer.finish()
            if conf_writer is not None:
                conf_writer.finish()
            if split:
                finals = _split_per_file(mosaic, class_writer.tmp, plan.classes, classes, tags, block, True)
                if conf_writer is not None:
                    finals += _split_per_file(mosaic, conf_writer.tmp, plan.confidence, classes, tags, block, False)
                writers.extend(finals)
                pending.extend((w, None) for w in finals)
            else:
                pending.append((class_writer, None))
                if conf_writer is not None:
                    pending.append((conf_writer, None))
            if plan.vector is not None:
                vector_result = vectorize(
                    class_writer.tmp,
                    plan.vector,
                    classes,
                    min_area=config.min_area,
                    simplify=config.simplify,
                    commit=False,
                    work_dir=work,
                )
                pending.append((vector_result.tmp, plan.vector))
            # every output is complete: rename them together
            for item, dest in pending:
                if isinstance(item, AtomicRasterWriter):
                    item.commit()
                else:
                    commit_file(item, dest)
            phases["finish"] = time.perf_counter() - t0
        except BaseException as exc:
            # decided before the temporary files go: a full disk is recognised by what is left of it
            failure = _user_failure(exc, builder, plan.work_dir, mosaic, inputs)
            if builder is not None and builder.is_alive():
                builder.stop()
            if sink_thread is not None and sink_thread.is_alive():
                sink_thread.abort()
            for w in writers:
                if not w.committed:
                    w.abort()
            if vector_result is not None and vector_result.tmp is not None:
                vector_result.tmp.unlink(missing_ok=True)
            if failure is not None:
                raise failure from failure.__cause__
            raise
        finally:
            if dataset is not None:
                dataset.close()

    if config.preview:
        # the class raster is complete and has overviews: the quick-look reads a screenful
        image = str(inputs[0]) if plan.per_file else mosaic.source
        write_preview(plan.classes[0], config.preview, classes, image=image, bands=spec.bands[:3])
    pixels = sink.pixels
    areas = sink.areas
    names = classes.names
    return PredictResult(
        outputs=list(plan.classes),
        confidence_outputs=list(plan.confidence),
        vector=plan.vector,
        tiles=len(tile_plan),
        tiles_run=tiles_run,
        seconds=time.perf_counter() - t_start,
        forward_seconds=forward,
        class_pixels={names[i]: int(pixels[i]) for i in range(len(names))},
        class_areas_m2=None if areas is None else {names[i]: float(areas[i]) for i in range(len(names))},
        nodata_pixels=int(pixels[NODATA]),
        width=mosaic.width,
        height=mosaic.height,
        device=str(device),
        context=context,
        precision=precision.describe(),
        preview=Path(config.preview) if config.preview else None,
        vector_features=vector_result.features if vector_result else 0,
        vector_seconds=vector_result.seconds if vector_result else 0.0,
        warnings=notes,
        phases=phases,
    )


def _user_failure(exc: BaseException, builder: LowResBuilder | None, work_dir: Path, mosaic: Mosaic,
                  inputs: list[Path]) -> CaswitError | None:
    """The user error behind a failed run (full disk, unreadable input), or None for the exception as is.

    A reader that stopped waiting for the LR pre-pass says less than the
    pre-pass thread's own error, which is preferred.
    """
    if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM
        return None
    cause = builder.error if builder is not None and builder.error is not None else exc
    return no_space_error(cause, work_dir) or read_error(
        cause, [info.path for info in mosaic.files], fallback=", ".join(str(p) for p in inputs[:3])
    )


CONFIDENCE_DESCRIPTION = "confidence: probability of the predicted class, percent (255 = nodata)"


def _split_per_file(
    mosaic: Mosaic,
    mosaic_path: Path,
    destinations: list[Path],
    classes: ClassTable,
    tags: dict[str, str],
    block: int,
    is_classes: bool,
) -> list[AtomicRasterWriter]:
    """One finished (not yet renamed) output per input file, cut from the mosaic output.

    Each output has the input's own grid (or, when resampled, the mosaic grid
    over the input's extent) and is nodata where that input is nodata.
    """
    out = []
    for info, dest in zip(mosaic.files, destinations):
        window = mosaic.file_window(info)
        w, h = int(window.width), int(window.height)
        if not mosaic.resampled and (w, h) == (info.width, info.height):
            transform = info.transform
        else:
            transform = mosaic.transform @ Affine.translation(window.col_off, window.row_off)
        mask_source = build_vrt_xml([info], transform, w, h, mosaic.bands, mosaic.crs, mosaic.resampled)
        writer = AtomicRasterWriter(
            dest,
            width=w,
            height=h,
            crs=mosaic.crs,
            transform=transform,
            block=block,
            classes=classes if is_classes else None,
            description=class_description(classes) if is_classes else CONFIDENCE_DESCRIPTION,
            tags={**tags, "CASWIT_SOURCES": json.dumps([info.name])},
        )
        out.append(writer)
        copy_window_masked(mosaic_path, window, writer, mask_source, mosaic.bands)
        writer.finish()
    return out
