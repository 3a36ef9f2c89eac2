"""Settings and result of one ``predict`` run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from caswit_geo.core.limits import Text, bounded
from caswit_geo.runtime.precision import PRECISIONS

TTA_PASSES = {"none": 1, "flips": 4, "dihedral": 8}  # forward passes a tile: the transforms of model/tta.py
TTA = tuple(TTA_PASSES)

FORMATS = ("cog", "gtiff")


@dataclass
class PredictConfig:
    """Settings of one ``predict`` run (CLI options, one per field).

    ``out``: a ``.tif`` file (one mosaic output) or a folder (one
    ``<stem>_landcover.tif`` per input file). ``confidence`` follows the
    same rule (``<stem>_confidence.tif`` in a folder), and so does
    ``probabilities`` (``<stem>_probabilities.tif``: one band per class,
    uint8 percent, 255 where the map is nodata). ``overlap`` in
    pixels; ``min_area`` in m2; ``simplify`` in m. ``workers`` None = one
    fewer than the CPUs (max 4) on CUDA; on the CPU none up to 4 CPUs, else
    one. ``strip_width`` None = chosen from ``blend_memory_mb``.
    ``gdal_cache_mb``: GDAL block cache (raised for striped inputs, whose
    blocks span the whole width).

    Jobs (see ``job.py``): ``resume`` continues the interrupted job of the
    same outputs (or starts one); ``shard`` = (I, N) runs share I of N and
    exits (the last share to finish assembles the outputs);
    ``finalize_only`` assembles the outputs of a job whose units are all
    done; ``defer_finalize`` runs units and leaves the assembly to a later
    ``finalize_only`` run. ``stop_after``: seconds after which the run
    stops cleanly between units, resumable. ``unit_size``: side of a unit
    of work in pixels (None: 8 tiles, 16 with overlap). ``format``: "cog" or "gtiff".
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
    alpha_mask: bool = False  # a band tagged alpha is the mask even where it holds more than a mask's values
    nodata: str | None = None  # a number or "none": replaces the inputs' own nodata value (None keeps theirs)
    confidence: str | Path | None = None
    probabilities: str | Path | None = None  # one uint8 percent band per class (same rule as confidence)
    vector: str | Path | None = None
    vector_layer: str | None = None  # the layer in a GeoPackage (default: the file's stem)
    min_area: float | None = bounded(None, ge=0)
    simplify: float | None = bounded(None, ge=0)
    preview: str | Path | None = None  # quick-look PNG: input RGB beside the classes, with a legend
    precision: str = bounded("auto", Text(choices=PRECISIONS))  # see precision.py; the job records what ran
    progress: bool = True
    lr_prepass: bool = True
    blend_memory_mb: int = bounded(256, ge=1)
    strip_width: int | None = bounded(None, ge=1)
    gdal_cache_mb: int = bounded(32, ge=1)
    format: str = bounded("cog", Text(choices=FORMATS))
    resume: bool = False
    shard: tuple[int, int] | None = None
    finalize_only: bool = False
    defer_finalize: bool = False
    stop_after: float | None = bounded(None, ge=0)
    unit_size: int | None = bounded(None, ge=1)
    tta: str = bounded("none", Text(choices=TTA))  # "flips": 4 passes per tile, "dihedral": 8 (model/tta.py)
    roi: str | Path | None = None  # polygons of the region (geo/region.py); all features of the layer
    roi_layer: str | None = None  # the layer of --roi (default: its only or first layer)
    bbox: str | None = None  # "XMIN,YMIN,XMAX,YMAX" in the mosaic's CRS, or in bbox_crs
    bbox_crs: str | None = None  # the CRS of --bbox (e.g. "EPSG:4326")
    stats: str | Path | None = None  # per-feature, per-file class areas: a .csv or .json file (engine/predict/stats.py)
    asset: str | None = None  # the asset of STAC items read (None: role visual, else data; geo/stac.py)


@dataclass
class PredictResult:
    outputs: list[Path]
    confidence_outputs: list[Path]
    vector: Path | None
    tiles: int  # tiles in the plan (all units)
    tiles_run: int  # tiles this run's model saw (the others were all nodata or done before)
    seconds: float
    forward_seconds: float  # model forward passes (inputs on the device -> outputs on the host)
    class_pixels: dict[str, int]  # over every unit done so far (the whole job once complete)
    class_areas_m2: dict[str, float] | None  # None without a usable CRS
    nodata_pixels: int
    width: int
    height: int
    device: str
    context: str  # "prepass", "direct" or "none"
    precision: str = "fp32"  # what ran and why, e.g. "bf16 (auto: CPU with AMX bf16, ...)"
    preview: Path | None = None
    tta: str = "none"  # test-time augmentation mode (its passes are in forward_seconds)
    probability_outputs: list[Path] = field(default_factory=list)
    vector_features: int = 0
    vector_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds: plan, units, finalize
    complete: bool = True  # the outputs are committed (False: units left, or assembly left to another run)
    units: int = 0  # units of the job
    units_run: int = 0  # units this run computed
    units_before: int = 0  # units already done when this run started
    units_left: int = 0  # units still to do when this run ended
    tiles_in_units_run: int = 0  # tiles of the units this run computed (predicted or skipped as nodata)
    area_km2_run: float | None = None  # ground area of the units this run computed
    job: Path | None = None  # the job folder (removed once complete)
    shard: str | None = None  # "I/N" of this run, "rank R/W" under torchrun, None for a whole run
    stopped: bool = False  # --stop-after ended the run early
    finalized_by: str | None = None  # who assembles the outputs when not this run
    rank: int = 0  # torchrun rank (0 outside torchrun): only rank 0 reports
    region_km2: float | None = None  # the region's area (--roi, --bbox) inside the imagery; None without one
    stats: list[dict] = field(default_factory=list)  # zones of --stats (engine/predict/stats.py), once assembled
    input_notes: list[str] = field(default_factory=list)  # which STAC assets, which service level were read

    @property
    def tiles_skipped(self) -> int:
        return self.tiles - self.tiles_run
