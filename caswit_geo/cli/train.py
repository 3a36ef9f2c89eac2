"""``caswit-geo train``: fine-tune CASWiT on FLAIR-HUB, URUR, your own tiles, or imagery and label polygons."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from caswit_geo.cli import app
from caswit_geo.cli import options as opt
from caswit_geo.cli import run_options
from caswit_geo.cli.console import safe

if TYPE_CHECKING:
    from rich.console import Console

    from caswit_geo.engine.train.training import TrainResult


def print_result(result: TrainResult, console: Console) -> None:
    """The summary of a run that was not stopped by a signal (``run_options.report``)."""
    if result.best_epoch is not None:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items() if v is not None)
        console.print(f"best epoch {result.best_epoch}: {safe(metrics) or 'no validation'}")
    if result.best_checkpoint is not None:
        console.print(f"inference checkpoint: {safe(result.best_checkpoint)}")
    console.print(f"run directory: {safe(result.run_dir)}")


@app.command(name="train")
@opt.run_command(
    opt.run_option(str, opt.dataset(None, "flairhub | urur | tiles | vector.")),
    opt.run_option(Path, opt.root(None)),
    *opt.VECTOR_OPTIONS,
    *opt.MODEL_OPTIONS,
    opt.run_option(float, typer.Option(
        None, "--alpha", help="Weight of the auxiliary LR loss (0 = no LR head). (default: 0.5)"
    )),
    opt.run_option(str, typer.Option(
        None, "--decoder", help="upernet | segformer (all-MLP, cheaper). (default: upernet)"
    )),
    opt.run_option(int, typer.Option(
        None, "--decoder-dim", help="SegFormer decoder width. (default: 768; caswit-nano 96)"
    )),
    *opt.INPUT_OPTIONS,
    opt.run_option(str, typer.Option(None, "--train-split", help="Training split. (default: train)")),
    opt.run_option(str, typer.Option(None, "--val-split", help="Validation split, or 'none'. (default: val)")),
    opt.run_option(str, opt.split_column(None)),
    opt.run_option(bool, opt.allow_missing(
        None, "Run on the patches found when a split lists missing ones (else an error)."
    )),
    opt.run_option(bool, typer.Option(
        None, "--augment/--no-augment", help="Flips, rot90 and colour jitter. (default: off)"
    )),
    opt.run_option(bool, opt.random_crops(None, "urur/tiles: random tile positions or the fixed grid. (default: random)")),
    opt.CROPS_PER_IMAGE,
    opt.run_option(Path, typer.Option(
        None, "--init", help="Pretrained checkpoint (caswit-geo pretrain) for encoders and fusion."
    )),
    opt.run_option(Path, typer.Option(
        None, "--init-upernet",
        help="UPerNet-Swin (transformers folder or mmsegmentation .pth) for both encoders and the decoder.",
    )),
    *opt.RUN_OPTIONS,
)
def train_cmd(given: dict) -> None:
    """Train a segmentation model (AdamW, cosine, 20 epochs); best.safetensors goes to predict/eval.

    Defaults: caswit-tiny, lr 6e-5, weight decay 0.01, 20 epochs, alpha 0.5,
    no augmentation (the paper's setting). Several GPUs or machines:
    torchrun --nproc_per_node N --no-python caswit-geo train ...
    """
    from caswit_geo.engine.train.training import TrainConfig
    from caswit_geo.engine.train.training import train as run

    given["images"] = list(given["images"]) if given["images"] else None  # not given: a config file may list them
    result = run(run_options.run_config(TrainConfig, "train", given))
    run_options.report("train", result, print_result)
