"""``eval``: run a checkpoint over a dataset split, or compare two class rasters.

:func:`evaluate` predicts every sample of a split (batched DataLoader, no
overlap, as the paper), accumulates one confusion matrix and the boundary
intersections/unions over the whole split, and scores them with the
dataset's protocol (``metrics.py``). Boundary IoU is computed on each T x T
prediction (a FLAIR-HUB patch, or a URUR/tiles grid tile), so d comes from
the tile diagonal (14 px at 512). :func:`evaluate_rasters` does the same
for a finished class raster against a reference raster, window by window
(T x T windows, so bIoU uses the same d), whatever the raster size.

Outputs in ``out_dir``: ``report.json``, ``confusion_matrix.csv`` and
``confusion_matrix.png``; with ``save_predictions`` the predicted class
rasters (uint8 GeoTIFF, colour table, nodata 255), one per FLAIR-HUB patch,
one per URUR/tiles image assembled tile by tile.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from tqdm import tqdm

from ..checkpoint import load_checkpoint
from ..data import build_dataset
from ..data.flairhub_splits import DEFAULT_SPLIT_COLUMN
from ..data.handles import open_raster
from ..data.sample import CaswitDataset
from ..data.tiles import read_classes_json
from ..device import CpuThreads, autocast_context, select_device
from ..errors import CheckpointError, ConfigError, InputError, OutputError
from ..geo.grid import TileGrid, clip_window
from ..geo.class_raster import AtomicRasterWriter, class_description
from ..metrics import BoundaryStats, ConfusionMatrix, Protocol, Scores, boundary_dilation, generic_protocol, protocol_for
from ..spec import IGNORE_INDEX, ClassTable, flairhub_classes, urur_classes
from ..weights import resolve_weights
from .eval_report import per_class_rows, plot_confusion, write_confusion_csv, write_json

REPORT_FILES = {"json": "report.json", "csv": "confusion_matrix.csv", "png": "confusion_matrix.png"}


@dataclass
class EvalConfig:
    """Settings of :func:`evaluate` (``weights``: a checkpoint path or a registry name)."""

    dataset: str  # "flairhub" | "urur" | "tiles"
    root: Path
    weights: str | Path | None
    split: str = "test"  # or, for flairhub, a .csv/.txt list of patch ids
    batch_size: int = 4
    device: str = "auto"
    workers: int = 2
    split_column: str = DEFAULT_SPLIT_COLUMN
    out_dir: Path | None = None  # default ./eval-<dataset>-<split>
    save_predictions: Path | None = None
    overwrite: bool = False
    amp: bool = True  # mixed precision on CUDA (no effect on the CPU)
    progress: bool = True
    cache_dir: Path | None = None  # flairhub patch-index cache


@dataclass
class EvalResult:
    """Scores (fractions in [0, 1], None = undefined), per-class rows, full confusion matrix."""

    metrics: dict[str, float | None]
    per_class: list[dict]
    confusion: np.ndarray  # (K, K) pixel counts, rows = ground truth
    protocol: str
    report: dict
    files: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------- outputs


def _report_paths(out_dir: Path | None, overwrite: bool) -> dict[str, Path]:
    if out_dir is None:
        return {}
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    paths = {k: out_dir / name for k, name in REPORT_FILES.items()}
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise OutputError(f"{p}: exists (use --overwrite to replace it)")
    return paths


def _write_reports(paths: dict[str, Path], report: dict, matrix: np.ndarray, classes: ClassTable, protocol: Protocol) -> None:
    if not paths:
        return
    try:
        paths["json"].parent.mkdir(parents=True, exist_ok=True)
        write_json(paths["json"], report)
        write_confusion_csv(paths["csv"], matrix, classes)
        plot_confusion(paths["png"], matrix, classes, protocol.eval_ids, f"confusion ({protocol.name}), rows normalised")
    except OSError as exc:
        raise OutputError(f"{paths['json'].parent}: cannot write the report ({exc})") from None


def _summary(scores: Scores) -> dict[str, float | None]:
    return {k: (None if np.isnan(v) else float(v)) for k, v in scores.summary().items()}


class PredictionSaver:
    """Writes each sample's (T, T) prediction into the class raster of its image, in dataset order.

    Rasters are single-band uint8 GeoTIFFs with nodata 255, colour table and
    class names (``geo.class_raster.AtomicRasterWriter``), renamed into place when complete.
    """

    def __init__(self, folder: Path, dataset: CaswitDataset, classes: ClassTable, overwrite: bool) -> None:
        self.folder = Path(folder)
        self.dataset = dataset
        self.classes = classes
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot create the predictions folder ({exc})") from None
        if not overwrite:
            for image_id in dataset.image_ids():
                if (self.folder / f"{image_id}.tif").exists():
                    raise OutputError(f"{self.folder / f'{image_id}.tif'}: exists (use --overwrite to replace it)")
        self._writer: AtomicRasterWriter | None = None
        self._current: str | None = None
        self._done: set[str] = set()
        self.written: list[Path] = []

    def add(self, index: int, pred: np.ndarray) -> None:
        geo = self.dataset.georef(index)
        if geo.image_id != self._current:
            self._finish()
            if geo.image_id in self._done:
                raise RuntimeError(f"samples of {geo.image_id} are not contiguous")
            tile = int(geo.window.width)
            self._writer = AtomicRasterWriter(
                self.folder / f"{geo.image_id}.tif", width=geo.width, height=geo.height, crs=geo.crs,
                transform=geo.transform, classes=self.classes, description=class_description(self.classes),
                # one block per tile: each tile write fills whole blocks, written once
                block=tile if tile % 16 == 0 else 256,
            )
            self._current = geo.image_id
        inside = clip_window(geo.window, geo.width, geo.height)
        r0, c0 = int(inside.row_off - geo.window.row_off), int(inside.col_off - geo.window.col_off)
        self._writer.write(inside, pred[r0 : r0 + int(inside.height), c0 : c0 + int(inside.width)])

    def _finish(self) -> None:
        if self._writer is not None:
            self.written.append(self._writer.commit())
            self._done.add(self._current)
            self._writer, self._current = None, None

    def close(self) -> None:
        self._finish()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


# ---------------------------------------------------------------- model evaluation


def _default_out_dir(config: EvalConfig) -> Path:
    split = Path(str(config.split)).stem if str(config.split).lower().endswith((".csv", ".txt")) else config.split
    return Path(f"eval-{config.dataset}-{split}")


def evaluate(config: EvalConfig) -> EvalResult:
    """Predict ``config.split`` with the checkpoint and score it with the dataset's protocol."""
    start = time.perf_counter()
    if config.batch_size < 1 or config.workers < 0:
        raise ConfigError("--batch-size must be >= 1 and --workers >= 0")
    paths = _report_paths(config.out_dir or _default_out_dir(config), config.overwrite)
    weights = resolve_weights(config.weights)
    device = select_device(config.device)
    model, meta = load_checkpoint(weights, device)
    if meta.kind != "segmentation":
        raise CheckpointError(f"{weights}: a {meta.kind} checkpoint has no segmentation head; fine-tune it with train first")
    spec = meta.input_spec
    dataset = build_dataset(
        config.dataset, config.root, config.split, spec, labels=True,
        split_column=config.split_column, cache_dir=config.cache_dir,
    )
    classes = dataset.classes
    num_model = model.config.num_classes
    if num_model > len(classes):
        raise ConfigError(
            f"{weights}: the model predicts {num_model} classes, the {config.dataset} data has {len(classes)}"
        )
    if meta.classes.names[: len(classes)] != classes.names[:num_model]:
        warnings.warn(f"{weights}: class names differ from the data's ({meta.classes.names[:3]}... vs {classes.names[:3]}...)", stacklevel=2)
    protocol = protocol_for(config.dataset, classes)

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )
    cm = ConfusionMatrix(len(classes))
    boundary = BoundaryStats(len(classes))
    saver = PredictionSaver(config.save_predictions, dataset, classes, config.overwrite) if config.save_predictions else None
    seen = 0
    try:
        with torch.inference_mode(), CpuThreads(device, config.workers):
            for batch in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not config.progress):
                hr = batch["hr"].to(device, non_blocking=True)  # (B, C, T, T)
                lr = batch["lr"].to(device, non_blocking=True)
                with autocast_context(device, config.amp):
                    logits = model(hr, lr)  # (B, K, T, T)
                pred = logits.argmax(1).to(torch.uint8).cpu().numpy()  # (B, T, T)
                label = batch["label"].numpy()
                cm.update(label, pred)
                boundary.update(label, pred, protocol.valid_mask(label, pred))
                if saver is not None:
                    for b in range(len(pred)):
                        saver.add(seen + b, pred[b])
                seen += len(pred)
    except BaseException:
        if saver is not None:
            saver.abort()
        raise
    if saver is not None:
        saver.close()

    scores = protocol.scores(cm, boundary)
    rows = per_class_rows(scores, classes)
    report = {
        "dataset": config.dataset,
        "root": str(config.root),
        "split": str(config.split),
        "protocol": protocol.name,
        "weights": str(weights),
        "model": meta.name,
        "tile_size": spec.tile_size,
        "context_factor": spec.context_factor,
        "bands": list(spec.bands),
        "samples": seen,
        "evaluated_pixels": int(scores.gt_pixels.sum()),
        "boundary": {"scope": "per T x T prediction", "dilation_px": boundary_dilation(spec.tile_size, spec.tile_size)},
        "metrics": _summary(scores),
        "classes": rows,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 3),
    }
    _write_reports(paths, report, cm.matrix, classes, protocol)
    files = dict(paths)
    if saver is not None:
        files["predictions"] = Path(config.save_predictions)
    return EvalResult(report["metrics"], rows, cm.matrix.copy(), protocol.name, report, files)


# ---------------------------------------------------------------- raster against raster


def _open_input(path: Path, role: str) -> rasterio.io.DatasetReader:
    src = open_raster(path, InputError, f"{role} raster")
    if src.count != 1:
        src.close()
        raise InputError(f"{path}: a class raster has 1 band, found {src.count}")
    if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
        src.close()
        raise InputError(f"{path}: class ids must be integers, found {src.dtypes[0]}")
    return src


def _check_same_grid(pred, ref) -> None:
    if (pred.width, pred.height) != (ref.width, ref.height):
        raise InputError(f"{pred.name}: {pred.width}x{pred.height} px, but the reference {ref.name} is {ref.width}x{ref.height}")
    if not pred.transform.almost_equals(ref.transform):
        raise InputError(f"{pred.name}: geotransform differs from the reference {ref.name}")
    if (pred.crs is None) != (ref.crs is None) or (pred.crs is not None and pred.crs != ref.crs):
        raise InputError(f"{pred.name}: CRS {pred.crs} differs from the reference's ({ref.crs}) {ref.name}")


def _read_ids(src, window, tile: int, num_classes: int) -> np.ndarray:
    """(T, T) int class ids of ``window``; 255 outside the raster and where masked (nodata)."""
    data = src.read(1, window=window, masked=True)
    ids = np.ma.filled(data.astype(np.int64), IGNORE_INDEX)
    bad = (ids != IGNORE_INDEX) & ((ids < 0) | (ids >= num_classes))
    if bad.any():
        raise InputError(f"{src.name}: value {int(ids[bad][0])} is not a class id 0..{num_classes - 1} nor 255")
    out = np.full((tile, tile), IGNORE_INDEX, np.int64)
    out[: ids.shape[0], : ids.shape[1]] = ids
    return out


def evaluate_rasters(
    pred_path: str | Path,
    ref_path: str | Path,
    *,
    classes: ClassTable | str | Path | None = None,
    dataset: str | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    tile_size: int = 512,
    progress: bool = False,
) -> EvalResult:
    """Score a class raster against a reference raster of the same grid.

    Args:
        pred_path: predicted class ids (e.g. ``predict``'s output; 255 = no prediction).
        ref_path: reference labels (255 or the raster's nodata = ignore).
        classes: a ClassTable or a ``classes.json`` path (generic protocol on
            its weighted classes); None = the ids found in the rasters.
        dataset: "flairhub" or "urur" to use that dataset's classes and protocol.
        out_dir: where to write report.json and the confusion matrix (None = nowhere).
        tile_size: windows of T x T px are read and scored in turn (bIoU per window).
    """
    paths = _report_paths(Path(out_dir) if out_dir is not None else None, overwrite)
    if dataset in ("flairhub", "urur"):
        table: ClassTable | None = flairhub_classes() if dataset == "flairhub" else urur_classes()
    elif dataset is not None:
        raise ConfigError(f"--dataset with --pred/--ref must be flairhub or urur, got {dataset!r}")
    elif isinstance(classes, ClassTable):
        table = classes
    elif classes is not None:
        table = read_classes_json(classes).classes
    else:
        table = None
    num = len(table) if table is not None else IGNORE_INDEX  # unknown: accumulate 0..254, trim after
    protocol = None if table is None else (protocol_for(dataset, table) if dataset else generic_protocol(table))
    with _open_input(Path(pred_path), "prediction") as pred, _open_input(Path(ref_path), "reference") as ref:
        _check_same_grid(pred, ref)
        cm = ConfusionMatrix(num)
        boundary = BoundaryStats(num)
        grid = TileGrid(ref.width, ref.height, tile_size)
        for _, _, window in tqdm(grid.windows(), total=len(grid), desc="eval", unit="tile", leave=False, disable=not progress):
            inside = clip_window(window, ref.width, ref.height)
            p = _read_ids(pred, inside, tile_size, num)  # (T, T)
            r = _read_ids(ref, inside, tile_size, num)
            cm.update(r, p)
            boundary.update(r, p, None if protocol is None else protocol.valid_mask(r, p))
    if protocol is None:
        # every id found is a class: keep 0..max id
        used = np.flatnonzero(cm.matrix.sum(0) + cm.matrix.sum(1))
        k = int(used.max()) + 1 if used.size else 1
        table = ClassTable.generic(k)
        protocol = generic_protocol(table)
        trimmed, tb = ConfusionMatrix(k), BoundaryStats(k)
        trimmed.matrix, trimmed.unpredicted = cm.matrix[:k, :k].copy(), cm.unpredicted
        tb.intersection, tb.union = boundary.intersection[:k].copy(), boundary.union[:k].copy()
        cm, boundary = trimmed, tb
    scores = protocol.scores(cm, boundary)
    rows = per_class_rows(scores, table)
    report = {
        "pred": str(pred_path),
        "ref": str(ref_path),
        "protocol": protocol.name,
        "tile_size": tile_size,
        "evaluated_pixels": int(scores.gt_pixels.sum()),
        "unpredicted_pixels": int(cm.unpredicted),
        "boundary": {"scope": "per T x T window", "dilation_px": boundary_dilation(tile_size, tile_size)},
        "metrics": _summary(scores),
        "classes": rows,
    }
    _write_reports(paths, report, cm.matrix, table, protocol)
    return EvalResult(report["metrics"], rows, cm.matrix.copy(), protocol.name, report, dict(paths))
