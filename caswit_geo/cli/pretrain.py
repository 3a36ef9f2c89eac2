"""``caswit-geo pretrain``: SimMIM pretraining on unlabelled orthophotos."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List

import typer

from caswit_geo.cli import app
from caswit_geo.cli import options as opt
from caswit_geo.cli import run_options
from caswit_geo.cli.console import safe

if TYPE_CHECKING:
    from rich.console import Console

    from caswit_geo.engine.train.pretraining import PretrainResult


def print_result(result: PretrainResult, console: Console) -> None:
    """The summary of a run that was not stopped by a signal (``run_options.report``)."""
    if result.history:
        console.print(f"final reconstruction loss: {result.history[-1]['train_loss']:.4f}")
    if result.figure is not None:
        console.print(f"reconstructions: {safe(result.figure)}")
    console.print(f"pretrained checkpoint: {safe(result.checkpoint)}  (caswit-geo train --init {safe(result.checkpoint)} ...)")


@app.command(name="pretrain")
@opt.run_command(
    opt.run_option(List[Path], typer.Option(
        None, "--images", "-i", help="GeoTIFF file or folder of them (searched recursively); repeatable."
    )),
    *opt.MODEL_OPTIONS,
    *opt.INPUT_OPTIONS,
    opt.run_option(int, typer.Option(None, "--mask-patch-size", help="Masked HR cell side in px. (default: 32)")),
    opt.run_option(float, typer.Option(None, "--mask-ratio", help="Fraction of HR cells masked. (default: 0.75)")),
    opt.run_option(float, typer.Option(
        None, "--lr-mask-ratio", help="Side of the centred LR mask / LR side. (default: 0.5)"
    )),
    opt.run_option(bool, opt.random_crops(None, "Random tile positions or the fixed grid. (default: random)")),
    opt.CROPS_PER_IMAGE,
    opt.run_option(int, typer.Option(None, "--figure-samples", help="Rows of reconstructions.png. (default: 4)")),
    *opt.RUN_OPTIONS,
)
def pretrain_cmd(given: dict) -> None:
    """Pretrain both encoders and the fusion blocks by masked image modelling (SimMIM).

    Defaults: caswit-tiny, 100 epochs, lr 1e-4, weight decay 0.05, warmup a
    tenth of the epochs, HR mask 75 % of 32 px cells, centred LR mask of half
    the side. The run's last.safetensors is the input of train --init.
    """
    from caswit_geo.engine.train.pretraining import PretrainConfig
    from caswit_geo.engine.train.pretraining import pretrain as run

    images = given["images"]
    given["images"] = list(images) if images else None  # not given: a config file may list them
    result = run(run_options.run_config(PretrainConfig, "pretrain", given))
    run_options.report("pretrain", result, print_result)
