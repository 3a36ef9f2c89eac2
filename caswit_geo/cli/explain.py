"""``caswit-geo explain``: cross-attention maps of one pixel, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from caswit_geo.cli import app
from caswit_geo.cli import options as opt
from caswit_geo.cli.console import after_outputs, plain


@app.command(name="explain")
def explain_cmd(
    image: Path = typer.Argument(..., help="Orthophoto (any GDAL raster)."),
    out: Path = opt.out(..., "PNG to write."),
    weights: Optional[str] = opt.weights(None),
    row: Optional[int] = typer.Option(None, help="Pixel row (default: raster centre)."),
    col: Optional[int] = typer.Option(None, help="Pixel column."),
    x: Optional[float] = typer.Option(None, help="Point X in the raster's CRS (instead of row/col)."),
    y: Optional[float] = typer.Option(None, help="Point Y in the raster's CRS."),
    overwrite: bool = opt.overwrite(False, "Replace an existing PNG."),
    precision: str = opt.precision("auto"),
) -> None:
    """Draw the HR->LR cross-attention of one pixel at every fused stage over the LR context."""
    from caswit_geo.engine.explain import ExplainConfig, explain

    res = explain(ExplainConfig(image=image, out=out, weights=weights, row=row, col=col, x=x, y=y,
                                overwrite=overwrite, precision=precision))
    stages = ", ".join(str(s) for s in res.attention)
    with after_outputs():
        typer.echo(f"{plain(res.out)}: pixel (row {res.pixel[0]}, col {res.pixel[1]}), stages {stages}, "
                   f"predicted class {res.predicted_class}, precision {res.precision}")
