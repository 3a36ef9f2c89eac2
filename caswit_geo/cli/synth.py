"""``caswit-geo synth``: write a synthetic ``tiles`` data set (orthophotos + labels)."""

from __future__ import annotations

from pathlib import Path

import typer

from caswit_geo.cli import app
from caswit_geo.cli import options as opt
from caswit_geo.cli.console import after_outputs, make_console, safe


@app.command()
def synth(
    out_dir: Path = typer.Argument(..., help="Folder of the data set (created; must be empty unless --overwrite)."),
    seed: int = opt.seed(0, "Master seed: same seed, same bytes."),
    size: int = typer.Option(1024, "--size", help="Side of each square mosaic, px."),
    train: int = typer.Option(8, "--train", help="Number of training mosaics."),
    val: int = typer.Option(4, "--val", help="Number of validation mosaics."),
    test: int = typer.Option(4, "--test", help="Number of test mosaics."),
    gsd: float = typer.Option(0.5, "--gsd", help="Pixel size, m."),
    crs: str = typer.Option("EPSG:2154", "--crs", help="Projected CRS of the mosaics."),
    overwrite: bool = opt.overwrite(False, "Replace the data set already in OUT_DIR."),
) -> None:
    """Generate synthetic georeferenced orthophoto mosaics with land-cover labels.

    Park and meadow share one grass texture: only the surroundings of a grass
    patch (buildings within 24 m) tell them apart, which is what the LR
    context branch is for. See caswit_geo/synthetic/__init__.py for the rule.
    """
    from caswit_geo.synthetic import SyntheticConfig, generate_dataset

    config = SyntheticConfig(seed=seed, size=size, train=train, val=val, test=test, gsd=gsd, crs=crs)
    summary = generate_dataset(config, out_dir, overwrite=overwrite, progress=True)
    with after_outputs():
        print_summary(summary, size)


def print_summary(summary, size: int) -> None:
    from rich.table import Table

    from caswit_geo.synthetic import CONTEXT_CLASSES

    console = make_console()
    n = sum(len(v) for v in summary.names.values())
    console.print(f"{safe(summary.root)}: {n} mosaics of {size} x {size} px in {summary.seconds:.1f} s")
    table = Table()
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("pixels", justify="right")
    table.add_column("share", justify="right")
    for k, (name, n, f) in enumerate(zip(summary.class_names, summary.class_pixels, summary.class_frequencies)):
        table.add_row(str(k), safe(name) + (" (context)" if k in CONTEXT_CLASSES else ""), f"{n:,}", f"{100 * f:.1f} %")
    console.print(table)
    console.print("splits: " + ", ".join(f"{split} {len(names)}" for split, names in summary.names.items()))
