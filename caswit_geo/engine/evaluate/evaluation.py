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

import contextlib
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from tqdm import tqdm

from caswit_geo.core.errors import CheckpointError, ConfigError, InputError, OutputError
from caswit_geo.core.limits import Text, bounded, check_number, check_settings
from caswit_geo.core.spec import IGNORE_INDEX, ClassTable, flairhub_classes, urur_classes
from caswit_geo.data import build_dataset
from caswit_geo.data.flairhub_splits import DEFAULT_SPLIT_COLUMN
from caswit_geo.data.open_raster import open_raster
from caswit_geo.data.sample import CaswitDataset
from caswit_geo.data.tiles import read_classes_json
from caswit_geo.data.vector import VectorDataset, VectorSource, load_vector_data, summary_line
from caswit_geo.engine.evaluate.metrics import (
    BoundaryStats,
    ConfusionMatrix,
    Protocol,
    Scores,
    boundary_dilation,
    generic_protocol,
    protocol_for,
)
from caswit_geo.engine.evaluate.report import per_class_rows, plot_confusion, write_confusion_csv, write_json
from caswit_geo.engine.evaluate.vector_reference import VectorReference, is_vector
from caswit_geo.geo.class_raster import AtomicRasterWriter, class_description, map_legend
from caswit_geo.geo.grid import TileGrid, clip_window
from caswit_geo.geo.qgis_style import paletted_qml, style_path
from caswit_geo.model.checkpoint import load_checkpoint, read_meta
from caswit_geo.model.weights import resolve_weights
from caswit_geo.runtime.device import CpuThreads, select_device, stop_workers
from caswit_geo.runtime.precision import PRECISIONS, Precision, prepare_inference, resolve_precision
from caswit_geo.safeio.outputs import OutputSet

REPORT_FILES = {"json": "report.json", "csv": "confusion_matrix.csv", "png": "confusion_matrix.png"}

# windows of T x T px are scored in turn, each with a read and a bIoU erosion (about a millisecond
# when small): a bound on their number keeps a tiny --tile-size on a large map from running for hours
MAX_EVAL_WINDOWS = 200_000


@dataclass
class EvalConfig:
    """Settings of :func:`evaluate` (``weights``: a checkpoint path or a registry name)."""

    dataset: str  # "flairhub" | "urur" | "tiles" | "vector"
    root: Path | None
    weights: str | Path | None
    split: str = "test"  # or, for flairhub, a .csv/.txt list of patch ids
    batch_size: int = bounded(4, ge=1)
    device: str = "auto"
    workers: int = bounded(2, ge=0)
    split_column: str = DEFAULT_SPLIT_COLUMN
    out_dir: Path | None = None  # default ./eval-<dataset>-<split>
    save_predictions: Path | None = None
    overwrite: bool = False
    precision: str = bounded("auto", Text(choices=PRECISIONS))  # see precision.py
    progress: bool = True
    cache_dir: Path | None = None  # flairhub patch-index cache
    allow_missing: bool = False  # score the patches found when the split lists missing ones (recorded in the report)
    vector: VectorSource | None = None  # dataset "vector": imagery, label polygons, areas


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


def _add_reports(outs: OutputSet, out_dir: Path | None) -> dict[str, Path]:
    """Declare report.json and the confusion matrix CSV/PNG in ``out_dir`` (created at commit)."""
    if out_dir is None:
        return {}
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out-dir {out_dir}: exists and is not a folder")
    return {k: outs.add(out_dir / name, "--out-dir", create_parents=True) for k, name in REPORT_FILES.items()}


def _write_reports(outs: OutputSet, paths: dict[str, Path], report: dict, matrix: np.ndarray, classes: ClassTable,
                   protocol: Protocol) -> None:
    """Write the reports under their temporary names (they appear with :meth:`OutputSet.commit`)."""
    if not paths:
        return
    try:
        write_json(outs.temp(paths["json"]), report)
        write_confusion_csv(outs.temp(paths["csv"]), matrix, classes)
        plot_confusion(outs.temp(paths["png"]), matrix, classes, protocol.eval_ids,
                       f"confusion ({protocol.name}), rows normalised")
    except OSError as exc:
        raise OutputError(f"{paths['json'].parent}: cannot write the report ({exc})") from None


def split_record(dataset: CaswitDataset) -> dict:
    """``{"split_coverage": {...}}``: how many patches/images the split requested and how many were scored."""
    if dataset.coverage is None:
        return {}
    record = dataset.coverage.to_dict()
    return {"split_coverage": {"source": record["source"], "requested": record["requested"],
                               "evaluated": record["used"], "missing": record["missing"],
                               "missing_ids": record["missing_ids"]}}


def _summary(scores: Scores) -> dict[str, float | None]:
    return {k: (None if np.isnan(v) else float(v)) for k, v in scores.summary().items()}


class PredictionSaver:
    """Writes each sample's (T, T) prediction into the class raster of its image, in dataset order.

    Rasters are single-band uint8 GeoTIFFs with nodata 255, colour table and
    class names (``geo.class_raster.AtomicRasterWriter``), a ``.aux.xml`` legend and a
    QGIS style ``<id>.qml`` listing exactly the classes (``geo.qgis_style``).
    Every one is declared in ``outs`` when the saver is built (an existing
    file needs ``--overwrite``, an input is never replaced) and written under
    a temporary name; they all appear when ``outs`` commits, with the reports.
    """

    def __init__(self, outs: OutputSet, folder: Path, dataset: CaswitDataset, classes: ClassTable) -> None:
        self.outs = outs
        self.folder = Path(folder)
        self.dataset = dataset
        self.classes = classes
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"--save-predictions {self.folder}: exists and is not a folder")
        outs.claim(self.folder, "--save-predictions")
        for image_id in dataset.image_ids():
            tif = self.folder / f"{image_id}.tif"
            outs.add(tif, "--save-predictions", claim=False, create_parents=True)
            outs.add(_legend(tif), "--save-predictions", claim=False, create_parents=True, clear=True)
            outs.add(style_path(tif), "--save-predictions", claim=False, create_parents=True, clear=True)
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
            tif = self.folder / f"{geo.image_id}.tif"
            self._writer = AtomicRasterWriter(  # onto the output set's temporaries: they appear at its commit
                self.outs.temp(tif), legend=self.outs.temp(_legend(tif)), width=geo.width, height=geo.height,
                crs=geo.crs, transform=geo.transform, classes=self.classes,
                description=class_description(self.classes),
                # one block per tile: each tile write fills whole blocks, written once
                block=tile if tile % 16 == 0 else 256,
            )
            self._current = geo.image_id
        inside = clip_window(geo.window, geo.width, geo.height)
        r0, c0 = int(inside.row_off - geo.window.row_off), int(inside.col_off - geo.window.col_off)
        self._writer.write(inside, pred[r0 : r0 + int(inside.height), c0 : c0 + int(inside.width)])

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.commit()  # complete, still under the output set's temporary names
            self.outs.temp(style_path(self.folder / f"{self._current}.tif")).write_text(paletted_qml(self.classes))
            self.written.append(self.folder / f"{self._current}.tif")
            self._done.add(self._current)
            self._writer, self._current = None, None

    def close(self) -> None:
        self._finish()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def _legend(tif: Path) -> Path:
    return Path(f"{tif}.aux.xml")


# ---------------------------------------------------------------- model evaluation


def _default_out_dir(config: EvalConfig) -> Path:
    split = Path(str(config.split)).stem if str(config.split).lower().endswith((".csv", ".txt")) else config.split
    return Path(f"eval-{config.dataset}-{split}")


def evaluate(config: EvalConfig) -> EvalResult:
    """Predict ``config.split`` with the checkpoint and score it with the dataset's protocol.

    Outputs (reports, predictions) are declared before the model runs and
    appear together at the end, or not at all (:class:`~caswit_geo.safeio.outputs.OutputSet`).
    """
    start = time.perf_counter()
    check_settings(config)
    weights = resolve_weights(config.weights)
    meta = read_meta(weights)
    if meta.kind != "segmentation":
        raise CheckpointError(f"{weights}: a {meta.kind} checkpoint has no segmentation head; fine-tune it with train first")
    spec = meta.input_spec
    if config.dataset == "vector":
        dataset = _vector_split(config, spec, meta.classes)
    else:
        dataset = build_dataset(
            config.dataset, config.root, config.split, spec, labels=True,
            split_column=config.split_column, cache_dir=config.cache_dir, allow_missing=config.allow_missing,
        )
    classes = dataset.classes
    num_model = meta.model_config.num_classes
    if num_model > len(classes):
        raise ConfigError(
            f"{weights}: the model predicts {num_model} classes, the {config.dataset} data has {len(classes)}"
        )
    if meta.classes.names[: len(classes)] != classes.names[:num_model]:
        warnings.warn(f"{weights}: class names differ from the data's ({meta.classes.names[:3]}... vs {classes.names[:3]}...)", stacklevel=2)
    protocol = protocol_for(config.dataset, classes)
    with OutputSet(overwrite=config.overwrite, inputs=[weights, *dataset.input_files()]) as outs:
        paths = _add_reports(outs, config.out_dir or _default_out_dir(config))
        saver = PredictionSaver(outs, config.save_predictions, dataset, classes) if config.save_predictions else None
        device = select_device(config.device)
        model, meta = load_checkpoint(weights, device)
        precision = resolve_precision(config.precision, device, model, model_name=meta.name)
        prepare_inference(model, precision)
        cm, boundary, seen = _predict_split(model, dataset, protocol, saver, device, precision, config)
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
            **split_record(dataset),
            "evaluated_pixels": int(scores.gt_pixels.sum()),
            "boundary": {"scope": "per T x T prediction", "dilation_px": boundary_dilation(spec.tile_size, spec.tile_size)},
            "metrics": _summary(scores),
            "classes": rows,
            "device": str(device),
            "precision": precision.name,
            "precision_reason": precision.reason,
            "seconds": round(time.perf_counter() - start, 3),
        }
        _write_reports(outs, paths, report, cm.matrix, classes, protocol)
        outs.commit()
    files = dict(paths)
    if saver is not None:
        files["predictions"] = Path(config.save_predictions)
    return EvalResult(report["metrics"], rows, cm.matrix.copy(), protocol.name, report, files)


def _vector_split(config: EvalConfig, spec, checkpoint_classes: ClassTable) -> VectorDataset:
    """The split's areas of the vector data, whole, on the mosaic's tile grid; classes matched to the checkpoint's."""
    source = config.vector
    if source is None:
        raise ConfigError("--dataset vector needs --images, --labels and --class-field")
    if source.areas is None and config.split == "test":
        raise ConfigError("--dataset vector --split test needs --areas with test areas (the block split has none)")
    table = read_classes_json(source.classes).classes if source.classes is not None else checkpoint_classes
    data = load_vector_data(source, spec.bands, spec.tile_size, spec.context_factor, table=table)
    if config.progress:
        tqdm.write(summary_line(data))
    return VectorDataset(data, str(config.split), spec, grid=True)


def _predict_split(model, dataset, protocol: Protocol, saver: PredictionSaver | None, device, precision: Precision,
                   config: EvalConfig):
    """Confusion matrix and boundary statistics of the whole split (predictions to ``saver``)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )
    cm = ConfusionMatrix(len(dataset.classes))
    boundary = BoundaryStats(len(dataset.classes))
    seen = 0
    batches = iter(loader)
    try:
        with torch.inference_mode(), CpuThreads(device, config.workers):
            for batch in tqdm(batches, total=len(loader), desc="eval", unit="batch", leave=False,
                              disable=not config.progress):
                hr = batch["hr"].to(device, non_blocking=True)  # (B, C, T, T)
                lr = batch["lr"].to(device, non_blocking=True)
                with precision.autocast():
                    logits = model(hr, lr)  # (B, K, T, T)
                pred = logits.argmax(1).to(torch.uint8).cpu().numpy()  # (B, T, T)
                label = batch["label"].numpy()
                cm.update(label, pred)
                boundary.update(label, pred, protocol.valid_mask(label, pred))
                if saver is not None:
                    for b in range(len(pred)):
                        saver.add(seen + b, pred[b])
                seen += len(pred)
        if saver is not None:
            saver.close()
    except BaseException:
        if saver is not None:
            saver.abort()
        raise
    finally:
        stop_workers(batches)
    return cm, boundary, seen


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


def _read_ids(src, window, tile: int, num_classes: int, stray: Counter) -> np.ndarray:
    """(T, T) int class ids of ``window``; 255 outside the raster and where masked (nodata).

    Values that are no class id are counted in ``stray`` (by file and value) and left out.
    """
    data = src.read(1, window=window, masked=True)
    ids = np.ma.filled(data.astype(np.int64), IGNORE_INDEX)
    bad = (ids != IGNORE_INDEX) & ((ids < 0) | (ids >= num_classes))
    if bad.any():
        values, counts = np.unique(ids[bad], return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            stray[(src.name, value)] += count
        ids[bad] = IGNORE_INDEX
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
    allow_gaps: bool = False,
    progress: bool = False,
    vector: dict | None = None,
) -> EvalResult:
    """Score a class raster against a reference raster of the same grid, or against polygons.

    A pixel the reference labels but the prediction leaves empty (255 or
    nodata) is an error (:class:`InputError` naming the file and the count)
    unless ``allow_gaps``, which scores it as wrong (a false negative of its
    reference class); the report gives the coverage either way.

    Args:
        pred_path: predicted class ids (e.g. ``predict``'s output; 255 = no prediction).
        ref_path: reference labels (255 or the raster's nodata = ignore).
        classes: a ClassTable or a ``classes.json`` path (generic protocol on
            its weighted classes); None = the ids found in the rasters.
        dataset: "flairhub" or "urur" to use that dataset's classes and protocol.
        out_dir: where to write report.json and the confusion matrix (None = nowhere).
        tile_size: windows of T x T px are read and scored in turn (bIoU per window).
        allow_gaps: score unpredicted reference pixels as errors instead of refusing.
        vector: a polygon reference (``ref_path`` a vector file): ``field``, and optionally
            ``layer``, ``areas``, ``areas_layer``, ``background``, ``skip_non_polygons``
            (:class:`~caswit_geo.engine.evaluate.vector_reference.VectorReference`).
    """
    check_number("--tile-size", tile_size, ge=1, le=4096)  # windows of T x T px, T^2 int64 arrays
    inputs = [pred_path, ref_path] + ([classes] if isinstance(classes, (str, Path)) else [])
    if vector is not None and vector.get("areas") is not None:
        inputs.append(vector["areas"])
    with OutputSet(overwrite=overwrite, inputs=inputs) as outs:
        paths = _add_reports(outs, Path(out_dir) if out_dir is not None else None)
        result = _score_rasters(Path(pred_path), Path(ref_path), classes, dataset, tile_size, allow_gaps, progress,
                                vector)
        _write_reports(outs, paths, result.report, result.confusion, result.table, result.protocol_obj)
        outs.commit()
    return EvalResult(result.report["metrics"], result.per_class, result.confusion, result.protocol_obj.name,
                      result.report, dict(paths))


@contextlib.contextmanager
def _reference(ref_path: Path, pred, table: ClassTable | None, vector: dict | None):
    """The reference: an open raster, or polygons burnt on the map's grid (classes: ``table``, else the map's)."""
    if vector is None and not is_vector(ref_path):
        with _open_input(ref_path, "reference") as ref:
            yield ref
        return
    vector = dict(vector or {})
    yield VectorReference(ref_path, vector.pop("field", None), pred, table=table or map_legend(pred), **vector)


@dataclass
class _RasterScores:
    report: dict
    per_class: list[dict]
    confusion: np.ndarray
    table: ClassTable
    protocol_obj: Protocol


def _score_rasters(pred_path: Path, ref_path: Path, classes, dataset, tile_size: int, allow_gaps: bool,
                   progress: bool, vector: dict | None = None) -> _RasterScores:
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
    legend = "--dataset " + dataset if dataset else "--classes" if table is not None else None
    with contextlib.ExitStack() as stack:
        pred = stack.enter_context(_open_input(pred_path, "prediction"))
        if table is None:  # a caswit-geo map names its classes: score against its own legend
            table = map_legend(pred)
            legend = f"the legend of {pred_path}" if table is not None else None
        ref = stack.enter_context(_reference(ref_path, pred, table, vector))
        if isinstance(ref, VectorReference):
            table = ref.classes
        else:
            _check_same_grid(pred, ref)
        num = len(table) if table is not None else IGNORE_INDEX  # unknown: accumulate 0..254, trim after
        protocol = None if table is None else (protocol_for(dataset, table) if dataset else generic_protocol(table))
        cm = ConfusionMatrix(num)
        boundary = BoundaryStats(num)
        stray: Counter = Counter()
        grid = TileGrid(pred.width, pred.height, tile_size)
        if len(grid) > MAX_EVAL_WINDOWS:
            least = math.ceil(math.sqrt(pred.width * pred.height / MAX_EVAL_WINDOWS))
            raise ConfigError(f"--tile-size {tile_size}: {len(grid):,} windows over the {pred.width}x{pred.height} px "
                              f"of {ref_path}, more than {MAX_EVAL_WINDOWS:,}; use --tile-size {least} or more")
        for _, _, window in tqdm(grid.windows(), total=len(grid), desc="eval", unit="tile", leave=False, disable=not progress):
            inside = clip_window(window, pred.width, pred.height)
            p = _read_ids(pred, inside, tile_size, num, stray)  # (T, T)
            r = (ref.read(inside, tile_size) if isinstance(ref, VectorReference)
                 else _read_ids(ref, inside, tile_size, num, stray))
            cm.update(r, p)
            boundary.update(r, p, None if protocol is None else protocol.valid_mask(r, p))
    if stray:
        (name, value), count = max(stray.items(), key=lambda item: item[1])
        others = len(stray) - 1
        more = f"; {others} other stray value{'s' if others > 1 else ''}" if others else ""
        of = f"a class of {legend}" if legend else "a class id"
        raise InputError(f"{name}: value {value} on {count:,} px is not {of} (ids 0..{num - 1}, 255 = no data){more}")
    labelled = cm.total + cm.unpredicted
    coverage = cm.total / labelled if labelled else None
    if cm.unpredicted and not allow_gaps:
        raise InputError(
            f"--pred {pred_path}: {cm.unpredicted:,} of the {labelled:,} pixels the reference labels have no "
            f"prediction (255 or nodata; coverage {100 * coverage:.2f} %); pass --allow-gaps to score them as errors"
        )
    if protocol is None:
        # every id found is a class: keep 0..max id
        used = np.flatnonzero(cm.matrix.sum(0) + cm.matrix.sum(1) + cm.unpredicted_by_class)
        k = int(used.max()) + 1 if used.size else 1
        table = ClassTable.generic(k)
        protocol = generic_protocol(table)
        trimmed, tb = ConfusionMatrix(k), BoundaryStats(k)
        trimmed.matrix = cm.matrix[:k, :k].copy()
        trimmed.unpredicted_by_class = cm.unpredicted_by_class[:k].copy()
        tb.intersection, tb.union = boundary.intersection[:k].copy(), boundary.union[:k].copy()
        cm, boundary = trimmed, tb
    scores = protocol.scores(cm, boundary, gaps=cm.unpredicted_by_class if allow_gaps else None)
    rows = per_class_rows(scores, table)
    report = {
        "pred": str(pred_path),
        "ref": str(ref_path),
        "protocol": protocol.name,
        "tile_size": tile_size,
        "evaluated_pixels": int(scores.gt_pixels.sum()),
        "unpredicted_pixels": int(cm.unpredicted),
        "coverage": coverage,  # share of the reference's labelled pixels that have a prediction
        "gaps_scored_as_errors": bool(allow_gaps),
        "boundary": {"scope": "per T x T window", "dilation_px": boundary_dilation(tile_size, tile_size)},
        "metrics": _summary(scores),
        "classes": rows,
    }
    return _RasterScores(report, rows, cm.matrix.copy(), table, protocol)
