"""``caswit-geo pretrain``: SimMIM pretraining on unlabelled orthophotos."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from caswit_geo.cli import app
from caswit_geo.cli import run_options as opt
from caswit_geo.cli.console import after_outputs, make_console, safe

if TYPE_CHECKING:
    from rich.console import Console

    # the engine (torch) is imported only now; after locals() above, which must hold only the options
    from caswit_geo.engine.train.pretraining import PretrainResult


def print_result(result: PretrainResult, console: Console | None = None) -> None:
    console = console or make_console()
    if result.stopped_by is not None:
        return  # run_options.exit_if_stopped reports it
    if not result.completed:
        last = result.history[-1]["epoch"] if result.history else 0
        console.print(f"stopped after epoch {last}; continue with: caswit-geo pretrain --resume {safe(result.run_dir)}")
    if result.history:
        console.print(f"final reconstruction loss: {result.history[-1]['train_loss']:.4f}")
    if result.figure is not None:
        console.print(f"reconstructions: {safe(result.figure)}")
    console.print(f"pretrained checkpoint: {safe(result.checkpoint)}  (caswit-geo train --init {safe(result.checkpoint)} ...)")


@app.command(name="pretrain")
def pretrain_cmd(
    images: Optional[List[Path]] = typer.Option(
        None, "--images", "-i", help="GeoTIFF file or folder of them (searched recursively); repeatable."
    ),
    config: Optional[Path] = opt.CONFIG,
    model: Optional[str] = opt.MODEL,
    fusion_stages: Optional[str] = opt.FUSION_STAGES,
    gate: Optional[bool] = opt.GATE,
    tile_size: Optional[int] = opt.TILE_SIZE,
    context_factor: Optional[int] = opt.CONTEXT_FACTOR,
    bands: Optional[str] = opt.BANDS,
    scale: Optional[float] = opt.SCALE,
    mean: Optional[str] = opt.MEAN,
    std: Optional[str] = opt.STD,
    mask_patch_size: Optional[int] = typer.Option(None, "--mask-patch-size", help="Masked HR cell side in px. (default: 32)"),
    mask_ratio: Optional[float] = typer.Option(None, "--mask-ratio", help="Fraction of HR cells masked. (default: 0.75)"),
    lr_mask_ratio: Optional[float] = typer.Option(
        None, "--lr-mask-ratio", help="Side of the centred LR mask / LR side. (default: 0.5)"
    ),
    random_crops: Optional[bool] = typer.Option(
        None, "--random-crops/--grid-crops", help="Random tile positions or the fixed grid. (default: random)"
    ),
    crops_per_image: Optional[int] = typer.Option(None, "--crops-per-image", help="Random tiles per image and epoch."),
    figure_samples: Optional[int] = typer.Option(None, "--figure-samples", help="Rows of reconstructions.png. (default: 4)"),
    backbone_weights: Optional[Path] = opt.BACKBONE_WEIGHTS,
    epochs: Optional[int] = opt.EPOCHS,
    batch_size: Optional[int] = opt.BATCH_SIZE,
    lr: Optional[float] = opt.LR,
    min_lr: Optional[float] = opt.MIN_LR,
    weight_decay: Optional[float] = opt.WEIGHT_DECAY,
    warmup_epochs: Optional[float] = opt.WARMUP_EPOCHS,
    clip_grad: Optional[float] = opt.CLIP_GRAD,
    precision: Optional[str] = opt.PRECISION,
    amp: Optional[bool] = opt.AMP,
    grad_checkpointing: Optional[bool] = opt.GRAD_CHECKPOINTING,
    device: Optional[str] = opt.DEVICE,
    workers: Optional[int] = opt.WORKERS,
    seed: Optional[int] = opt.SEED,
    out: Optional[Path] = opt.OUT,
    overwrite: Optional[bool] = opt.OVERWRITE,
    resume: Optional[Path] = opt.RESUME,
    stop_after: Optional[int] = opt.STOP_AFTER,
    progress: Optional[bool] = opt.PROGRESS,
) -> None:
    """Pretrain both encoders and the fusion blocks by masked image modelling (SimMIM).

    Defaults: caswit-tiny, 100 epochs, lr 1e-4, weight decay 0.05, warmup a
    tenth of the epochs, HR mask 75 % of 32 px cells, centred LR mask of half
    the side. The run's last.safetensors is the input of train --init.
    """
    given = dict(locals())
    given.pop("config")
    given["images"] = list(images) if images else None
    for key, kind in (("bands", int), ("mean", float), ("std", float)):
        given[key] = opt.parse_list(given[key], kind, "--" + key)
    from caswit_geo.engine.train.pretraining import PretrainConfig, pretrain as run

    result = run(opt.build_config(PretrainConfig, "pretrain", config, given))
    with after_outputs():
        print_result(result)
    opt.exit_if_stopped("pretrain", result)
