"""``caswit-geo train``: fine-tune CASWiT on FLAIR-HUB, URUR or your own tiles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from caswit_geo.cli import app
from caswit_geo.cli import run_options as opt
from caswit_geo.cli.console import after_outputs, make_console, safe

if TYPE_CHECKING:
    from rich.console import Console

    # the engine (torch) is imported only now; after locals() above, which must hold only the options
    from caswit_geo.engine.train.training import TrainResult


def print_result(result: TrainResult, console: Console | None = None) -> None:
    console = console or make_console()
    if result.stopped_by is not None:
        return  # run_options.exit_if_stopped reports it
    if not result.completed:
        last = result.history[-1]["epoch"] if result.history else 0
        console.print(f"stopped after epoch {last}; continue with: caswit-geo train --resume {safe(result.run_dir)}")
    if result.best_epoch is not None:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items() if v is not None)
        console.print(f"best epoch {result.best_epoch}: {safe(metrics) or 'no validation'}")
    if result.best_checkpoint is not None:
        console.print(f"inference checkpoint: {safe(result.best_checkpoint)}")
    console.print(f"run directory: {safe(result.run_dir)}")


@app.command(name="train")
def train_cmd(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="flairhub | urur | tiles."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root folder."),
    config: Optional[Path] = opt.CONFIG,
    model: Optional[str] = opt.MODEL,
    fusion_stages: Optional[str] = opt.FUSION_STAGES,
    gate: Optional[bool] = opt.GATE,
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Weight of the auxiliary LR loss (0 = no LR head). (default: 0.5)"),
    decoder: Optional[str] = typer.Option(None, "--decoder", help="upernet | segformer (all-MLP, cheaper). (default: upernet)"),
    decoder_dim: Optional[int] = typer.Option(None, "--decoder-dim", help="SegFormer decoder width. (default: 768; caswit-nano 96)"),
    tile_size: Optional[int] = opt.TILE_SIZE,
    context_factor: Optional[int] = opt.CONTEXT_FACTOR,
    bands: Optional[str] = opt.BANDS,
    scale: Optional[float] = opt.SCALE,
    mean: Optional[str] = opt.MEAN,
    std: Optional[str] = opt.STD,
    train_split: Optional[str] = typer.Option(None, "--train-split", help="Training split. (default: train)"),
    val_split: Optional[str] = typer.Option(None, "--val-split", help="Validation split, or 'none'. (default: val)"),
    split_column: Optional[str] = typer.Option(None, "--split-column", help="FLAIR-HUB split GeoPackage column."),
    allow_missing: Optional[bool] = typer.Option(
        None, "--allow-missing", help="Run on the patches found when a split lists missing ones (else an error)."
    ),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Flips, rot90 and colour jitter. (default: off)"),
    random_crops: Optional[bool] = typer.Option(
        None, "--random-crops/--grid-crops", help="urur/tiles: random tile positions or the fixed grid. (default: random)"
    ),
    crops_per_image: Optional[int] = typer.Option(None, "--crops-per-image", help="Random tiles per image and epoch."),
    init: Optional[Path] = typer.Option(None, "--init", help="Pretrained checkpoint (caswit-geo pretrain) for encoders and fusion."),
    init_upernet: Optional[Path] = typer.Option(
        None, "--init-upernet",
        help="UPerNet-Swin (transformers folder or mmsegmentation .pth) for both encoders and the decoder.",
    ),
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
    """Train a segmentation model (AdamW, cosine, 20 epochs); best.safetensors goes to predict/eval.

    Defaults: caswit-tiny, lr 6e-5, weight decay 0.01, 20 epochs, alpha 0.5,
    no augmentation (the paper's setting). Several GPUs or machines:
    torchrun --nproc_per_node N --no-python caswit-geo train ...
    """
    given = dict(locals())
    given.pop("config")
    for key, kind in (("bands", int), ("mean", float), ("std", float)):
        given[key] = opt.parse_list(given[key], kind, "--" + key)
    from caswit_geo.engine.train.training import TrainConfig, train as run

    result = run(opt.build_config(TrainConfig, "train", config, given))
    with after_outputs():
        print_result(result)
    opt.exit_if_stopped("train", result)
