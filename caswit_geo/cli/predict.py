"""``caswit-geo predict``: orthophoto(s) -> land-cover class raster (and polygons)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from caswit_geo.cli import app
from caswit_geo.cli import options as opt
from caswit_geo.cli.console import after_outputs, make_console, safe
from caswit_geo.core.errors import ConfigError
from caswit_geo.engine.predict.config import PredictConfig  # a dataclass: no torch

if TYPE_CHECKING:
    from rich.console import Console

    from caswit_geo.engine.predict import PredictResult
    from caswit_geo.engine.predict.dryrun import DryRun

EXIT_STOPPED = 75  # --stop-after ended the run: resumable (EX_TEMPFAIL: try again)
DEFAULT = opt.defaults(PredictConfig)  # the options default to the engine's settings


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N); the engine checks that 0 <= I < N."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not m:
        raise ConfigError(f"--shard {value}: expected I/N, e.g. 0/4 (share I of N, counted from 0)")
    return int(m.group(1)), int(m.group(2))


def parse_duration(value: str | None) -> float | None:
    """``"90"``, ``"90s"``, ``"45m"``, ``"3h50m"``, ``"1h30m15s"`` -> seconds."""
    if value is None:
        return None
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not m or not any(m.groups()):
        raise ConfigError(f"--stop-after {value}: expected a duration such as 3600, 45m or 3h50m")
    h, mi, s = (int(g or 0) for g in m.groups())
    return float(h * 3600 + mi * 60 + s)


@app.command()
def predict(
    inputs: List[str] = typer.Argument(
        ..., metavar="INPUT...",
        help="Raster(s): files, a folder, a glob, a VRT, http(s) URLs or GDAL /vsi names, STAC items (.json), "
             "read as one mosaic.",
    ),
    asset: Optional[str] = opt.asset(DEFAULT.asset),
    out: Path = opt.out(..., "Class raster (.tif), or a folder for one output per input."),
    weights: Optional[str] = opt.weights(DEFAULT.weights, "Checkpoint file or registry name; default: weights/registry.json."),
    overwrite: bool = opt.overwrite(
        DEFAULT.overwrite, "Replace existing outputs; without --resume/--shard, discard an interrupted job."
    ),
    batch_size: int = opt.batch_size(DEFAULT.batch_size, "Tiles per forward pass.", "-b"),
    device: str = opt.device(DEFAULT.device, "auto, cpu, cuda or cuda:N (under torchrun: LOCAL_RANK)."),
    precision: str = opt.precision(DEFAULT.precision),
    workers: Optional[int] = opt.workers(
        DEFAULT.workers, "Reader processes (default: on CUDA, CPUs - 1, max 4; on the CPU, 0 up to 4 CPUs, else 1)."
    ),
    overlap: int = typer.Option(DEFAULT.overlap, "--overlap", help="Pixels shared by neighbouring tiles; >0 blends probabilities."),
    nodata: Optional[str] = typer.Option(
        None, "--nodata", metavar="VALUE|none",
        help="Nodata value of the inputs, replacing the files' own; 'none': no nodata value (alpha bands and "
             "internal masks still apply).",
    ),
    alpha_mask: bool = typer.Option(
        DEFAULT.alpha_mask, "--alpha-mask",
        help="Use a band tagged alpha as the nodata mask even when it holds more than a mask's values.",
    ),
    resample: bool = typer.Option(DEFAULT.resample, "--resample", help="Read the input at the model's ground sampling distance; the map is then on that grid (said in a warning)."),
    confidence: Optional[Path] = typer.Option(
        DEFAULT.confidence, "--confidence", help="Also write the winning class probability (uint8 percent)."
    ),
    probabilities: Optional[Path] = typer.Option(
        DEFAULT.probabilities, "--probabilities",
        help="Also write each class's probability: one band per class, uint8 percent, 255 = nodata.",
    ),
    vector: Optional[Path] = typer.Option(DEFAULT.vector, "--vector", help="Also write polygons (.gpkg, .parquet, .geojson, .fgb)."),
    vector_layer: Optional[str] = typer.Option(
        DEFAULT.vector_layer, "--vector-layer", metavar="NAME",
        help="Layer of the polygons in the GeoPackage (default: its file name). An existing GeoPackage keeps "
             "its other layers; --overwrite replaces this layer only.",
    ),
    min_area: Optional[float] = typer.Option(DEFAULT.min_area, "--min-area", help="Merge regions smaller than this (m2) first."),
    simplify: Optional[float] = typer.Option(DEFAULT.simplify, "--simplify", help="Simplify polygons (tolerance in m)."),
    preview: Optional[Path] = typer.Option(
        DEFAULT.preview, "--preview", help="Also write a quick-look PNG: input beside the coloured classes, with a legend."
    ),
    output_format: str = typer.Option(DEFAULT.format, "--format", help="Rasters as 'cog' (Cloud Optimized GeoTIFF) or 'gtiff'."),
    resume: bool = typer.Option(DEFAULT.resume, "--resume", help="Continue the interrupted job of these outputs (or start it)."),
    shard: Optional[str] = typer.Option(
        DEFAULT.shard, "--shard", metavar="I/N",
        help="Run share I of N and exit; the last share to finish assembles the outputs.",
    ),
    finalize: bool = typer.Option(
        DEFAULT.finalize_only, "--finalize", help="Only assemble the outputs of a job whose units are all done."
    ),
    no_finalize: bool = typer.Option(
        DEFAULT.defer_finalize, "--no-finalize", help="Run the units; leave the assembly to --finalize."
    ),
    stop_after: Optional[str] = typer.Option(
        DEFAULT.stop_after, "--stop-after", metavar="DURATION",
        help=f"Stop cleanly between units after this time (e.g. 3h50m); exit code {EXIT_STOPPED}, continue with --resume.",
    ),
    unit_size: Optional[int] = typer.Option(
        DEFAULT.unit_size, "--unit-size", metavar="PIXELS",
        help="Side of a unit of work (resume and shard granularity); default 8 tiles, 16 with --overlap.",
    ),
    tta: bool = typer.Option(
        DEFAULT.tta == "dihedral", "--tta",
        help="Test-time augmentation: average the 8 flips and quarter turns of each tile and its context (8x the model time).",
    ),
    tta_flips: bool = typer.Option(
        DEFAULT.tta == "flips", "--tta-flips", help="Cheaper test-time augmentation: the 4 flips only (4x the model time)."
    ),
    roi: Optional[Path] = opt.roi(DEFAULT.roi),
    roi_layer: Optional[str] = opt.roi_layer(DEFAULT.roi_layer),
    bbox: Optional[str] = opt.bbox(DEFAULT.bbox),
    bbox_crs: Optional[str] = opt.bbox_crs(DEFAULT.bbox_crs),
    stats: Optional[Path] = opt.stats(DEFAULT.stats),
    dry: bool = typer.Option(False, "--dry-run", help="Print the plan, warnings and an estimated time; write nothing."),
    quiet: bool = typer.Option(not DEFAULT.progress, "--quiet", "-q", help="No progress bar or summary."),
) -> int:
    """Predict a land-cover map of an orthophoto mosaic (HR tiles + LR context), as a resumable job."""
    from caswit_geo.engine.predict import JobInterrupted
    from caswit_geo.engine.predict import predict as run_predict
    from caswit_geo.engine.predict.dryrun import dry_run

    if tta and tta_flips:
        raise ConfigError("--tta and --tta-flips: choose one (--tta includes the flips)")
    config = PredictConfig(
        inputs=inputs,
        out=out,
        weights=weights,
        overwrite=overwrite,
        batch_size=batch_size,
        device=device,
        precision=precision,
        workers=workers,
        overlap=overlap,
        resample=resample,
        nodata=nodata,
        alpha_mask=alpha_mask,
        confidence=confidence,
        probabilities=probabilities,
        vector=vector,
        vector_layer=vector_layer,
        min_area=min_area,
        simplify=simplify,
        preview=preview,
        progress=not quiet,
        format=output_format.lower(),
        resume=resume,
        shard=parse_shard(shard),
        finalize_only=finalize,
        defer_finalize=no_finalize,
        stop_after=parse_duration(stop_after),
        unit_size=unit_size,
        tta="dihedral" if tta else "flips" if tta_flips else "none",
        roi=roi,
        roi_layer=roi_layer,
        bbox=bbox,
        bbox_crs=bbox_crs,
        stats=stats,
        asset=asset,
    )
    if dry:
        report = dry_run(config)
        with after_outputs():
            print_dry_run(report, make_console())
        return 0
    try:
        result = run_predict(config)
    except JobInterrupted as e:
        typer.echo(
            f"caswit-geo: predict interrupted, no output written; {e.done} of {e.total} units are done and kept "
            f"in {safe(e.job_dir)}: run the same command with --resume to continue",
            err=True,
        )
        raise
    except KeyboardInterrupt:
        typer.echo("caswit-geo: predict interrupted, no output written", err=True)
        raise
    if not quiet and result.rank == 0:  # under torchrun, rank 0 reports for all
        with after_outputs():
            print_summary(result, make_console(stderr=True))
    if result.stopped:
        typer.echo(
            f"caswit-geo: stopped after {stop_after}: {result.units_left} of {result.units} units left, "
            f"kept in {safe(result.job)}; continue with --resume",
            err=True,
        )
        return EXIT_STOPPED
    return 0


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def _tta_note(mode: str) -> str:
    """What test-time augmentation adds to the model time, for the summary and the dry run."""
    from caswit_geo.engine.predict.config import TTA_PASSES

    return "" if mode == "none" else f" with test-time augmentation {mode}, {TTA_PASSES[mode]} passes a tile"


def print_summary(result: PredictResult, console: Console) -> None:
    from rich.table import Table

    rate = result.tiles_run / result.seconds if result.seconds else 0.0
    line = (f"this run: {result.units_run} of {result.units} units, {result.tiles_in_units_run:,} tiles "
            f"({result.tiles_run:,} predicted) in {result.seconds:.1f} s, {rate:.1f} tiles/s "
            f"(model {result.forward_seconds:.1f} s{_tta_note(result.tta)}, {safe(result.device)}, "
            f"precision {result.precision})")
    if result.area_km2_run is not None and result.seconds:
        line += f", {result.area_km2_run:,.3f} km2 at {result.area_km2_run / result.seconds * 3600:,.2f} km2/h"
    console.print(line)
    for note in result.input_notes:  # which STAC assets, which service level were read
        console.print(f"inputs: {safe(note)}")
    if not result.complete:
        if result.units_left:
            where = f" (shard {result.shard})" if result.shard else ""
            console.print(f"job{where}: {result.units_left} units left in {safe(result.job)}")
        elif result.finalized_by:
            console.print(f"every unit is done; the outputs are assembled by {result.finalized_by}")
        return
    table = Table(title="Classes", show_edge=False)
    table.add_column("class")
    table.add_column("pixels", justify="right")
    table.add_column("area (ha)", justify="right")
    table.add_column("share", justify="right")
    total = sum(result.class_pixels.values()) or 1
    for name, px in result.class_pixels.items():
        if px == 0:
            continue
        area = "" if result.class_areas_m2 is None else f"{result.class_areas_m2[name] / 1e4:,.2f}"
        table.add_row(safe(name), f"{px:,}", area, f"{100 * px / total:.1f}%")
    console.print(table)
    if result.nodata_pixels and result.region_km2 is not None:  # the map is the region's box
        share = 100 * result.nodata_pixels / max(sum(result.class_pixels.values()) + result.nodata_pixels, 1)
        console.print(f"nodata: {result.nodata_pixels:,} px ({share:.2f} % of the map) outside the region, or "
                      "masked by the inputs' nodata, alpha or mask")
    elif result.nodata_pixels:
        share = 100 * result.nodata_pixels / max(result.width * result.height, 1)
        console.print(f"nodata: {result.nodata_pixels:,} px ({share:.2f} % of the map) masked by the inputs' nodata, "
                      "alpha or mask, or outside them")
    if result.region_km2 is not None:
        console.print(f"region: {result.region_km2:,.4f} km2")
    print_stats(result.stats, console)
    for path in result.outputs + result.confidence_outputs + result.probability_outputs:
        console.print(f"wrote {safe(path)}")
    if result.preview is not None:
        console.print(f"wrote {safe(result.preview)}")
    if result.vector is not None:
        console.print(f"wrote {safe(result.vector)} ({result.vector_features:,} polygons, {result.vector_seconds:.1f} s)")


MAX_ZONES_SHOWN = 20


def print_stats(zones: list[dict], console: Console) -> None:
    """One line per --stats zone: its area and its classes' shares (the file has every number)."""
    for zone in zones[:MAX_ZONES_SHOWN]:
        pixels = zone["pixels"]
        total = sum(pixels.values()) or 1
        areas = zone["area_m2"]
        where = {"feature": f"feature {zone['feature']}", "file": f"file {zone['file']}",
                 "total": f"total {zone['file']}"}[zone["zone"]]
        size = f"{sum(pixels.values()):,} px" if areas is None else f"{sum(areas.values()) / 1e4:,.2f} ha"
        shares = ", ".join(f"{name} {100 * px / total:.1f}%" for name, px in
                           sorted(pixels.items(), key=lambda kv: -kv[1]) if px)
        console.print(f"stats {safe(where)}: {size}: {safe(shares)}")
    if len(zones) > MAX_ZONES_SHOWN:
        console.print(f"stats: {len(zones) - MAX_ZONES_SHOWN} more zones in the --stats file")


def print_dry_run(report: DryRun, console: Console) -> None:
    plan = report.plan
    m = plan.mosaic
    area = "" if report.area_km2 is None else f", {report.area_km2:,.2f} km2"
    console.print(f"inputs: {len(plan.inputs)} file(s), {report.input_bytes / 2**20:,.1f} MiB{area}")
    for note in plan.input_notes:
        console.print(f"inputs: {safe(note)}")
    console.print(f"mosaic: {m.width} x {m.height} px, {m.res[0]:g} x {m.res[1]:g} CRS units per pixel, "
                  f"{safe(m.crs.to_string()) if m.crs else 'no CRS'}")
    over = "over input files" if plan.roi is None else "meeting the region"
    console.print(f"tiles: {report.tiles:,} of {plan.grid.tile} px ({report.tiles_with_data:,} {over}), "
                  f"overlap {plan.grid.overlap}, context {plan.context}")
    if plan.roi is not None:
        area = "" if report.region_km2 is None else f"{report.region_km2:,.4f} km2, "
        w = plan.roi.window
        console.print(f"region: {safe(plan.roi.label)}: {len(plan.roi.geoms)} feature(s), {area}"
                      f"{int(w.width)} x {int(w.height)} px")
    console.print(f"units: {len(plan.units):,} of up to {plan.unit_size} px a side; shards: {report.shards}"
                  + (f" ({', '.join(f'{t:,}' for t in report.shard_tiles())} tiles)" if report.shards > 1 else ""))
    for dest, option in plan.destinations():
        if not str(dest).endswith((".aux.xml", ".qml")):
            console.print(f"output ({option}): {safe(dest)}"
                          + (f" [{plan.format}]" if str(dest).endswith((".tif", ".tiff")) else ""))
    console.print(f"job folder: {safe(plan.job_dir)} ({report.job_state})")
    for note in report.warnings:
        console.print(f"warning: {safe(note)}")
    cal = report.calibration
    if cal is None:
        console.print("estimate: no tile with data to time")
        return
    est = report.estimate_s
    bound = "reading" if report.reading is not None and report.reading.tiles_per_s < cal.tiles_per_s else "model"
    line = (f"estimate: {_duration(est)} of {bound} time on {cal.device} "
            f"({cal.tiles_per_s:.1f} tiles/s over {cal.tiles} tiles{_tta_note(plan.tta)})")
    if report.shards > 1:
        line += f"; about {_duration(est / report.shards)} per shard"
    console.print(line)
    if report.limit() is not None:
        console.print(report.limit())
