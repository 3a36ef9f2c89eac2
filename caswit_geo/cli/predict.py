"""``caswit-geo predict``: orthophoto(s) -> land-cover class raster (and polygons)."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from . import app
from .console import after_outputs, make_console, safe
from .run_options import PRECISION_HELP

if TYPE_CHECKING:
    from rich.console import Console

    from ..engine.predict import PredictResult


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a job scheduler stopping the run) unwinds like Ctrl-C: temporary files are removed."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def predict(
    inputs: List[str] = typer.Argument(
        ..., metavar="INPUT...", help="Raster(s): files, a folder, a glob or a VRT, read as one mosaic."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Class raster (.tif), or a folder for one output per input."),
    weights: Optional[str] = typer.Option(
        None, "--weights", "-w", help="Checkpoint file or registry name; default: weights/registry.json."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Tiles per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help="Reader processes (default: CPUs - 1, max 4)."),
    overlap: int = typer.Option(0, "--overlap", help="Pixels shared by neighbouring tiles; >0 blends probabilities."),
    resample: bool = typer.Option(False, "--resample", help="Read the input at the model's ground sampling distance."),
    confidence: Optional[Path] = typer.Option(
        None, "--confidence", help="Also write the winning class probability (uint8 percent)."
    ),
    vector: Optional[Path] = typer.Option(
        None, "--vector", help="Also write polygons (.gpkg, .parquet, .geojson, .fgb)."
    ),
    min_area: Optional[float] = typer.Option(None, "--min-area", help="Merge regions smaller than this (m2) first."),
    simplify: Optional[float] = typer.Option(None, "--simplify", help="Simplify polygons (tolerance in m)."),
    preview: Optional[Path] = typer.Option(
        None, "--preview", help="Also write a quick-look PNG: input beside the coloured classes, with a legend."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Predict a land-cover map of an orthophoto mosaic (HR tiles + LR context)."""
    from ..engine.predict import PredictConfig
    from ..engine.predict import predict as run_predict

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
        confidence=confidence,
        vector=vector,
        min_area=min_area,
        simplify=simplify,
        preview=preview,
        progress=not quiet,
    )
    try:
        with _terminate_as_interrupt():
            result = run_predict(config)
    except KeyboardInterrupt:
        typer.echo("caswit-geo: predict interrupted, no output written", err=True)
        raise
    if not quiet:
        with after_outputs():
            print_summary(result, make_console(stderr=True))


def print_summary(result: PredictResult, console: Console) -> None:
    from rich.table import Table

    rate = result.tiles_run / result.seconds if result.seconds else 0.0
    console.print(
        f"[bold]{result.tiles}[/bold] tiles ({result.tiles_run} predicted, {result.tiles_skipped} all nodata) "
        f"on {result.width} x {result.height} px in {result.seconds:.1f} s "
        f"({rate:.1f} tiles/s, model {result.forward_seconds:.1f} s, {safe(result.device)}, precision {result.precision})"
    )
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
    for path in result.outputs + result.confidence_outputs:
        console.print(f"wrote {safe(path)}")
    if result.preview is not None:
        console.print(f"wrote {safe(result.preview)}")
    if result.vector is not None:
        console.print(f"wrote {safe(result.vector)} ({result.vector_features:,} polygons, {result.vector_seconds:.1f} s)")
