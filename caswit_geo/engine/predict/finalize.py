"""Step 3 of ``predict``: finalize. Assemble the parts, then vectors and preview, then commit.

Every output (class rasters with their legends, confidence rasters,
polygons, preview) is written under a temporary name of the job's
:class:`~caswit_geo.safeio.outputs.OutputSet` and renamed with the others at the
end: the outputs appear together or not at all (a preview that fails
leaves no class raster behind). Then the job folder goes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
from affine import Affine
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError, OutputError
from caswit_geo.core.jsonfile import parse_json
from caswit_geo.engine.predict.job import Job, remove_job
from caswit_geo.engine.predict.plan import PredictPlan
from caswit_geo.engine.predict.sink import UnitDone
from caswit_geo.engine.predict.stats import Zone, raster_zones, stats_text
from caswit_geo.geo.assemble import parts_vrt, write_raster
from caswit_geo.geo.class_raster import (
    CONFIDENCE_DESCRIPTION,
    PROBABILITIES_DESCRIPTION,
    class_description,
    pam_xml,
)
from caswit_geo.geo.preview import write_preview
from caswit_geo.geo.profiles import coarse_level_profile
from caswit_geo.geo.pyramid import level_shape, pack_layout, pyramid
from caswit_geo.geo.qgis_style import categorized_qml, gradient_qml, paletted_qml, style_path
from caswit_geo.geo.vectorize import VectorResult, vector_format, vectorize
from caswit_geo.geo.webmap import service_options
from caswit_geo.safeio.outputs import OutputSet
from caswit_geo.safeio.writes import atomic_path, write_text


@dataclass
class Finalized:
    outputs: list[Path]
    confidence: list[Path]
    vector: VectorResult | None
    preview: Path | None
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    stats: list[dict] = field(default_factory=list)  # the --stats zones (stats.py Zone.summary)


MAX_PART_TAG_BYTES = 1 << 20  # a unit's report: pixels and areas of at most 256 classes


def unit_reports(job: Job, plan: PredictPlan, raster: int | None = None) -> list[UnitDone]:
    """The reports stored in the part files of the units done so far (of output ``raster`` only, if given),
    each part checked first.

    A part file is untrusted state: it must say it is its unit's (this job,
    this unit id, raster and window), so a part swapped for another unit's,
    or left by another job, is refused rather than assembled into a wrong map.
    """
    out = []
    done = job.done_units()
    ids = {u.id for u in plan.units}
    stray = sorted(done - ids)
    if stray:
        raise ConfigError(f"{job.part_path(stray[0])}: no unit {stray[0]} in this job; "
                          "remove the file, then run the same command with --resume")
    for unit in plan.units:
        if unit.id not in done or (raster is not None and unit.raster != raster):
            continue
        part = job.part_path(unit.id)
        tags = _part_tags(part)
        _check_identity(part, tags, job.part_identity(unit))
        if plan.unit_levels(unit):
            _check_identity(job.pyramid_path(unit.id), _part_tags(job.pyramid_path(unit.id)),
                            job.part_identity(unit))
        if plan.with_probabilities:
            probabilities = job.probabilities_path(unit.id)
            _check_identity(probabilities, _part_tags(probabilities), job.part_identity(unit))
        try:
            out.append(UnitDone.from_dict(_tag_json(part, tags, "CASWIT_UNIT")))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise _bad_part(part, "its unit report is missing or malformed") from None
    return out


def _part_tags(path: Path) -> dict:
    try:
        with rasterio.open(path) as src:
            return src.tags()
    except rasterio.errors.RasterioIOError:
        raise _bad_part(path, "cannot be read") from None


def _tag_json(path: Path, tags: dict, key: str):
    """The JSON value of a part's tag, read like any file content (bounded); None when absent or unreadable."""
    text = tags.get(key)
    if text is None:
        return None
    try:
        return parse_json(text, source=path, what=f"its {key} tag", max_bytes=MAX_PART_TAG_BYTES, max_depth=4,
                          error=ConfigError)
    except ConfigError:
        return None


def _check_identity(path: Path, tags: dict, expected: dict) -> None:
    found = _tag_json(path, tags, "CASWIT_PART")
    if found != expected:
        what = "it has no unit identity" if not isinstance(found, dict) else (
            f"it holds unit {str(found.get('unit'))[:20]} (window {str(found.get('window'))[:60]}) of job "
            f"{str(found.get('job'))[:20]}, not unit {expected['unit']} (window {expected['window']}) of job "
            f"{expected['job']}")
        raise _bad_part(path, what)


def _bad_part(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path}: {what}; remove it, then run the same command with --resume (its unit is redone)")


def class_totals(reports: list[UnitDone]) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels per class id (256, 255 = nodata) and areas in m2 (None without a usable CRS)."""
    pixels = np.zeros(256, np.int64)
    areas: np.ndarray | None = np.zeros(256, np.float64)
    for r in reports:
        for k, v in r.pixels.items():
            pixels[k] += v
        if r.areas is None or areas is None:
            areas = None
        else:
            for k, v in r.areas.items():
                areas[k] += v
    return pixels, areas


def raster_parts(plan: PredictPlan, job: Job, index: int) -> list[tuple[Window, Path]]:
    return [(u.window, job.part_path(u.id)) for u in plan.units if u.raster == index]


def overview_levels(plan: PredictPlan, job: Job, index: int, band: int, folder: Path) -> list[Path]:
    """The overview levels of raster ``index``, band ``band``, as rasters in ``folder``.

    The levels up to the block come from the units' pyramids (a VRT over
    their packed levels); the few coarser ones are computed here from the
    coarsest of those, which is small (the raster divided by the block).
    """
    factors = plan.raster_levels(index)
    if not factors:
        return []
    raster = plan.rasters[index]
    width, height = int(raster.window.width), int(raster.window.height)
    units = [u for u in plan.units if u.raster == index]
    fine = [f for f in factors if f <= plan.block]
    layouts = [pack_layout(int(u.window.height), int(u.window.width), fine)[0] for u in units]
    paths = []
    for k, f in enumerate(fine):
        parts = []
        for u, layout in zip(units, layouts):
            x, rows, cols = layout[k]
            parts.append((Window(int(u.window.col_off) // f, int(u.window.row_off) // f, cols, rows),
                          job.pyramid_path(u.id), Window(x, 0, cols, rows)))
        rows, cols = level_shape(height, width, f)
        path = folder / f"r{index:05d}_b{band}_x{f}.vrt"
        write_text(path, parts_vrt(parts, cols, rows, plan.mosaic.crs,
                                          raster.transform @ Affine.scale(f), band))
        paths.append(path)
    coarse = [f for f in factors if f > plan.block]
    if coarse:
        with rasterio.open(paths[-1]) as src:
            base = src.read(1)
        for f, image in zip(coarse, pyramid(base, [f // fine[-1] for f in coarse], band == 1)):
            path = folder / f"r{index:05d}_b{band}_x{f}.tif"
            with atomic_path(path) as tmp:
                with rasterio.open(tmp, "w", **coarse_level_profile(image.shape[1], image.shape[0], plan.mosaic.crs,
                                                                    raster.transform @ Affine.scale(f))) as dst:
                    dst.write(image, 1)
            paths.append(path)
    return paths


def finalize_job(plan: PredictPlan, job: Job, outputs: OutputSet) -> Finalized:
    """Assemble every output of ``plan`` from ``job``'s parts and commit them through ``outputs``.

    ``outputs`` holds the job's destinations (added and claimed when the
    run started). On any failure nothing is committed and the job stays,
    complete, for ``--resume`` or ``--finalize`` to assemble again.
    """
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    classes = plan.classes
    crs = plan.mosaic.crs
    work = job.dir / "assemble"
    work.mkdir(exist_ok=True)
    for index, raster in enumerate(plan.rasters):
        parts = raster_parts(plan, job, index)
        w, h = int(raster.window.width), int(raster.window.height)
        tags = {**plan.tags, "CASWIT_SOURCES": json.dumps(list(raster.sources))}
        cog = plan.format == "cog"
        levels = overview_levels(plan, job, index, 1, work) if cog else []
        vrt = parts_vrt(parts, w, h, crs, raster.transform, 1, colormap=classes.colormap(),
                        description=class_description(classes), tags=tags, overviews=levels)
        write_raster(vrt, outputs.temp(raster.classes), fmt=plan.format, block=plan.block, is_classes=True)
        outputs.temp(Path(f"{raster.classes}.aux.xml")).write_text(pam_xml(classes))
        outputs.temp(style_path(raster.classes)).write_text(paletted_qml(classes))
        if raster.confidence is not None:
            levels = overview_levels(plan, job, index, 2, work) if cog else []
            vrt = parts_vrt(parts, w, h, crs, raster.transform, 2, description=CONFIDENCE_DESCRIPTION, tags=tags,
                            overviews=levels)
            write_raster(vrt, outputs.temp(raster.confidence), fmt=plan.format, block=plan.block, is_classes=False)
            outputs.temp(style_path(raster.confidence)).write_text(gradient_qml("confidence"))
        if raster.probabilities is not None:
            write_probabilities(plan, job, index, outputs.temp(raster.probabilities), tags)
            outputs.temp(style_path(raster.probabilities)).write_text(gradient_qml(classes.names[0]))
    phases["assemble"] = time.perf_counter() - t0
    zones = []
    if plan.stats is not None:
        t1 = time.perf_counter()
        zones = write_stats(plan, outputs)
        phases["stats"] = time.perf_counter() - t1

    vector_result = None
    if plan.vector is not None:
        t1 = time.perf_counter()
        base = _file_state(plan.vector) if plan.vector_update else None
        vector_result = vectorize(
            mosaic_classes(plan, job, outputs), outputs.temp(plan.vector), classes,
            min_area=plan.min_area, simplify=plan.simplify, work_dir=job.dir, layer=plan.vector_layer,
            update_from=plan.vector if plan.vector_update else None,
        )
        if vector_format(plan.vector) != "GPKG":  # a GeoPackage got its style inside (layer_styles)
            outputs.temp(style_path(plan.vector)).write_text(categorized_qml(classes))
        phases["vector"] = time.perf_counter() - t1
    if plan.preview is not None:
        # the class raster is complete and has overviews: the quick-look reads a screenful
        t1 = time.perf_counter()
        first = plan.rasters[0]
        image = str(plan.inputs[0]) if plan.per_file and plan.roi is None else plan.mosaic.source
        window = None if plan.roi is None else first.window  # the input under the region's map
        # the legend's shares are the summary's: counted on every pixel by the units, not on the overview shown
        pixels, _ = class_totals(unit_reports(job, plan, raster=0))
        with rasterio.Env(**(service_options() if plan.web_service else {})):
            write_preview(outputs.temp(first.classes), outputs.temp(plan.preview), classes, image=image,
                          bands=plan.spec.bands[:3], title=first.classes.name, class_pixels=pixels, window=window)
        phases["preview"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    if plan.vector_update and _file_state(plan.vector) != base:
        # its other layers were copied before: committing now would lose what was written since
        raise OutputError(f"--vector {plan.vector}: changed while this run wrote its layer into a copy; "
                          "run the same command with --finalize to write it again")
    outputs.commit()
    remove_job(job.dir, [d for d, _ in plan.destinations()])
    phases["commit"] = time.perf_counter() - t1
    return Finalized(
        outputs=[r.classes for r in plan.rasters],
        confidence=[r.confidence for r in plan.rasters if r.confidence is not None],
        vector=vector_result,
        preview=plan.preview,
        seconds=time.perf_counter() - t0,
        phases=phases,
        stats=[z.summary(classes) for z in zones],
    )


def write_stats(plan: PredictPlan, outputs: OutputSet) -> list[Zone]:
    """Count the zones of ``--stats`` on the assembled class rasters; write the file (a temporary of ``outputs``)."""
    zones = []
    m = plan.mosaic
    for raster in plan.rasters:
        if raster.source is not None or plan.per_file:  # per-file output: the file is the raster
            files = [(raster.sources[0], raster.window)]
            feature_file = raster.sources[0]
        else:
            files = [(info.name, m.file_window(info)) for info in m.files]
            feature_file = ""
        zones += raster_zones(outputs.temp(raster.classes), raster.classes.name, raster.window, raster.transform,
                              m.crs, plan.roi, files, feature_file)
    fmt = "json" if plan.stats.suffix.lower() == ".json" else "csv"
    outputs.temp(plan.stats).write_text(stats_text(zones, plan.classes, fmt), encoding="utf-8")
    return zones


def write_probabilities(plan: PredictPlan, job: Job, index: int, dest: Path, tags: dict[str, str]) -> None:
    """Raster ``index``'s class probabilities: one band per class named after it, uint8 percent, nodata 255.

    The bands of the units' probability parts, on the class raster's grid;
    a COG gets average overviews computed by GDAL (the units keep no
    pyramid of K bands).
    """
    raster = plan.rasters[index]
    parts = [(u.window, job.probabilities_path(u.id)) for u in plan.units if u.raster == index]
    names = plan.classes.names
    vrt = parts_vrt(parts, int(raster.window.width), int(raster.window.height), plan.mosaic.crs, raster.transform,
                    list(range(1, len(names) + 1)), description=names,
                    tags={**tags, "CASWIT_PROBABILITIES": PROBABILITIES_DESCRIPTION})
    write_raster(vrt, dest, fmt=plan.format, block=plan.block, is_classes=False, average_overviews=True)


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def mosaic_classes(plan: PredictPlan, job: Job, outputs: OutputSet) -> str | Path:
    """The class raster of the whole mosaic, for polygons: the output itself, or for per-file
    outputs a VRT of every part placed on the mosaic grid (overlapping files composite)."""
    if len(plan.rasters) == 1:
        return outputs.temp(plan.rasters[0].classes)
    parts = []
    for unit in plan.units:
        region = plan.region(unit)
        parts.append((region, job.part_path(unit.id)))
    m = plan.mosaic
    return parts_vrt(parts, m.width, m.height, m.crs, m.transform, 1, composite=True)


__all__ = ["Finalized", "class_totals", "finalize_job", "unit_reports"]
