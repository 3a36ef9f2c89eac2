"""Dual-stream SimMIM pretraining on unlabelled orthophotos (paper sections 3.5 and 4.3).

``pretrain(PretrainConfig(images=[...])) -> PretrainResult``. Any GeoTIFFs
(mosaics included) are cut into T x T tiles with their kT context, exactly
as for training and prediction; each tile gets a random HR mask (75 % of
32 px cells) and the centred LR mask (half the side); the model learns to
fill the masked HR cells. Same optimiser, schedule, DDP, checkpoints and
resume as ``train`` (``loop.py``). ``last.safetensors`` of the run is
what ``train --init`` takes; ``reconstructions.png`` shows the progress.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.core.limits import bounded
from caswit_geo.core.spec import ClassTable
from caswit_geo.data import ImagePair, RasterTileDataset
from caswit_geo.engine.train.config import RunConfig
from caswit_geo.engine.train.inputs import check_dtypes, check_samples, run_input_spec, scale_for, with_gsd
from caswit_geo.engine.train.loop import build_loop, fit, run_command, seed_run, training_metadata
from caswit_geo.engine.train.reconstructions import figure_rows, save_reconstruction_figure
from caswit_geo.engine.train.rundir import LAST_WEIGHTS, RECONSTRUCTIONS, RunDirectory
from caswit_geo.model.checkpoint import stored_behaviour
from caswit_geo.model.configs import get_config
from caswit_geo.model.simmim import CaswitSimMIM, MaskGenerator
from caswit_geo.runtime.distributed import DistEnv

IMAGE_SUFFIXES = (".tif", ".tiff")


@dataclass
class PretrainConfig(RunConfig):
    """Settings of ``caswit-geo pretrain``; the shared ones are in :class:`RunConfig`.

    Defaults follow SimMIM's Swin recipe where the paper is silent (weight
    decay 0.05, warmup over the first tenth of the epochs) and the paper's
    100 epochs and masking ratios.
    """

    images: tuple[Path, ...] = ()  # GeoTIFF files and/or folders of them
    epochs: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: float | None = None  # None = a tenth of the epochs
    mask_patch_size: int = bounded(32, ge=4, multiple_of=4)  # side of a masked HR cell in pixels
    mask_ratio: float = bounded(0.75, gt=0, lt=1)  # HR cells masked
    lr_mask_ratio: float = bounded(0.5, ge=0, le=1)  # side of the centred LR mask / LR side
    random_crops: bool = True  # random tile positions each epoch (else the fixed grid)
    crops_per_image: int | None = bounded(None, ge=1)  # None = the image's grid tile count
    figure_samples: int = bounded(4, ge=0, le=64)  # rows of reconstructions.png (0 = no figure)


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path  # last.safetensors: the input of train --init
    figure: Path | None
    history: list[dict]
    completed: bool
    model: nn.Module = field(repr=False)
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT": a signal ended the run (resumable)
    stopped_at: tuple[int, int] | None = None  # (epoch, iterations done in it)


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pretrain (or resume) one run; under torchrun every process calls this."""
    return run_command(config, "pretrain", _pretrain_in)


def find_images(inputs) -> list[Path]:
    """Files as given; folders searched recursively for .tif/.tiff (a tiles folder: its images/)."""
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_file():
            files.append(item)
        elif item.is_dir():
            base = item / "images" if (item / "images").is_dir() else item
            found = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"--images {item}: no .tif image in this folder")
            files += found
        else:
            raise InputError(f"--images {item}: no such file or folder")
    if not files:
        raise ConfigError("--images is required: GeoTIFF files or folders of them")
    return list(dict.fromkeys(files))


def _pretrain_in(config: PretrainConfig, run: RunDirectory, env: DistEnv) -> PretrainResult:
    run_dir, resuming = run.path, run.resuming
    tile = config.resolved_tile_size()
    try:
        masks = MaskGenerator(tile, config.mask_patch_size, config.mask_ratio, config.lr_mask_ratio)
    except ValueError as e:
        raise ConfigError(f"--mask-patch-size / --lr-mask-ratio: {e}") from None
    files = find_images(config.images)
    if config.warmup_epochs is None:
        config = dataclasses.replace(config, warmup_epochs=config.epochs / 10)
    seed_run(config, env)
    spec = run_input_spec(config, tile, scale=None if config.scale else scale_for(files[0]))
    pairs = [ImagePair(path.stem, path, None) for path in files]
    dataset = RasterTileDataset(pairs, ClassTable(), spec, random_crops=config.random_crops,
                                crops_per_image=config.crops_per_image)
    check_dtypes(dataset.images, spec, "--images")
    check_samples(dataset, spec, f"--images {files[0]}")
    spec = with_gsd(spec, dataset)

    overrides = config.model_overrides(spec.in_chans)
    if resuming and (run_dir / LAST_WEIGHTS).is_file():  # a run of an older version keeps the model it started with
        overrides.update(stored_behaviour(run_dir / LAST_WEIGHTS))
    model_config = get_config(config.model, num_classes=1, **overrides)
    if not model_config.dual:
        raise ConfigError(f"--model {config.model}: SimMIM pretraining needs a dual-branch model (fusion stages not none)")
    model = CaswitSimMIM(model_config, config.backbone_weights)
    run.guard_inputs([config.backbone_weights])
    # LR stages after the last fused one never run, and the reconstruction reads no stage
    # norm but the last HR one: DDP must not wait for their gradients
    unused = max(model_config.fusion_stages) < 4 or model_config.stage_norms
    loop, start = build_loop(model, dataset, config, env, run_dir, resuming, find_unused_parameters=unused)

    def compute_loss(net: nn.Module, batch: dict) -> torch.Tensor:
        hr, lr = batch["hr"].to(env.device, non_blocking=True), batch["lr"].to(env.device, non_blocking=True)
        drawn = [masks() for _ in range(hr.shape[0])]  # global torch RNG: saved and restored with the run
        hr_mask = torch.stack([m[0] for m in drawn]).to(env.device)  # (B, T/4, T/4) 1 = masked
        lr_mask = torch.stack([m[1] for m in drawn]).to(env.device)
        return net(hr, lr, hr_mask, lr_mask)

    # the same tiles and masks every epoch, so the figures are comparable
    figure_set = RasterTileDataset(pairs, ClassTable(), spec) if config.figure_samples > 0 else None

    def end_epoch(epoch: int, history: list[dict]) -> None:
        if figure_set is not None:
            draw_reconstructions(model, figure_set, masks, config.figure_samples, env.device,
                                 run.file(RECONSTRUCTIONS), f"epoch {epoch}", seed=config.seed)

    training = training_metadata(config, env, loop.precision)
    result = fit(loop, start, compute_loss, epochs=config.epochs, run=run,
                 checkpoint_args=dict(input_spec=spec, training=training), end_epoch=end_epoch,
                 stop_after=config.stop_after, title=f"SimMIM {model_config.name}")
    figure = run_dir / RECONSTRUCTIONS
    return PretrainResult(run_dir, run_dir / LAST_WEIGHTS, figure if figure.is_file() else None,
                          result.history, result.completed, model, result.stopped_by, result.stopped_at)


@torch.no_grad()
def draw_reconstructions(model: CaswitSimMIM, dataset, masks: MaskGenerator, count: int, device, path: Path,
                         title: str, seed: int = 0) -> Path:
    """Reconstruct ``count`` tiles spread over ``dataset`` with fixed masks; write the figure."""
    was_training = model.training
    model.eval()
    index = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    samples = [dataset[int(i)] for i in index]
    hr = torch.stack([s["hr"] for s in samples]).to(device)
    lr = torch.stack([s["lr"] for s in samples]).to(device)
    gen = torch.Generator().manual_seed(seed)  # a private generator: the run's RNG stream is untouched
    drawn = [masks(gen) for _ in samples]
    hr_mask = torch.stack([m[0] for m in drawn]).to(device)
    lr_mask = torch.stack([m[1] for m in drawn]).to(device)
    rec = model.reconstruct(hr, lr, hr_mask, lr_mask)
    model.train(was_training)
    return save_reconstruction_figure(figure_rows(hr, lr, rec, hr_mask, lr_mask, dataset.input_spec), path, title)
