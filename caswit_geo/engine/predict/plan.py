"""Step 1 of ``predict``: the plan.

Everything decided before any file is written or the model is built: the
inputs and their virtual mosaic, the outputs, the tile grid, the units of
work and the context mode. Only the checkpoint's header is read (bands,
tile size, classes), so the plan, and every test of it, needs no model.

Units
-----
Each output raster (the mosaic's, or one per input file) is cut into
rectangles of about ``unit_size`` pixels a side (no wider than a blending
strip), of near-equal sizes, whose offsets are multiples of the output
block and of the tile (:func:`plan_units`). A unit predicts every tile of the mosaic grid that
touches its pixels, in a fixed order (strips of bounded memory, row-major
within a strip), with batches that never span two units, and writes its
pixels as one part file. So whoever computes a unit (this run, a resumed
one, another shard or GPU) computes the same pixels, and the outputs
assembled from the parts equal a single uninterrupted run's. Without
overlap and with block-aligned units, no tile is computed twice; with
overlap, tiles on unit borders are computed by both neighbours.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from rasterio.windows import Window

from caswit_geo.core.errors import CheckpointError, ConfigError, InputError, OutputError
from caswit_geo.core.limits import check_settings
from caswit_geo.core.spec import ClassTable, InputSpec, scale_warning
from caswit_geo.engine.predict.config import PredictConfig
from caswit_geo.geo.area import unit_to_m
from caswit_geo.geo.class_raster import model_tags, output_block
from caswit_geo.geo.grid import TileGrid, plan_tiles, span_piece, strips, touching
from caswit_geo.geo.inputs import resolve_inputs
from caswit_geo.geo.lowres import prepass_supported
from caswit_geo.geo.mosaic import Mosaic, open_mosaic
from caswit_geo.geo.pyramid import levels_for
from caswit_geo.geo.qgis_style import style_path
from caswit_geo.geo.region import Region, intersect_windows, region_on_grid, region_polygons
from caswit_geo.geo.remote import input_name, input_stem, mask
from caswit_geo.geo.sources import source_files
from caswit_geo.geo.vectorize import check_layer_name, geopackage_layers, vector_format
from caswit_geo.geo.webmap import check_connection_string, open_service, service_crs, service_kind, service_label
from caswit_geo.model.checkpoint import CheckpointMeta, free_dict_summary, read_meta, shape_model
from caswit_geo.model.weights import resolve_weights, sha256
from caswit_geo.runtime.device import select_device
from caswit_geo.runtime.precision import Precision, resolve_precision
from caswit_geo.safeio.outputs import OutputSet

GSD_TOLERANCE = 0.10  # relative pixel-size difference that deserves a warning
RASTER_OUT_SUFFIXES = (".tif", ".tiff")
STATS_SUFFIXES = (".csv", ".json")
UNIT_TILES = 8  # default side of a unit, in tiles (twice that with overlap)
JOB_SUFFIX = ".caswit-job"
# the most units a job has: units grow beyond --unit-size rather than outnumber this, so a plan
# (about 400 bytes a unit in memory, 40 in plan.json) stays within about 32 MiB whatever the area
MAX_UNITS = 1 << 16


@dataclass(frozen=True)
class OutputRaster:
    """One class raster (and its confidence raster) of the job.

    ``window``: its extent in mosaic pixels; ``transform``: its own
    georeferencing; ``source``: the input file whose own mask applies to
    it (per-file outputs of a mosaic of several files, where another file
    may cover the same ground), None when the mosaic's mask is its own.
    """

    classes: Path
    confidence: Path | None
    window: Window
    transform: Affine
    source: int | None
    sources: tuple[str, ...]
    probabilities: Path | None = None


@dataclass(frozen=True)
class Unit:
    """A unit of work: ``window`` in pixels of output raster ``raster``.

    ``weight``: tiles touching it that meet an input file (tiles over gaps
    between files are all nodata and cost nothing), which shards balance.
    """

    id: int
    raster: int
    window: Window
    weight: int


@dataclass
class PredictPlan:
    inputs: list[str | Path]  # local paths; URLs and GDAL network names as strings (geo/remote.py)
    weights: Path
    meta: CheckpointMeta
    mosaic: Mosaic
    grid: TileGrid
    block: int  # output GeoTIFF block; unit offsets are multiples of it
    strip_width: int  # columns assembled at once inside a unit (bounded memory)
    unit_size: int
    context: str  # "prepass", "direct" or "none"
    per_file: bool
    rasters: list[OutputRaster]
    units: list[Unit]
    vector: Path | None
    preview: Path | None
    format: str
    tags: dict[str, str]
    warnings: list[str]
    cache_bytes: int
    job_dir: Path
    precision: Precision = field(default_factory=lambda: Precision("fp32", "cpu", "default"))
    min_area: float | None = None
    simplify: float | None = None
    options: dict = field(default_factory=dict)  # the pixel-changing options (plan.json, --resume)
    tta: str = "none"  # test-time augmentation mode (model/tta.py)
    unit_width: int | None = None  # units' width (None: unit_size)
    footprints: list[Window] | None = None  # where the inputs' pixels are (mosaic pixels); None: everywhere
    read_files: list[Path] = field(default_factory=list)  # every file read: inputs and a VRT's sources
    vector_layer: str | None = None  # the polygons' layer (GeoPackage, FlatGeobuf, GeoJSON)
    vector_update: bool = False  # --vector is an existing GeoPackage: its other layers stay
    roi: Region | None = None  # --roi / --bbox: the pixels kept and the tiles run (geo/region.py)
    stats: Path | None = None  # --stats: class areas per region feature and input file (stats.py)
    web_service: bool = False  # the input is a WMS/WMTS service (geo/webmap.py): one request per reader at a time
    input_notes: list[str] = field(default_factory=list)  # STAC assets, a service's level: the summary says
    input_ids: dict[str, dict] = field(default_factory=dict)  # remote inputs' identities (plan.json, --resume)

    @functools.cached_property
    def checkpoint_sha256(self) -> str:
        """Hashed once per plan: a Swin checkpoint is hundreds of MB."""
        return sha256(self.weights)

    @property
    def spec(self) -> InputSpec:
        return self.meta.input_spec

    @property
    def classes(self) -> ClassTable:
        return self.meta.classes

    @property
    def soft(self) -> bool:
        """Probabilities are blended (overlapping tiles) rather than pasted."""
        return self.grid.overlap > 0

    @property
    def with_confidence(self) -> bool:
        return bool(self.rasters) and self.rasters[0].confidence is not None

    @property
    def with_probabilities(self) -> bool:
        """Each unit also writes a part of K uint8 bands, the class probabilities in percent."""
        return bool(self.rasters) and self.rasters[0].probabilities is not None

    def region(self, unit: Unit) -> Window:
        """The unit's pixels in mosaic pixels."""
        r = self.rasters[unit.raster].window
        w = unit.window
        return Window(int(r.col_off + w.col_off), int(r.row_off + w.row_off), int(w.width), int(w.height))

    def region_window(self, unit: Unit, window: Window) -> Window:
        """``window`` (pixels of the unit) in mosaic pixels."""
        r = self.region(unit)
        return Window(int(r.col_off + window.col_off), int(r.row_off + window.row_off), int(window.width),
                      int(window.height))

    def tiles(self, unit: Unit) -> list[tuple[int, Window]]:
        """(strip index, tile window in mosaic pixels) of the unit, in processing order."""
        return plan_tiles(self.grid, self.strip_width, self.region(unit))

    def tile_count(self, unit: Unit) -> int:
        """len(self.tiles(unit)), without listing them."""
        region = self.region(unit)
        r0, c0 = int(region.row_off), int(region.col_off)
        rows = len(touching(self.grid.row_offsets, self.grid.tile, r0, r0 + int(region.height)))
        cols = sum(len(touching(self.grid.col_offsets, self.grid.tile, c0 + x0, c0 + x1))
                   for x0, x1 in strips(int(region.width), self.strip_width))
        return rows * cols

    @property
    def total_tiles(self) -> int:
        """Tiles of every unit (overlap counted where units share border tiles)."""
        return sum(self.tile_count(u) for u in self.units)

    def raster_levels(self, index: int) -> list[int]:
        """Overview factors of output raster ``index`` (COG rule: down to one block)."""
        w = self.rasters[index].window
        return levels_for(int(w.width), int(w.height), self.block)

    def unit_levels(self, unit: Unit) -> list[int]:
        """The overview levels a unit computes itself: those whose 2 x 2 blocks stay inside output blocks."""
        return [f for f in self.raster_levels(unit.raster) if f <= self.block]

    def unit_transform(self, unit: Unit) -> Affine:
        w = unit.window
        return self.rasters[unit.raster].transform @ Affine.translation(int(w.col_off), int(w.row_off))

    def styled_outputs(self) -> list[tuple[Path, str]]:
        """The outputs that get a ``.qml`` QGIS style beside them, with the option naming each."""
        out = [(r.classes, "--out") for r in self.rasters]
        out += [(r.confidence, "--confidence") for r in self.rasters if r.confidence is not None]
        out += [(r.probabilities, "--probabilities") for r in self.rasters if r.probabilities is not None]
        if self.vector is not None and vector_format(self.vector) != "GPKG":  # a GeoPackage holds its style
            out.append((self.vector, "--vector"))
        return out

    def destinations(self) -> list[tuple[Path, str]]:
        """Every output file with the option naming it (class rasters, their legends and QGIS styles, ...)."""
        out = []
        for r in self.rasters:
            out.append((r.classes, "--out"))
            out.append((Path(f"{r.classes}.aux.xml"), "--out"))
        out += [(r.confidence, "--confidence") for r in self.rasters if r.confidence is not None]
        out += [(r.probabilities, "--probabilities") for r in self.rasters if r.probabilities is not None]
        if self.vector is not None:
            out.append((self.vector, "--vector"))
        if self.preview is not None:
            out.append((self.preview, "--preview"))
        if self.stats is not None:
            out.append((self.stats, "--stats"))
        return out + [(style_path(d), option) for d, option in self.styled_outputs()]


def is_sidecar(path: Path) -> bool:
    """A legend or style file that goes with an output (claimed with it, not on its own)."""
    return str(path).endswith((".aux.xml", ".qml"))


def check_style_names(plan: PredictPlan) -> None:
    """Two outputs whose QGIS styles would be the same file (``map.tif`` and ``map.geojson``) are refused."""
    seen: dict[Path, tuple[str, Path]] = {}
    for dest, option in plan.styled_outputs():
        style = style_path(dest)
        if style in seen:
            other_option, other = seen[style]
            raise ConfigError(f"{option} {dest} and {other_option} {other} would share the QGIS style file "
                              f"{style.name}: give them different names")
        seen[style] = (option, dest)


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------


def check_options(config: PredictConfig) -> None:
    """Option values and combinations (before anything is opened)."""
    check_settings(config)  # every numeric option within its declared bounds, NaN refused
    if (config.min_area or config.simplify) and not config.vector:
        raise ConfigError("--min-area and --simplify apply to polygons: add --vector PATH")
    if config.shard is not None:
        i, n = config.shard
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"--shard {i}/{n}: expected I/N with 0 <= I < N")
    if config.finalize_only and config.shard is not None:
        raise ConfigError("--finalize assembles a whole job: it takes no --shard")
    if config.finalize_only and config.defer_finalize:
        raise ConfigError("--finalize and --no-finalize contradict each other")


def plan_predict(config: PredictConfig) -> PredictPlan:
    """The whole plan of ``config`` (see the module docstring); writes nothing, builds no model."""
    check_options(config)
    weights = resolve_weights(config.weights)
    for item in config.inputs:
        check_connection_string(item)
    resolved = resolve_inputs(config.inputs, config.asset)  # files, URLs, STAC items; URLs probed
    inputs = resolved.files
    meta = read_meta(weights)
    if meta.kind != "segmentation":
        raise CheckpointError(f"{weights}: a {meta.kind} checkpoint cannot predict classes")
    spec = meta.input_spec
    tile, k = spec.tile_size, spec.context_factor
    # resolved here, once, for the whole job: every shard and resume then computes in the same
    # precision (a job started with "auto" on one machine is not silently continued in another)
    precision = resolve_precision(config.precision, select_device(config.device), shape_model(meta, weights),
                                  model_name=meta.name)
    if not 0 <= config.overlap < tile:
        raise ConfigError(f"--overlap must be in [0, {tile}) pixels for {tile} px tiles, got {config.overlap}")

    # what GDAL reads through the inputs (a VRT's sources too): no output may replace one of them
    read_files = list(dict.fromkeys(f for p in inputs for f in source_files(p)))
    per_file, classes_dests, conf_dests, prob_dests, vector, preview = plan_outputs(config, inputs, read_files)
    stats = plan_stats(config, read_files)

    nodata = check_nodata_option(config.nodata)
    mosaic, polygons, notes, service_notes = open_inputs(config, inputs, spec, nodata)
    region = None if polygons is None else region_on_grid(polygons, mosaic.transform, mosaic.width, mosaic.height)
    cache_bytes, cache_notes = gdal_cache_bytes(mosaic, tile, config.gdal_cache_mb)
    notes = mosaic.warnings + notes + check_scaling(mosaic, spec) + cache_notes

    grid = TileGrid(mosaic.width, mosaic.height, tile, config.overlap)
    soft = config.overlap > 0
    block = output_block(tile)
    strip_width = config.strip_width or choose_strip_width(
        mosaic.width, tile, block, len(meta.classes) if soft else None, config.blend_memory_mb,
        len(meta.classes) if config.probabilities else 0,
    )
    if strip_width % block or (not soft and strip_width % tile):
        raise ConfigError(f"strip width {strip_width} must be a multiple of the block ({block}) and tile")
    # with overlap, tiles on unit borders are predicted by both neighbours: taller units, as wide as
    # the blending strips (whose borders duplicate tiles anyway), keep that to a few percent
    unit_size = config.unit_size or UNIT_TILES * tile * (2 if soft else 1)
    unit_width = min(unit_size, strip_width)

    if not meta.model_config.dual:
        context = "none"
    elif config.lr_prepass and prepass_supported(tile, grid.stride, k):
        context = "prepass"
    else:
        context = "direct"

    rasters = output_rasters(mosaic, per_file, classes_dests, conf_dests, prob_dests)
    footprints = data_windows(mosaic)
    if region is not None:
        rasters, footprints, region_notes = restrict_to_region(rasters, footprints, region)
        notes += region_notes
    unit_size, unit_width = unit_shape(rasters, grid, block, unit_size, unit_width, footprints)
    units = plan_units(rasters, grid, block, unit_size, footprints, unit_width)
    tags = model_tags(
        meta.name,
        str(weights),
        meta.classes,
        extra=dict(
            input_spec=spec.to_dict(),
            tile_size=str(tile),
            context_factor=str(k),
            overlap=str(config.overlap),
            precision=precision.name,
            tta=config.tta,
            sources=[input_name(p) for p in inputs],
            metadata=free_dict_summary(meta.metadata),
            provenance=free_dict_summary(meta.provenance),
        ),
    )
    plan = PredictPlan(
        inputs=inputs, weights=weights, meta=meta, mosaic=mosaic, grid=grid, block=block,
        strip_width=strip_width, unit_size=unit_size, context=context, per_file=per_file, rasters=rasters,
        units=units, vector=vector, preview=preview, format=config.format, tags=tags, warnings=notes,
        cache_bytes=cache_bytes, job_dir=job_dir_for(config.out, per_file, classes_dests), min_area=config.min_area,
        simplify=config.simplify, precision=precision, tta=config.tta, unit_width=unit_width, footprints=footprints,
        read_files=read_files, vector_layer=None if vector is None else config.vector_layer or vector.stem,
        vector_update=vector is not None and geopackage_update(vector), roi=region, stats=stats,
        web_service=any(service_kind(p) for p in inputs), input_notes=resolved.notes + service_notes,
        input_ids=resolved.identities,
    )
    plan.options = pixel_options(config, plan)
    check_style_names(plan)
    return plan


def open_inputs(config: PredictConfig, inputs: list[Path], spec: InputSpec, nodata):
    """(mosaic, the region's polygons in its CRS or None, warnings, input notes): the inputs' mosaic, or a
    web map service's around the region (``geo/webmap.py``; the notes say which level and resampling are
    read), and the region of ``--roi``/``--bbox``."""
    services = [p for p in inputs if service_kind(p)]
    if not services:
        mosaic = open_mosaic(inputs, spec.bands, nodata=nodata, alpha_mask=config.alpha_mask)
        target_res, notes = check_resolution(mosaic, spec, config.resample)
        if target_res is not None:
            mosaic = open_mosaic(inputs, spec.bands, target_res=target_res, nodata=nodata,
                                 alpha_mask=config.alpha_mask)
        polygons = region_polygons(config.roi, config.roi_layer, config.bbox, config.bbox_crs, mosaic.crs)
        return mosaic, polygons, notes + _region_notes(polygons), []
    service = services[0]
    label = service_label(service)
    if len(inputs) > 1:
        raise ConfigError(f"{label}: a web map service is read alone; predict other inputs in another run")
    if config.roi is None and config.bbox is None:
        raise ConfigError(f"{label}: a web map service covers a whole country or the planet; give the region "
                          "with --roi PATH or --bbox XMIN,YMIN,XMAX,YMAX")
    polygons = region_polygons(config.roi, config.roi_layer, config.bbox, config.bbox_crs, service_crs(service))
    tile, k = spec.tile_size, spec.context_factor
    # a tile meeting the region reaches up to T beyond it, its LR context (k - 1) T / 2 beyond the tile;
    # a tile more keeps the clipped grid's last tiles away from those
    margin = (k + 3) * tile // 2 + config.overlap
    align = math.lcm(tile - config.overlap, k)
    bounds = tuple(float(v) for v in shapely.total_bounds(polygons.geoms))
    mosaic, notes = open_service(service, spec.bands, spec.gsd, bounds, margin, align)
    return mosaic, polygons, _region_notes(polygons), notes


def _region_notes(polygons) -> list[str]:
    if polygons is None or not polygons.repaired:
        return []
    return [f"{polygons.label}: {polygons.repaired:,} invalid polygon(s) repaired (make_valid)"]


def restrict_to_region(rasters: list[OutputRaster], footprints: list[Window], region: Region):
    """(rasters, footprints, notes) cut to the region: each raster to the region's box (per-file
    rasters that the region does not meet are left out), the data to the features' boxes."""
    kept = []
    for raster in rasters:
        window = intersect_windows(raster.window, region.window)
        if window is None or not region.overlaps(window):
            continue
        dx, dy = int(window.col_off - raster.window.col_off), int(window.row_off - raster.window.row_off)
        kept.append(dataclasses.replace(raster, window=window, transform=raster.transform @ Affine.translation(dx, dy)))
    if not kept:
        raise InputError(f"{region.label}: the region meets none of the input files")
    notes = []
    if len(kept) < len(rasters):
        notes.append(f"{region.label}: {len(rasters) - len(kept)} of {len(rasters)} input files do not meet the "
                     "region; they have no output")
    rects = [w for f in footprints for r in region.rects() if (w := intersect_windows(f, r)) is not None]
    if not rects:
        raise InputError(f"{region.label}: the region lies over no pixel of the input files (a gap between them)")
    return kept, rects, notes


def plan_stats(config: PredictConfig, read_files: list[Path]) -> Path | None:
    """The ``--stats`` file: a .csv or .json, not an input, existing only with --overwrite."""
    if not config.stats:
        return None
    stats = Path(config.stats)
    if _is_folder_arg(stats) or stats.suffix.lower() not in STATS_SUFFIXES:
        raise OutputError(f"--stats {stats}: expected a .csv or .json file")
    others = [config.out, config.confidence, config.probabilities, config.vector, config.preview]
    if any(o is not None and Path(o).resolve() == stats.resolve() for o in others):
        raise OutputError(f"--stats {stats}: the same path as another output")
    OutputSet(overwrite=config.overwrite, inputs=read_files).check(stats, "--stats")
    return stats


def pixel_options(config: PredictConfig, plan: PredictPlan) -> dict:
    """The options that change output pixels or the parts: a resumed job must have the same.

    Batch size, workers, device and progress do not change pixels (on one
    device); the output format, vectors and preview are applied when the
    outputs are assembled, by whichever run does it.
    """
    options = {
        "overlap": config.overlap,
        # "warp": window-invariant resampling (geo/resampled.py); jobs of earlier releases stored True, GDAL's
        # VRT resampling, whose pixels differ: not continued with these
        "resample": "warp" if config.resample else False,
        "nodata": config.nodata,
        "alpha_mask": bool(config.alpha_mask),
        "context": plan.context,
        "precision": plan.precision.name,  # resolved: "auto" may mean another one on another machine
        "tile": plan.grid.tile,
        "context_factor": plan.spec.context_factor,
        "bands": list(plan.spec.bands),
        "per_file": plan.per_file,
        "confidence": plan.with_confidence,
        "probabilities": plan.with_probabilities,
        "tta": plan.tta,
        "region": None if plan.roi is None else plan.roi.digest,
    }
    return options


def job_dir_for(out: str | Path, per_file: bool, outputs: list[Path] = ()) -> Path:
    """The job folder: ``.<name>.caswit-job`` beside a single output; for per-file outputs
    ``<out>/.caswit-job-<digest>``, ``<digest>`` naming the set of its class rasters.

    A job belongs to its outputs: per-file runs of other inputs into the same
    folder are other jobs, which coexist (and never discard each other).
    """
    out = Path(os.path.abspath(out))
    if not per_file:
        return out.with_name(f".{out.name}{JOB_SUFFIX}")
    names = "\n".join(sorted(os.path.abspath(p) for p in outputs))
    return out / f"{JOB_SUFFIX}-{hashlib.sha256(names.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


def _is_folder_arg(p: str | Path) -> bool:
    s = str(p)
    return Path(s).is_dir() or s.endswith(("/", os.sep))


def plan_outputs(
    config: PredictConfig, inputs: list[str | Path], read_files: list[Path] | None = None
) -> tuple[bool, list[Path], list[Path], list[Path], Path | None, Path | None]:
    """Decide and check every destination (nothing is created, nothing claimed).

    Returns (per_file, class rasters, confidence rasters, probability rasters, vector, preview).
    """
    out = Path(config.out)
    per_file = _is_folder_arg(config.out)
    if per_file:
        _check_folder(out, "--out")
        classes = [out / f"{input_stem(p)}_landcover.tif" for p in inputs]
        check_distinct_outputs(inputs, classes, "--out")
    else:
        if out.suffix.lower() not in RASTER_OUT_SUFFIXES:
            raise OutputError(f"--out {out}: expected a .tif file or an existing folder")
        classes = [out]
    confidence = _companion_rasters(config.confidence, "--confidence", "confidence", per_file, inputs)
    probabilities = _companion_rasters(config.probabilities, "--probabilities", "probabilities", per_file, inputs)
    vector = Path(config.vector) if config.vector else None
    if vector is not None:
        vector_format(vector)
        _check_vector_layer(config, vector)
    elif config.vector_layer is not None:
        raise ConfigError("--vector-layer names the layer of --vector: add --vector PATH.gpkg")
    preview = Path(config.preview) if config.preview else None
    if preview is not None and preview.suffix.lower() != ".png":
        raise OutputError(f"--preview {preview}: expected a .png file")
    named = [(p, "--out") for p in classes] + [(p, "--confidence") for p in confidence]
    named += [(p, "--probabilities") for p in probabilities]
    named += ([(vector, "--vector")] if vector else []) + ([(preview, "--preview")] if preview else [])
    everything = [p.resolve() for p, _ in named]
    if len(set(everything)) != len(everything):
        raise OutputError("two outputs have the same path (--out, --confidence, --probabilities, --vector, --preview)")
    checks = OutputSet(overwrite=config.overwrite, inputs=read_files or inputs)
    for path, option in named + [(Path(f"{p}.aux.xml"), "--out") for p in classes]:
        checks.check(path, option, update=path == vector and geopackage_update(path))
    return per_file, classes, confidence, probabilities, vector, preview


def _companion_rasters(value: str | Path | None, option: str, kind: str, per_file: bool,
                       inputs: list[Path]) -> list[Path]:
    """The rasters that go with the class rasters (confidence, probabilities): a file, or a folder when --out is one."""
    if not value:
        return []
    if per_file:
        if not _is_folder_arg(value):
            raise OutputError(f"{option}: must be a folder when --out is a folder")
        folder = _check_folder(Path(value), option)
        paths = [folder / f"{input_stem(p)}_{kind}.tif" for p in inputs]
        check_distinct_outputs(inputs, paths, option)
        return paths
    path = Path(value)
    if _is_folder_arg(path) or path.suffix.lower() not in RASTER_OUT_SUFFIXES:
        raise OutputError(f"{option} {path}: expected a .tif file (--out is a file)")
    return [path]


def check_distinct_outputs(inputs: list[Path], outputs: list[Path], option: str) -> None:
    """Per-file outputs are named after their input's stem: two inputs that share one would write one file
    (``tile.tif`` and ``tile.jp2``, or ``a/tile.tif`` and ``b/tile.tif``)."""
    first: dict[Path, Path] = {}
    for source, dest in zip(inputs, outputs):
        if dest in first:
            raise OutputError(f"{option} {dest.parent}: {mask(first[dest])} and {mask(source)} would both write "
                              f"{dest.name}; rename one, or predict them into different folders")
        first[dest] = source


def geopackage_update(vector: Path) -> bool:
    """An existing GeoPackage is a container: predict writes its layer into a copy of it, the others stay."""
    return vector.suffix.lower() == ".gpkg" and vector.is_file()


def _check_vector_layer(config: PredictConfig, vector: Path) -> None:
    """The layer of --vector: named, and in an existing GeoPackage new, or replaced with --overwrite only."""
    if config.vector_layer is not None:
        if vector_format(vector) not in ("GPKG",):
            raise ConfigError(f"--vector-layer: {vector} is not a GeoPackage (.gpkg); its single layer has no name")
        check_layer_name(config.vector_layer)
    if not geopackage_update(vector):
        return
    layer = config.vector_layer or vector.stem
    if layer in geopackage_layers(vector) and not config.overwrite:
        raise OutputError(f"--vector {vector}: already has a layer {layer!r}; pass --overwrite to replace that "
                          "layer (the others stay), or name another with --vector-layer")


def _check_folder(folder: Path, option: str) -> Path:
    if not folder.exists():  # made by hand: the job of per-file outputs lives in it from the start
        raise OutputError(f"{option}: folder {folder} does not exist; create it first (mkdir -p {folder})")
    if not folder.is_dir():
        raise OutputError(f"{option}: {folder} is not a folder")
    return folder


def output_rasters(mosaic: Mosaic, per_file: bool, classes: list[Path], confidence: list[Path],
                   probabilities: list[Path] = ()) -> list[OutputRaster]:
    """The class rasters: the mosaic's grid, or each input file's own grid (its extent at the
    mosaic's pixel size when resampled)."""
    conf = confidence or [None] * len(classes)
    probs = list(probabilities) or [None] * len(classes)
    whole = Window(0, 0, mosaic.width, mosaic.height)
    if not per_file or (len(mosaic.files) == 1 and not mosaic.resampled):
        names = tuple(i.name for i in mosaic.files)
        return [OutputRaster(classes[0], conf[0], whole, mosaic.transform, None, names, probs[0])]
    out = []
    for i, (info, dest, cdest, pdest) in enumerate(zip(mosaic.files, classes, conf, probs)):
        window = mosaic.file_window(info)
        w, h = int(window.width), int(window.height)
        if not mosaic.resampled and (w, h) == (info.width, info.height):
            transform = info.transform
        else:
            transform = mosaic.transform @ Affine.translation(window.col_off, window.row_off)
        out.append(OutputRaster(dest, cdest, window, transform, i, (info.name,), pdest))
    return out


# ---------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------


def data_windows(mosaic: Mosaic) -> list[Window]:
    """Where the inputs' pixels are, in mosaic pixels: each file's window, or a VRT's source
    rectangles (a VRT may declare a huge raster around a few small sources)."""
    return [w for info in mosaic.files for w in mosaic.data_windows(info)]


def unit_shape(rasters: list[OutputRaster], grid: TileGrid, block: int, unit_size: int, unit_width: int,
               files: list[Window] | None) -> tuple[int, int]:
    """(unit_size, unit_width), doubled until the data needs at most ``MAX_UNITS`` units.

    The plan (its units in memory and in plan.json) is then bounded whatever
    the inputs' area: a national mosaic gets larger units, not more of them.
    """
    align = math.lcm(block, grid.tile)
    while unit_estimate(rasters, align, unit_size, unit_width, files) > MAX_UNITS:
        unit_size, unit_width = 2 * unit_size, 2 * unit_width
    return unit_size, unit_width


def unit_estimate(rasters: list[OutputRaster], align: int, unit_size: int, unit_width: int,
                   files: list[Window] | None) -> int:
    """An upper bound of the units :func:`plan_units` makes (cells of the unit lattice under the data)."""
    total = 0
    for raster, lattice, rects in _raster_lattices(rasters, align, unit_size, unit_width, files):
        sx, sy = lattice
        for c0, r0, c1, r1 in rects:
            total += ((c1 - 1) // sx - c0 // sx + 1) * ((r1 - 1) // sy - r0 // sy + 1)
    return total


def _raster_lattices(rasters, align, unit_size, unit_width, files):
    """Per raster: itself, its unit lattice (piece width, piece height) and the data rectangles
    ``(c0, r0, c1, r1)`` inside it, in its own pixels."""
    for raster in rasters:
        w, h = int(raster.window.width), int(raster.window.height)
        c_off, r_off = int(raster.window.col_off), int(raster.window.row_off)
        lattice = (span_piece(w, unit_width, align), span_piece(h, unit_size, align))
        rects = []
        for f in ([Window(c_off, r_off, w, h)] if files is None else files):
            c0, r0 = max(int(f.col_off) - c_off, 0), max(int(f.row_off) - r_off, 0)
            c1 = min(int(f.col_off + f.width) - c_off, w)
            r1 = min(int(f.row_off + f.height) - r_off, h)
            if c1 > c0 and r1 > r0:
                rects.append((c0, r0, c1, r1))
        yield raster, lattice, rects


def plan_units(
    rasters: list[OutputRaster], grid: TileGrid, block: int, unit_size: int, files: list[Window] | None = None,
    unit_width: int | None = None,
) -> list[Unit]:
    """Units of every raster where there is data (raster by raster, column by column, top to bottom).

    About ``unit_width`` (default ``unit_size``) by ``unit_size`` pixels, on
    a lattice of the raster (:func:`~caswit_geo.geo.grid.split_span`).
    Unit offsets are multiples of lcm(block, tile) in the raster's pixels,
    so a unit's pixels fill whole output blocks and, for rasters on the
    tile grid without overlap, whole tiles. ``files``: where the inputs'
    pixels are (mosaic pixels, :func:`data_windows`); a lattice cell that
    meets none of them is no unit (its pixels are nodata), and a unit's
    weight counts its tiles that meet one. None: data everywhere.

    The work is proportional to the units made, never to the rasters'
    declared size. More than ``MAX_UNITS`` units is refused: callers size
    units with :func:`unit_shape`.
    """
    align = math.lcm(block, grid.tile)
    unit_width = unit_width or unit_size
    if unit_estimate(rasters, align, unit_size, unit_width, files) > MAX_UNITS:
        raise ConfigError(f"units of {unit_width} x {unit_size} px make more than {MAX_UNITS:,} units; "
                          "use a larger --unit-size")
    units: list[Unit] = []
    for index, (raster, (sx, sy), rects) in enumerate(_raster_lattices(rasters, align, unit_size, unit_width, files)):
        w, h = int(raster.window.width), int(raster.window.height)
        c_off, r_off = int(raster.window.col_off), int(raster.window.row_off)
        cells: set[tuple[int, int]] = set()
        for c0, r0, c1, r1 in rects:
            cells.update((cx, cy) for cx in range(c0 // sx, (c1 - 1) // sx + 1)
                         for cy in range(r0 // sy, (r1 - 1) // sy + 1))
        # the tiles of the data: a unit's weight counts its tiles that meet an input file
        tile_rects = [(touching(grid.row_offsets, grid.tile, r_off + r0, r_off + r1),
                       touching(grid.col_offsets, grid.tile, c_off + c0, c_off + c1)) for c0, r0, c1, r1 in rects]
        near = _tile_rects_by_cell(tile_rects, grid, (c_off, r_off), (sx, sy))
        for cx, cy in sorted(cells):
            x0, x1 = cx * sx, min((cx + 1) * sx, w)
            y0, y1 = cy * sy, min((cy + 1) * sy, h)
            rows = touching(grid.row_offsets, grid.tile, r_off + y0, r_off + y1)
            cols = touching(grid.col_offsets, grid.tile, c_off + x0, c_off + x1)
            weight = len(rows) * len(cols) if files is None else _covered(rows, cols, near.get((cx, cy), []))
            units.append(Unit(len(units), index, Window(x0, y0, x1 - x0, y1 - y0), weight))
    return units


def _covered(rows: range, cols: range, rects: list[tuple[range, range]]) -> int:
    """How many tiles of ``rows`` x ``cols`` (tile indices) lie in the union of ``rects``."""
    def clip(r: range, to: range) -> range:
        return range(max(r.start, to.start), max(min(r.stop, to.stop), max(r.start, to.start)))

    if len(rects) == 1:  # the common case (one file under the unit): no array
        return len(clip(rects[0][0], rows)) * len(clip(rects[0][1], cols))
    cover = np.zeros((len(rows), len(cols)), bool)
    for rr, cc in rects:
        r, c = clip(rr, rows), clip(cc, cols)
        cover[r.start - rows.start : r.stop - rows.start, c.start - cols.start : c.stop - cols.start] = True
    return int(cover.sum())


def _tile_rects_by_cell(tile_rects: list[tuple[range, range]], grid: TileGrid, offset: tuple[int, int],
                        lattice: tuple[int, int]) -> dict[tuple[int, int], list[tuple[range, range]]]:
    """The tile ranges (rows, cols) of the data, listed under every lattice cell whose tiles they may meet."""
    c_off, r_off = offset
    sx, sy = lattice
    out: dict[tuple[int, int], list[tuple[range, range]]] = {}
    for rr, cc in tile_rects:
        if not rr or not cc:
            continue
        # pixels of those tiles, in the raster's pixels; a cell's tiles are those meeting its pixels
        y0 = grid.row_offsets[rr.start] - r_off
        y1 = grid.row_offsets[rr.stop - 1] + grid.tile - r_off
        x0 = grid.col_offsets[cc.start] - c_off
        x1 = grid.col_offsets[cc.stop - 1] + grid.tile - c_off
        for cx in range(max(x0, 0) // sx, max(x1 - 1, 0) // sx + 1):
            for cy in range(max(y0, 0) // sy, max(y1 - 1, 0) // sy + 1):
                out.setdefault((cx, cy), []).append((rr, cc))
    return out


def shard_units(units: list[Unit], index: int, count: int) -> list[Unit]:
    """Share ``index`` of ``count``: a contiguous run of units (neighbours share their LR context
    and source blocks), cut where the cumulative weight crosses index/count of the total."""
    weights = np.array([max(u.weight, 0) + 1e-9 for u in units])  # empty units still count a little
    ends = np.cumsum(weights)
    total = ends[-1] if len(ends) else 0.0
    centre = ends - weights / 2  # a unit goes to the share holding its middle
    share = np.minimum((centre / total * count).astype(int), count - 1) if len(units) else np.array([], int)
    return [u for u, s in zip(units, share) if s == index]


# ---------------------------------------------------------------------------
# Checks against the checkpoint
# ---------------------------------------------------------------------------


def check_nodata_option(value: str | None) -> str | float | None:
    """``--nodata``: None (the files' own), ``"none"`` (no nodata value) or a finite number."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "none":
        return "none"
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or number != int(number) or number > 65535:
        raise ConfigError(f"--nodata {value}: expected none or a pixel value 0..65535")
    return number


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
        if abs(px - spec.gsd) > 1e-9 * spec.gsd:
            native = px / factor
            notes.append(
                f"--resample: the map is on the model's {spec.gsd:.3g} m grid, not the input's {px:.3g} m grid; "
                f"gdalwarp -tr {native:g} {native:g} -r near brings it onto the input's pixel size"
            )
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
    """A warning when the inputs' data type does not fit the checkpoint's value scale (as in train)."""
    warning = scale_warning(mosaic.dtype, spec.scale)
    return [warning] if warning else []


def choose_strip_width(width: int, tile: int, block: int, soft_classes: int | None, memory_mb: int,
                       probability_bands: int = 0) -> int:
    """Strip width (multiple of the block, and of the tile without blending) within the memory budget.

    ``probability_bands``: K when the class probabilities are written too (K more uint8 rows per column).
    """
    if soft_classes is None and not probability_bands:  # two uint8 rows buffers of (tile + block) rows
        return max(tile, (8192 // tile) * tile)
    if soft_classes is None:  # classes, confidence and K probabilities, uint8
        per_column = (2 + probability_bands) * (tile + block)
        w = min(8192, memory_mb * 2**20 // per_column) // math.lcm(tile, block) * math.lcm(tile, block)
        return max(w, math.lcm(tile, block))
    per_column = (soft_classes + 1) * (tile + block) * 4 + probability_bands * (tile + block)
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
                f"{info.name} is a {info.layout}: reading it is slow and needs a larger cache; "
                "gdal_translate -of GTiff -co TILED=YES makes a tiled copy"
            )
            extra = max(extra, mosaic.width * (tile + bh) * mosaic.count * itemsize)
    return base_mb * 2**20 + int(extra * 1.25), notes[:1]
