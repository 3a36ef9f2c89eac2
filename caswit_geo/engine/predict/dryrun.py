"""``predict --dry-run``: the plan, pre-flight warnings and a time estimate; writes nothing.

Users size a cluster job from it: inputs, area, tiles, units, shards,
outputs, the state of an existing job, warnings about the inputs (striped
TIFFs, missing overviews, a band 4 tagged alpha, odd nodata values, CRS
problems), the model's speed on this device, measured on a few real
tiles of the mosaic (their context read per tile), and the reading's: the
first units' tiles read as the run reads them, with the configured reader
workers (the pre-pass chunks go to a temporary folder, removed after). The
estimate is set by the slower of the two, and the report says which.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from affine import Affine
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError
from caswit_geo.engine.predict.config import PredictConfig
from caswit_geo.engine.predict.job import Job, compare_manifest, live_description
from caswit_geo.engine.predict.manifest import PLAN_FILE, job_units, read_manifest
from caswit_geo.engine.predict.plan import PredictPlan, plan_predict, shard_units
from caswit_geo.engine.predict.run import region_km2
from caswit_geo.engine.predict.source import PredictTiles, model_inputs
from caswit_geo.engine.predict.units import Reading, predict_probabilities, reading_env, workers_for
from caswit_geo.geo.area import pixel_area_m2
from caswit_geo.geo.mosaic import Mosaic, RasterInfo
from caswit_geo.model.checkpoint import load_checkpoint
from caswit_geo.runtime.device import CpuThreads, select_device
from caswit_geo.runtime.precision import prepare_inference

STRIPED_MIN_WIDTH = 1024  # narrower striped files read fine


@dataclass
class Calibration:
    device: str
    tiles: int  # tiles timed (after one untimed warm-up batch)
    seconds: float

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class ReadingRate:
    workers: int
    tiles: int  # tiles read, with their LR context
    seconds: float

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class DryRun:
    plan: PredictPlan
    input_bytes: int
    area_km2: float | None  # ground covered by the input files (None without a projected CRS)
    tiles: int  # tiles of every unit
    tiles_with_data: int  # tiles that meet an input file
    shards: int
    job_state: str  # "none", or what an existing job folder holds
    warnings: list[str] = field(default_factory=list)
    calibration: Calibration | None = None
    region_km2: float | None = None  # --roi/--bbox: the region's area inside the imagery
    reading: ReadingRate | None = None

    @property
    def estimate_s(self) -> float | None:
        """Time of the whole job on this device: the model's, or the reading's where that is slower
        (they overlap, as does writing)."""
        if self.calibration is None:
            return None
        rate = self.calibration.tiles_per_s
        if self.reading is not None:
            rate = min(rate, self.reading.tiles_per_s)
        return self.tiles_with_data / rate

    def limit(self) -> str | None:
        """Which of reading and the model sets the pace, with both rates."""
        cal, read = self.calibration, self.reading
        if cal is None or read is None:
            return None
        line = (f"reading ~{read.tiles_per_s:.1f} tiles/s with {read.workers} worker(s), "
                f"the model ~{cal.tiles_per_s:.1f} tiles/s on {cal.device}: ")
        if read.tiles_per_s < cal.tiles_per_s:
            return line + "reading is the limit; add workers (--workers) or convert the inputs to COG"
        return line + "the model is the limit"

    def shard_tiles(self) -> list[int]:
        """Tiles with data per shard."""
        return [sum(u.weight for u in shard_units(self.plan.units, i, self.shards)) for i in range(self.shards)]


def dry_run(config: PredictConfig, calibrate: int = 16) -> DryRun:
    """Plan ``config`` and time ``calibrate`` tiles (0: no calibration); nothing is written."""
    plan = plan_predict(config)
    shards = config.shard[1] if config.shard else 1
    report = DryRun(
        plan=plan,
        input_bytes=sum(info.files_bytes for info in plan.mosaic.files),
        area_km2=footprint_km2(plan.mosaic),
        tiles=plan.total_tiles,
        tiles_with_data=sum(u.weight for u in plan.units) if plan.roi is None else region_tiles(plan),
        shards=shards,
        job_state=job_state(plan),
        warnings=plan.warnings + preflight_warnings(plan.mosaic),
        region_km2=region_km2(plan),
    )
    if calibrate > 0:
        report.calibration = calibration(plan, config, calibrate)
        report.reading = reading_rate(plan, config, 4 * calibrate)
    return report


def region_tiles(plan: PredictPlan) -> int:
    """Tiles that meet the region (those the run predicts)."""
    seen = {(int(w.col_off), int(w.row_off)) for u in plan.units for _, w in plan.tiles(u)}
    tile = plan.grid.tile
    return sum(plan.roi.meets(Window(c, r, tile, tile)) for c, r in seen)


def footprint_km2(mosaic: Mosaic) -> float | None:
    """Ground under the inputs' data: their files, or a VRT's source rectangles (not its declared size)."""
    total = 0.0
    for info in mosaic.files:
        window = mosaic.file_window(info)  # the pixel's area where the file lies (geographic CRS: its latitude)
        px = pixel_area_m2(mosaic.crs, mosaic.transform @ Affine.translation(window.col_off, window.row_off))
        if px is None:
            return None
        total += sum(int(w.width) * int(w.height) for w in mosaic.data_windows(info)) * px
    return total / 1e6


def job_state(plan: PredictPlan) -> str:
    """What an existing job folder of these outputs holds, and whether this command can continue it."""
    job_dir = plan.job_dir
    if not job_dir.exists():
        return "none"
    try:
        stored = read_manifest(job_dir, "--resume")
    except ConfigError as e:
        return f"{job_dir} exists but cannot be continued ({e})"
    total = len(stored["units"])
    done = len(Job(job_dir, stored).done_units() & set(range(total)))
    owner = live_description(job_dir)
    if owner:
        return f"running ({owner}): {done} of {total} units done"
    try:
        compare_manifest(stored, plan, "--resume")
        job_units(stored, plan, job_dir / PLAN_FILE)  # its units are those of its grid (a copy of the plan)
    except ConfigError as e:
        return f"interrupted: {done} of {total} units done; this command cannot continue it ({e})"
    return f"interrupted: {done} of {total} units done (--resume continues it)"


# kinds of input file problem -> what they mean for the run (the odd nodata note names the value too)
FILE_PROBLEMS = {
    "striped": "striped TIFF without internal tiling; every tile row decodes whole strips "
               "(gdal_translate -co TILED=YES makes a tiled copy)",
    "untiled": "not tiled (PNG, JPEG and the like are read row by row); every tile row decodes whole rows "
               "(gdal_translate -of GTiff -co TILED=YES makes a tiled copy)",
    "no overviews": "no overviews; --preview and GIS viewers read them slowly (gdaladdo adds them)",
    "partial nodata": "a nodata value on some bands only; a pixel is nodata only where every band with one equals it",
    "impossible nodata": "a nodata value the data type cannot hold; no pixel will be nodata",
}


def preflight_warnings(mosaic: Mosaic) -> list[str]:
    """What in the inputs will be slow or wrong, one line per kind of problem (with an example file)."""
    kinds: dict[str, list[RasterInfo]] = defaultdict(list)
    for info in mosaic.files:
        bh, bw = info.block_shape
        if bw >= info.width and info.width >= STRIPED_MIN_WIDTH:
            kinds["striped" if info.driver == "GTiff" else "untiled"].append(info)
        if info.overviews == 0 and max(info.width, info.height) >= 1024:
            kinds["no overviews"].append(info)
        used = [info.nodata[b - 1] for b in mosaic.bands if b - 1 < len(info.nodata)]
        values = {v for v in used if v is not None}
        if any(v is None for v in used) and values:
            kinds["partial nodata"].append(info)
        vmax = float(np.iinfo(np.dtype(info.dtype)).max) if info.dtype in ("uint8", "uint16") else None
        for v in values:
            if v != int(v) or v < 0 or (vmax is not None and v > vmax):
                kinds["impossible nodata"].append(info)
            elif vmax is not None and v not in (0, vmax):
                kinds["odd nodata"].append(info)
    nodatas = {tuple(i.nodata[b - 1] for b in mosaic.bands) for i in mosaic.files}
    n = len(mosaic.files)

    def some(kind: str) -> str:
        files = kinds[kind]
        return f"{files[0].name}" if len(files) == 1 else f"{len(files)} of {n} files (e.g. {files[0].name})"

    notes = [f"{some(kind)}: {meaning}" for kind, meaning in FILE_PROBLEMS.items() if kinds[kind]]
    if kinds["odd nodata"]:
        info = kinds["odd nodata"][0]
        value = next(v for v in info.nodata if v is not None)
        notes.append(f"{some('odd nodata')}: nodata value {value:g} lies inside the range of real pixel values; "
                     "real pixels of that value become nodata")
    if len(nodatas) > 1:
        notes.append(f"the inputs have {len(nodatas)} different nodata settings; each file's own applies to it")
    if mosaic.crs is not None and mosaic.crs.to_epsg() is None:
        notes.append(f"{mosaic.files[0].name}: CRS without an EPSG code; check it is the one you expect")
    return notes


def calibration(plan: PredictPlan, config: PredictConfig, tiles: int) -> Calibration | None:
    """Forward passes on up to ``tiles`` tiles with data (after an untimed warm-up batch)."""
    device = select_device(config.device)
    model, _ = load_checkpoint(plan.weights, device=device)
    prepare_inference(model, plan.precision)
    context = "none" if plan.context == "none" else "direct"
    windows = []
    for unit in plan.units:  # the tiles run: those meeting the region, when one is asked
        windows += [w for _, w in plan.tiles(unit) if plan.roi is None or plan.roi.meets(w)]
        if len(windows) >= 16 * tiles:
            break
    source = PredictTiles(plan.mosaic.reader, windows, plan.spec, context)
    bs = max(1, min(config.batch_size, tiles))
    items = []
    try:
        with reading_env(plan):  # read as the run reads: bounded retries and waits, a service's settings
            for i in range(len(windows)):
                item = source[i]
                if item[1] is not None:
                    items.append(item)
                if len(items) >= tiles + bs:
                    break
    finally:
        source.close()
    if not items:
        return None
    batches = [source.collate(items[s : s + bs]) for s in range(0, len(items), bs)]
    with CpuThreads(device, 0):
        predict_probabilities(model, *model_inputs(batches[0], plan.spec, device), plan.precision, plan.tta)  # warm-up
        timed = batches[1:] or batches
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        n = 0
        for b in timed:
            probs = predict_probabilities(model, *model_inputs(b, plan.spec, device), plan.precision, plan.tta)
            probs.max(dim=1)[1].cpu()
            n += len(b.hr)
        seconds = time.perf_counter() - t0
    return Calibration(str(device), n, seconds)


def reading_rate(plan: PredictPlan, config: PredictConfig, tiles: int) -> ReadingRate | None:
    """The first units' tiles (about ``tiles``) read as the run reads them: the LR pre-pass decoding
    beside the reader workers (as many as the run would use), tiles with their context batched."""
    workers = workers_for(config.workers, select_device(config.device))
    per_unit: list[list] = []
    for unit in plan.units:
        if unit.weight:
            per_unit.append(plan.tiles(unit))
        if sum(len(t) for t in per_unit) >= tiles:
            break
    if not per_unit:
        return None
    reading = Reading(plan)
    with reading_env(plan), tempfile.TemporaryDirectory(prefix="caswit-dry-run-") as tmp:
        t0 = time.perf_counter()
        n = 0
        try:
            batches = reading.start(per_unit, tmp, config.batch_size, workers, torch.device("cpu"))
            for batch in batches:
                n += len(batch.index)
            seconds = time.perf_counter() - t0
        finally:
            reading.stop_readers()
            reading.stop_builder()
            reading.close()
        if reading.builder is not None and reading.builder.error is not None:
            raise reading.builder.error
    return ReadingRate(workers, n, seconds)
