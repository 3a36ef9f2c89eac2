"""Supervised training of CASWiT (paper sections 3.4 and 4.3).

``train(TrainConfig(...)) -> TrainResult``. Loss ``CE(HR) + alpha CE(LR)``
with the dataset's class weights; AdamW 6e-5, weight decay 0.01, cosine to
1e-6 per iteration, 20 epochs. After every epoch the model is validated on
the whole validation split (one confusion matrix summed over all ranks,
scored with the dataset's protocol) and the run directory gets
``last.safetensors`` + ``last.pt`` (resume) and, when the validation mIoU
improves, ``best.safetensors``: an inference checkpoint without the
auxiliary LR head, what ``predict`` and ``eval`` load.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from caswit_geo.core.errors import ConfigError
from caswit_geo.core.limits import Text, bounded
from caswit_geo.core.spec import ClassTable, InputSpec
from caswit_geo.data import Augment, build_dataset, load_tiles_meta
from caswit_geo.data.vector import (
    VectorDataset,
    VectorSource,
    load_vector_data,
    resolve_images,
    summary_line,
    warn_unused,
)
from caswit_geo.engine.convert import check_upernet_fits
from caswit_geo.engine.evaluate.metrics import ConfusionMatrix, protocol_for
from caswit_geo.engine.train.config import RunConfig
from caswit_geo.engine.train.inputs import check_dtypes, check_samples, run_input_spec, scale_for, with_gsd
from caswit_geo.engine.train.loop import build_loop, eval_loader, fit, run_command, seed_run, training_metadata
from caswit_geo.engine.train.rundir import BEST_WEIGHTS, LAST_WEIGHTS, SAMPLES, RunDirectory
from caswit_geo.engine.train.samples import save_samples_figure
from caswit_geo.geo.mosaic import describe_raster
from caswit_geo.geo.remote import is_remote, mask
from caswit_geo.model.build import build_model
from caswit_geo.model.caswit import DECODERS
from caswit_geo.model.checkpoint import load_pretrained_backbone, read_meta, save_checkpoint, stored_behaviour
from caswit_geo.model.configs import get_config
from caswit_geo.model.loss import CaswitLoss, cross_entropy
from caswit_geo.model.transfer import transfer_upernet
from caswit_geo.model.upernet.source import read_upernet
from caswit_geo.runtime.distributed import DistEnv, all_reduce_sum
from caswit_geo.runtime.precision import Precision

DATASETS = ("flairhub", "urur", "tiles", "vector")


@dataclass
class TrainConfig(RunConfig):
    """Settings of ``caswit-geo train`` (see :class:`RunConfig` for the shared ones)."""

    dataset: str | None = None  # flairhub | urur | tiles | vector
    root: Path | None = None
    # vector: a mosaic, label polygons and labelled areas (data/vector.py)
    images: tuple[str, ...] = ()  # predict inputs: files, folders, globs, URLs, STAC items (a URL is no Path)
    labels: Path | None = None
    labels_layer: str | None = None
    class_field: str | None = None
    areas: Path | None = None
    areas_layer: str | None = None
    split_field: str = "split"
    background: str | None = None
    classes: Path | None = None  # classes.json for the field's values
    val_fraction: float = bounded(0.2, ge=0, lt=1)  # without areas: share of the blocks that validate
    skip_non_polygons: bool = False
    train_split: str = "train"
    val_split: str | None = "val"  # None or "none" = no validation (best = last epoch)
    split_column: str | None = None  # flairhub: split scheme column of the split GeoPackage
    allow_missing: bool = False  # train/validate on what is found when a split lists missing patches (logged)
    alpha: float | None = bounded(None, ge=0)  # weight of the LR loss; None = the model's (0.5)
    decoder: str | None = bounded(None, Text(choices=DECODERS))  # upernet | segformer; None = the model's (upernet)
    decoder_dim: int | None = bounded(None, ge=1, le=2048)  # SegFormer width D; None = the model's (768)
    augment: bool = False  # the paper trains without augmentation
    random_crops: bool = True  # urur/tiles: random tile positions each epoch (else the fixed grid)
    crops_per_image: int | None = bounded(None, ge=1)  # urur/tiles with random crops; None = the image's grid tile count
    init: Path | None = None  # SimMIM checkpoint (pretrain), or its run directory, for encoders and fusion
    init_upernet: Path | None = None  # UPerNet-Swin (transformers folder, mmsegmentation .pth): encoders, UPerNet decoder

    def model_overrides(self, in_chans: int) -> dict:
        overrides = super().model_overrides(in_chans)
        overrides.update({k: getattr(self, k) for k in ("decoder", "decoder_dim") if getattr(self, k) is not None})
        return overrides

    def to_dict(self, absolute_paths: bool = False) -> dict:
        """As :meth:`RunConfig.to_dict`; ``images``: local paths absolute with ``absolute_paths``, URLs
        without their query or credentials (``config.json`` keeps no token)."""
        settings = super().to_dict(absolute_paths)
        settings["images"] = [mask(p) if is_remote(p) else os.path.abspath(p) if absolute_paths else str(p)
                              for p in self.images]
        return settings


@dataclass
class TrainResult:
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    history: list[dict]
    best_epoch: int | None
    best_metrics: dict
    completed: bool  # False when stopped by stop_after
    model: nn.Module = field(repr=False)  # final weights, unwrapped, on the training device
    init_report: str | None = None
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT": a signal ended the run (resumable)
    stopped_at: tuple[int, int] | None = None  # (epoch, iterations done in it)


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume) one run; under torchrun every process calls this."""
    return run_command(config, "train", _train_in)


def _train_in(config: TrainConfig, run: RunDirectory, env: DistEnv) -> TrainResult:
    run_dir, resuming = run.path, run.resuming
    _check(config)
    upernet = (config.decoder or get_config(config.model).decoder) == "upernet"
    if config.batch_size < 2 and upernet and not (env.device.type == "cuda" and env.distributed):
        # UPerNet's BatchNorm sees one value per channel after the 1x1 pyramid pooling
        # (SegFormer's norms all work at 1/4 scale: one tile is enough)
        raise ConfigError(
            f"--batch-size {config.batch_size}: training needs at least 2 tiles per batch (BatchNorm); "
            "use --grad-checkpointing to fit more in memory, or several GPUs (synchronised BatchNorm)"
        )
    seed_run(config, env)
    train_set, val_set, spec, classes = _datasets(config, config.resolved_tile_size())
    model, init_report = _initial_model(config, run_dir, resuming, spec, len(classes), env)
    loss_fn = CaswitLoss(alpha=model.config.alpha, class_weights=classes.weights).to(env.device)
    run.guard_inputs([_init_path(config), config.init_upernet, config.backbone_weights])
    # without the auxiliary head, LR stages after the last fused one never run and the LR stage
    # norms are never read: DDP must not wait for them
    cfg = model.config
    unused = cfg.dual and model.aux_head is None and (max(cfg.fusion_stages) < 4 or cfg.stage_norms)
    loop, start = build_loop(model, train_set, config, env, run_dir, resuming, find_unused_parameters=unused)

    protocol = protocol_for(config.dataset, classes)
    val_loader = eval_loader(val_set, env, config.batch_size, config.workers) if val_set is not None else None
    splits = split_coverage(train_set, val_set)
    training = {**training_metadata(config, env, loop.precision), "splits": splits}
    if isinstance(train_set, VectorDataset):  # polygons, overlaps, repairs, areas: what the labels were
        training["vector_labels"] = train_set.data.summary
    if env.is_master and splits:
        tqdm.write(coverage_line(splits))

    def compute_loss(net: nn.Module, batch: dict) -> torch.Tensor:
        hr, lr, label, lr_label = (batch[k].to(env.device, non_blocking=True) for k in ("hr", "lr", "label", "lr_label"))
        hr_logits, lr_logits = net(hr, lr)
        return loss_fn(hr_logits, lr_logits, label, lr_label)

    def evaluate(epoch: int) -> dict:
        if val_loader is None:
            return {}
        cm = ConfusionMatrix(len(classes))
        loss_sum, batches = validate(model, val_loader, loss_fn.class_weights, cm, env, loop.precision)
        totals = all_reduce_sum(torch.tensor([loss_sum, batches], dtype=torch.float64), env)
        cm.matrix = all_reduce_sum(torch.from_numpy(cm.matrix), env).numpy()
        scores = protocol.scores(cm)
        return {"val_loss": float(totals[0] / totals[1].clamp_min(1)), "val_miou": scores.miou,
                "val_mf1": scores.mf1, "val_oa": scores.oa}

    def end_epoch(epoch: int, history: list[dict]) -> None:
        if config.dataset == "vector" and not (run_dir / SAMPLES).is_file():  # once, with the first save
            save_samples_figure(train_set, run.file(SAMPLES), seed=config.seed)
        best = best_row(history)
        if best is not None and best["epoch"] == epoch:
            save_checkpoint(model, run.file(BEST_WEIGHTS), include_aux=False, classes=classes, input_spec=spec,
                            training=training, epoch=epoch, best_epoch=epoch, val_metrics=_val_metrics(best))

    result = fit(loop, start, compute_loss, epochs=config.epochs, run=run,
                 checkpoint_args=dict(classes=classes, input_spec=spec, training=training),
                 evaluate=evaluate, end_epoch=end_epoch, stop_after=config.stop_after,
                 title=f"{model.config.name} on {config.dataset}")
    best = best_row(result.history)
    return TrainResult(
        run_dir=run_dir,
        last_checkpoint=run_dir / LAST_WEIGHTS,
        best_checkpoint=run_dir / BEST_WEIGHTS if best is not None else None,
        history=result.history,
        best_epoch=best["epoch"] if best is not None else None,
        best_metrics=_val_metrics(best) if best is not None else {},
        completed=result.completed,
        model=model,
        init_report=init_report,
        stopped_by=result.stopped_by,
        stopped_at=result.stopped_at,
    )


def _init_path(config: TrainConfig) -> Path | None:
    """The checkpoint ``--init`` names (a run directory means its last checkpoint)."""
    if config.init is None:
        return None
    init = Path(config.init)
    return init / LAST_WEIGHTS if init.is_dir() else init


def _initial_model(
    config: TrainConfig, run_dir: Path, resuming: bool, spec: InputSpec, num_classes: int, env: DistEnv
) -> tuple[nn.Module, str | None]:
    """The run's model and, for a new run with ``--init`` or ``--init-upernet``, what was loaded into it.

    A resumed run, or one initialised from a caswit-geo checkpoint, keeps the
    Swin window layout and stage norms of that checkpoint (older ones predate them).
    """
    overrides = config.model_overrides(spec.in_chans)
    if config.alpha is not None:
        overrides["alpha"] = config.alpha
        if config.alpha == 0:
            overrides["aux_head"] = False  # an untrained head would only cost time (and confuse DDP)
    init = _init_path(config)
    upernet = None
    if resuming and (run_dir / LAST_WEIGHTS).is_file():  # exported at every epoch's end (also by older versions)
        stored = read_meta(run_dir / LAST_WEIGHTS).model_config
        overrides.update(stored.behaviour(), decoder=stored.decoder, decoder_channels=stored.decoder_channels,
                         decoder_dim=stored.decoder_dim)
    elif init is not None:
        overrides.update(stored_behaviour(init))
    elif config.init_upernet is not None:
        upernet = read_upernet(config.init_upernet)
        if get_config(config.model, **overrides).decoder == "upernet":  # a SegFormer decoder starts fresh
            overrides["decoder_channels"] = upernet.decoder_channels
        check_upernet_fits(upernet, get_config(config.model, **overrides), "--init-upernet")
    model = build_model(config.model, num_classes=num_classes, backbone_weights=config.backbone_weights, **overrides)
    if resuming or (init is None and upernet is None):
        return model, None
    if init is not None:
        option = f"--init {init}"
        report = str(load_pretrained_backbone(model, init))
        _check_init_input(option, read_meta(init).input_spec, spec)
    else:
        option = f"--init-upernet {upernet.path}"
        report = str(transfer_upernet(model, upernet.state, upernet.format, str(upernet.path)))
        _check_init_input(option, upernet.input_spec(spec.tile_size), spec)
    if env.is_master:
        tqdm.write(f"{option}: {report}")
    return model, report


@torch.no_grad()
def validate(
    model: nn.Module, loader, class_weights: torch.Tensor | None, cm, env: DistEnv, precision: Precision
) -> tuple[float, int]:
    """Accumulate this rank's share of the split into ``cm``; returns (sum of batch HR losses, batches)."""
    model.eval()
    loss_sum, batches = 0.0, 0
    for batch in loader:
        hr, lr = batch["hr"].to(env.device, non_blocking=True), batch["lr"].to(env.device, non_blocking=True)
        label = batch["label"].to(env.device, non_blocking=True)
        with precision.autocast():
            logits = model(hr, lr)  # (B, K, T, T); eval mode: HR head only
        loss_sum += float(cross_entropy(logits, label, class_weights))
        batches += 1
        cm.update(label, logits.argmax(1))
    return loss_sum, batches


def best_row(history: list[dict]) -> dict | None:
    """The epoch of highest validation mIoU (first on ties); the last epoch without validation."""
    if not history:
        return None
    scored = [r for r in history if isinstance(r.get("val_miou"), float) and math.isfinite(r["val_miou"])]
    if not scored:
        return history[-1]
    return max(scored, key=lambda r: (r["val_miou"], -r["epoch"]))


def _val_metrics(row: dict) -> dict:
    keys = {"val_loss": "loss", "val_miou": "mIoU", "val_mf1": "mF1", "val_oa": "OA"}
    return {name: row[k] for k, name in keys.items() if k in row}


def _check(config: TrainConfig) -> None:
    if config.dataset == "vector":
        if not config.images or config.labels is None or config.class_field is None:
            raise ConfigError("--dataset vector needs --images, --labels and --class-field")
        if config.init is not None and config.init_upernet is not None:
            raise ConfigError("--init and --init-upernet: give one of them")
        return
    if config.dataset is None or config.root is None:
        raise ConfigError("--dataset and --root are required (or --resume RUN_DIR)")
    if config.init is not None and config.init_upernet is not None:
        raise ConfigError("--init and --init-upernet: give one of them")
    if config.dataset not in DATASETS:
        raise ConfigError(f"--dataset must be one of {', '.join(DATASETS)}, got {config.dataset!r}")
    if not Path(config.root).is_dir():
        raise ConfigError(f"--root {config.root}: folder not found")


def vector_source(config) -> VectorSource:
    """The vector data options of a train or eval config."""
    return VectorSource(
        images=tuple(str(p) for p in config.images), labels=Path(config.labels), class_field=config.class_field,
        labels_layer=config.labels_layer, areas=config.areas, split_field=config.split_field,
        areas_layer=config.areas_layer, background=config.background, classes=config.classes,
        val_fraction=config.val_fraction, skip_non_polygons=config.skip_non_polygons,
    )


def _vector_datasets(config: TrainConfig, tile: int):
    """The vector dataset's train and val splits (areas, or the block split), read once."""
    source = vector_source(config)
    images = resolve_images(source.images)  # files, URLs, STAC items: resolved (and probed) once
    scale = None
    if config.scale is None:
        scale = scale_for(mask(images.files[0]), describe_raster(images.files[0]).dtype)
    spec = run_input_spec(config, tile, None, scale)
    data = load_vector_data(source, spec.bands, tile, spec.context_factor, images=images)
    transform = Augment(spec) if config.augment else None
    train_set = VectorDataset(data, config.train_split, spec, random_crops=config.random_crops,
                              samples=config.crops_per_image, transform=transform)
    check_samples(train_set, spec, f"--images {mask(source.images[0])} ({config.train_split})")
    val_set = None
    if config.val_split is not None and config.val_split.lower() != "none" and config.val_split in data.regions:
        val_set = VectorDataset(data, config.val_split, spec, grid=True)
    elif config.val_split is not None and config.val_split.lower() != "none" and source.areas is not None:
        warnings.warn(f"--areas {source.areas}: no {config.val_split!r} area; training without validation",
                      stacklevel=2)
    tqdm.write(summary_line(data))
    warn_unused(data)
    return train_set, val_set, with_gsd(spec, train_set), data.classes


def _datasets(config: TrainConfig, tile: int):
    """(train set, val set or None, InputSpec, ClassTable) with the data's bands, scale and GSD."""
    if config.dataset == "vector":
        return _vector_datasets(config, tile)
    bands = scale = None
    root = Path(config.root)
    if config.dataset == "tiles":
        meta = load_tiles_meta(root)
        bands, scale = meta.bands, meta.scale
        if scale is None and config.scale is None:
            images = sorted(p for p in (root / "images").glob("*") if p.suffix.lower() in (".tif", ".tiff"))
            scale = scale_for(images[0]) if images else None
    else:
        scale = 255.0  # FLAIR-HUB and URUR are 8-bit RGB(I)
    spec = run_input_spec(config, tile, bands, scale, bands_source=root / "classes.json")
    common = dict(split_column=config.split_column) if config.split_column else {}
    common["allow_missing"] = config.allow_missing
    transform = Augment(spec) if config.augment else None
    train_set = build_dataset(config.dataset, root, config.train_split, spec, random_crops=config.random_crops,
                              crops_per_image=config.crops_per_image, transform=transform, **common)
    check_samples(train_set, spec, f"--root {root} ({config.train_split})")
    val_set = None
    if config.val_split is not None and config.val_split.lower() != "none":
        val_set = build_dataset(config.dataset, root, config.val_split, spec, **common)
    images = [p for ds in (train_set, val_set) for p in getattr(ds, "images", ())]  # FLAIR-HUB is 8-bit RGBI
    check_dtypes(images, spec, f"--root {root}")
    classes: ClassTable = train_set.classes
    if len(classes) == 0:
        raise ConfigError(f"--root {root}: no class table")
    return train_set, val_set, with_gsd(spec, train_set), classes


def split_coverage(train_set, val_set) -> dict:
    """``{"train": {...}, "val": {...}}``: patches (images) each split requested and used."""
    out = {}
    for name, dataset in (("train", train_set), ("val", val_set)):
        if dataset is not None and dataset.coverage is not None:
            out[name] = dataset.coverage.to_dict()
    return out


def coverage_line(splits: dict) -> str:
    """``data: train 150 of 150 requested, val 48 of 50 (2 missing: ...)``."""
    parts = []
    for name, c in splits.items():
        text = f"{name} {c['used']} of {c['requested']} requested ({c['source']})"
        if c["missing"]:
            text += f", {c['missing']} missing: {', '.join(c['missing_ids'][:3])}{', ...' if c['missing'] > 3 else ''}"
        parts.append(text)
    return "data: " + "; ".join(parts)


def _check_init_input(option: str, theirs: InputSpec, spec: InputSpec) -> None:
    """Warn when the initial weights saw differently normalised imagery than this run."""
    def normalised(s: InputSpec) -> tuple:  # what the network sees of a raw value: (x / scale - mean) / std
        return tuple(s.bands), tuple(round(m * s.scale, 4) for m in s.mean), tuple(round(d * s.scale, 4) for d in s.std)

    if normalised(theirs) != normalised(spec):
        warnings.warn(
            f"{option}: trained on bands {list(theirs.bands)}, scale {theirs.scale}, mean {list(theirs.mean)}, "
            f"std {list(theirs.std)}; this run uses {list(spec.bands)}, {spec.scale}, {list(spec.mean)}, {list(spec.std)}",
            stacklevel=3,
        )
