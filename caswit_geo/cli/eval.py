"""``caswit-geo eval``: score a checkpoint on a dataset split, or a class raster against a reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from caswit_geo.cli import app
from caswit_geo.cli import options as opt
from caswit_geo.cli.console import after_outputs, make_console, safe
from caswit_geo.core.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from caswit_geo.engine.evaluate.evaluation import EvalResult


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def print_result(result: EvalResult, console: Console | None = None) -> None:
    """Per-class IoU/F1/bIoU table, then mIoU, mF1, OA and mBIoU (in %)."""
    from rich.table import Table

    console = console or make_console()
    table = Table(title=f"eval ({safe(result.protocol)} protocol)")
    for col in ("id", "class", "IoU", "F1", "bIoU", "GT pixels"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in result.per_class:
        table.add_row(safe(r["id"]), safe(r["name"]), _pct(r["iou"]), _pct(r["f1"]), _pct(r["biou"]), f"{r['gt_pixels']:,}")
    m = result.metrics
    table.add_section()
    table.add_row("", "mean", _pct(m["mIoU"]), _pct(m["mF1"]), _pct(m["mBIoU"]), "")
    console.print(table)
    console.print(f"mIoU {_pct(m['mIoU'])}  mF1 {_pct(m['mF1'])}  OA {_pct(m['OA'])}  mBIoU {_pct(m['mBIoU'])}")
    r = result.report
    if "precision" in r:  # a model ran (not --pred/--ref)
        console.print(f"{r['device']}, precision {r['precision']} ({r['precision_reason']})", soft_wrap=True)
    for kind, path in result.files.items():
        console.print(f"{kind}: {safe(path)}")


@app.command(name="eval")
def eval_cmd(
    dataset: Optional[str] = opt.dataset(None, "flairhub | urur | tiles | vector (with --pred/--ref: flairhub | urur protocol)."),
    root: Optional[Path] = opt.root(None),
    weights: Optional[str] = opt.weights(None),
    split: str = typer.Option("test", "--split", help="train | val | test (flairhub also: a .csv/.txt list of patch ids)."),
    batch_size: int = opt.batch_size(4, "Tiles per batch."),
    device: str = opt.device("auto", "auto | cpu | cuda | cuda:N."),
    precision: str = opt.precision("auto"),
    workers: int = opt.workers(2, "DataLoader worker processes."),
    split_column: str = opt.split_column("split_flairhub"),
    allow_missing: bool = opt.allow_missing(
        False, "Score the patches found when the split lists missing ones (else an error)."
    ),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o", help="Report folder (default ./eval-<dataset>-<split>; --pred/--ref: none)."),
    save_predictions: Optional[Path] = typer.Option(None, "--save-predictions", help="Folder for the predicted class rasters."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="Class raster to score (instead of running a model)."),
    ref: Optional[Path] = typer.Option(
        None, "--ref", help="Reference for --pred: a label raster, or polygons with --class-field."
    ),
    classes: Optional[Path] = opt.classes(None, "classes.json for --pred/--ref or --dataset vector."),
    tile_size: int = opt.tile_size(512, "--pred/--ref: window size (px) for reading and bIoU."),
    allow_gaps: bool = typer.Option(
        False, "--allow-gaps", help="--pred/--ref: score reference pixels without a prediction as errors (else refused)."
    ),
    images: Optional[List[str]] = opt.images(None, "--dataset vector: imagery as predict reads it (one mosaic); repeatable."),
    labels: Optional[Path] = opt.labels(None),
    labels_layer: Optional[str] = opt.labels_layer(None),
    class_field: Optional[str] = opt.class_field(None),
    areas: Optional[Path] = opt.areas(None),
    areas_layer: Optional[str] = opt.areas_layer(None),
    split_field: str = opt.split_field("split"),
    background: Optional[str] = opt.background(None),
    skip_non_polygons: bool = opt.skip_non_polygons(False),
    overwrite: bool = opt.overwrite(False, "Replace existing report and prediction files."),
    progress: bool = opt.progress(True, "Show a progress bar."),
) -> None:
    """Score a model on a dataset split (mIoU, mF1, OA, mBIoU), or compare --pred with --ref."""
    from caswit_geo.data.vector import VectorSource
    from caswit_geo.engine.evaluate.evaluation import EvalConfig, evaluate, evaluate_rasters
    from caswit_geo.engine.evaluate.vector_reference import is_vector

    if pred is not None or ref is not None:
        if pred is None or ref is None:
            raise ConfigError("--pred and --ref go together")
        for flag, value in (("--root", root), ("--weights", weights), ("--save-predictions", save_predictions),
                            ("--precision", None if precision == "auto" else precision)):
            if value is not None:
                raise ConfigError(f"{flag} does not apply to --pred/--ref")
        if classes is not None and dataset is not None:
            raise ConfigError("give --classes or --dataset with --pred/--ref, not both")
        if images or labels is not None:
            raise ConfigError("--images and --labels are for --dataset vector; with --pred the polygons are --ref")
        vector = None
        if class_field is not None or is_vector(ref):
            vector = dict(field=class_field, layer=labels_layer, areas=areas, areas_layer=areas_layer,
                          background=background, skip_non_polygons=skip_non_polygons)
        result = evaluate_rasters(
            pred, ref, classes=classes, dataset=dataset, out_dir=out_dir, overwrite=overwrite,
            tile_size=tile_size, allow_gaps=allow_gaps, progress=progress, vector=vector,
        )
    else:
        source = None
        if dataset == "vector":
            if not images or labels is None or class_field is None:
                raise ConfigError("--dataset vector needs --images, --labels and --class-field")
            source = VectorSource(
                images=tuple(images), labels=labels, class_field=class_field, labels_layer=labels_layer,
                areas=areas, split_field=split_field, areas_layer=areas_layer, background=background,
                classes=classes, skip_non_polygons=skip_non_polygons,
            )
        elif dataset is None or root is None:
            raise ConfigError("--dataset and --root are required (or --pred and --ref)")
        elif classes is not None or allow_gaps:
            flag = "--classes" if classes is not None else "--allow-gaps"
            raise ConfigError(f"{flag} only applies to --pred/--ref")
        result = evaluate(
            EvalConfig(
                dataset=dataset, root=root, weights=weights, split=split, batch_size=batch_size, device=device,
                precision=precision,
                workers=workers, split_column=split_column, out_dir=out_dir, save_predictions=save_predictions,
                overwrite=overwrite, progress=progress, allow_missing=allow_missing, vector=source,
            )
        )
    with after_outputs():
        print_result(result)
