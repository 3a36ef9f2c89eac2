"""Training and evaluation from the labels users have: a mosaic, label polygons, labelled areas.

The imagery is any input of ``predict`` (files, folders, globs, URLs, GDAL
network names, STAC items: ``geo/inputs.py``), read as one mosaic
(``geo/mosaic.py``); remote ones are read with predict's GDAL options
(``geo/remote.py``) in every process that reads them. Each tile's HR window
and LR context come from that mosaic by predict's own code
(``geo/context.py``), so the context of a tile is the imagery around it,
never the black padding of a cut tile.

Labels are polygons with a class field (``geo/vector_layers.py``), read
once, reprojected to the mosaic's CRS once, and burnt per tile window by
the pixel-centre rule, the later polygon winning (``geo/polygon_raster.py``).
A pixel is labelled when it lies in an area of the split; there it takes
the class of the polygon under it, or ``--background``, or 255 without it.
Outside the split's areas, and where the imagery is nodata, it is 255. LR
labels follow the tiles rule: 255 unless the whole ``k x k`` block is valid
imagery.

Areas (``--areas``) carry a split field (train, val, test). Without them the
imagery's extent is labelled and cut into square blocks of ``2 k T`` px,
each drawn into val with probability about ``val_fraction`` (a fixed
permutation: the same blocks every run); a training tile is kept only when
its whole context window meets no block of another split.

Training tiles are drawn among positions on a ``T/4`` px lattice whose HR
window lies at least ``min_labelled`` inside the split's areas (computed on
the area polygons, not pixel by pixel). Validation and evaluation tiles are
the mosaic's tile grid (stride T, as predict) wherever it meets an area of
the split: each area is covered whole.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
import shapely
import torch
from affine import Affine
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.core.spec import IGNORE_INDEX, ClassTable, InputSpec
from caswit_geo.data.sample import CaswitDataset, SampleGeo
from caswit_geo.data.tiles import read_classes_json
from caswit_geo.data.vector_classes import class_ids
from caswit_geo.geo.context import read_tile_context_valid
from caswit_geo.geo.grid import TileGrid, context_window
from caswit_geo.geo.inputs import Inputs, resolve_inputs
from caswit_geo.geo.masks import MaskRule, mask_rule
from caswit_geo.geo.mosaic import Mosaic, expand_inputs, open_mosaic
from caswit_geo.geo.polygon_raster import PolygonIndex, grid_bounds, lowres_transform, window_transform
from caswit_geo.geo.remote import clear_connections_at_forks, gdal_remote_options, mask
from caswit_geo.geo.sources import source_files
from caswit_geo.geo.vector_layers import read_polygons
from caswit_geo.geo.webmap import service_kind

SPLITS = ("train", "val", "test")
LATTICE_DIVISOR = 4  # training positions every T/4 px


@dataclass(frozen=True)
class VectorSource:
    """Where the imagery, labels and areas are, and how to read them (the CLI's data options).

    Args:
        images: predict inputs (files, folders, globs, URLs, STAC items), one mosaic.
        labels: polygon file (GeoPackage, GeoJSON, Shapefile, FlatGeobuf...).
        class_field: the labels' field holding the class (text or integer).
        labels_layer: the labels' layer (None: the file's first).
        areas: polygons where labelling is complete, with ``split_field`` (None: the imagery, block split).
        split_field: the areas' field: train, val or test.
        areas_layer: the areas' layer.
        background: class name of labelled pixels under no polygon (None: ignored).
        classes: ``classes.json`` naming the classes (None: the field's values).
        val_fraction: without areas, the share of blocks that validate.
        skip_non_polygons: leave points and lines out (counted) instead of refusing the file.
        min_labelled: training tiles lie at least this much inside the split's areas.
    """

    images: tuple[str, ...]
    labels: Path
    class_field: str
    labels_layer: str | None = None
    areas: Path | None = None
    split_field: str = "split"
    areas_layer: str | None = None
    background: str | None = None
    classes: Path | None = None
    val_fraction: float = 0.2
    skip_non_polygons: bool = False
    min_labelled: float = 0.25

    def input_files(self) -> list[Path]:
        """The local files read (no output may replace one): labels, areas, classes, images (a VRT's sources)."""
        files = [Path(self.labels)] + [Path(p) for p in (self.areas, self.classes) if p is not None]
        return files + [f for p in expand_inputs(list(self.images)) for f in source_files(p)]


def resolve_images(images) -> Inputs:
    """The rasters of ``--images``, as predict resolves its inputs (remote ones probed, named masked)."""
    inputs = resolve_inputs(list(images))
    for name in inputs.files:
        if service_kind(name):
            raise InputError(f"--images {mask(name)}: a web map service is read by predict, around a region; "
                             "train from the imagery's files or URLs")
    return inputs


@dataclass
class VectorData:
    """Everything read once and shared by the splits: mosaic, indexed labels, split regions, classes."""

    source: VectorSource
    mosaic: Mosaic
    labels: PolygonIndex
    classes: ClassTable
    background: int | None
    regions: dict[str, np.ndarray]  # split -> area polygons in the mosaic's CRS
    blocks: bool  # regions are the block split (training contexts kept inside their split)
    summary: dict = field(default_factory=dict)
    images: list[str | Path] = field(default_factory=list)  # the mosaic's files (URLs as GDAL names)

    def region_index(self, split: str) -> PolygonIndex:
        geoms = self.regions.get(split)
        if geoms is None or len(geoms) == 0:
            where = f"--areas {self.source.areas}" if self.source.areas else "the block split"
            raise InputError(f"{where}: no {split!r} area on the imagery (empty split)")
        return PolygonIndex(geoms, np.ones(len(geoms), np.uint8))


def load_vector_data(source: VectorSource, bands: tuple[int, ...], tile: int, factor: int,
                     table: ClassTable | None = None, images: Inputs | None = None) -> VectorData:
    """Open the mosaic, read and index the labels and areas (once), check them, make the class table.

    ``table``: the classes the values must belong to (a checkpoint's, when evaluating);
    else ``source.classes``, else the field's values. ``images``: ``source.images``
    already resolved (:func:`resolve_images`).
    """
    images = images or resolve_images(source.images)
    mosaic = open_mosaic(images.files, bands)
    if mosaic.crs is None:
        raise InputError(f"--images {mask(source.images[0])}: the imagery has no CRS; polygons cannot be placed on it")
    layer = read_polygons(source.labels, source.class_field, mosaic.crs, layer=source.labels_layer,
                          skip_non_polygons=source.skip_non_polygons)
    where = f"--labels {source.labels}, field {source.class_field!r}"
    table_source = "the class table"
    if table is None and source.classes is not None:
        table, table_source = read_classes_json(source.classes).classes, str(source.classes)
    classes, ids, background = class_ids(layer.values, table, source.background, where, table_source)
    labels = PolygonIndex(layer.geoms, ids)
    extent = shapely.box(*mosaic_bounds(mosaic))
    if not shapely.intersects(extent, shapely.box(*layer.bounds())):
        raise InputError(f"--labels {source.labels}: no polygon meets the imagery (check the CRS of both)")
    summary = {
        "polygons": len(layer),
        "overlapping_pairs": labels.overlapping_pairs(),
        "repaired": layer.repaired,
        "skipped_non_polygons": layer.skipped,
        "polygons_per_class": {classes.names[i]: int(n) for i, n in enumerate(np.bincount(ids, minlength=len(classes))) if n},
        "input_notes": images.notes,  # which STAC assets were taken
    }
    if source.areas is not None:
        regions, outside = read_split_areas(source, mosaic, extent)
        summary["areas_outside_imagery"] = outside
        blocks = False
    else:
        regions = block_split(mosaic, tile, factor, source.val_fraction)
        blocks = True
    summary["areas"] = {s: len(g) for s, g in regions.items()}
    return VectorData(source, mosaic, labels, classes, background, regions, blocks, summary, images.files)


def mosaic_bounds(mosaic: Mosaic) -> tuple[float, float, float, float]:
    return grid_bounds(mosaic.transform, mosaic.height, mosaic.width)


def read_split_areas(source: VectorSource, mosaic: Mosaic, extent) -> tuple[dict[str, np.ndarray], int]:
    """{split: area polygons meeting the imagery}, and how many areas miss it."""
    areas = read_polygons(source.areas, source.split_field, mosaic.crs, layer=source.areas_layer, option="--areas")
    where = f"--areas {source.areas}, field {source.split_field!r}"
    values = np.asarray([str(v).strip() for v in areas.values], dtype=object)
    bad = sorted(set(values.tolist()) - set(SPLITS))
    if bad:
        n = int((values == bad[0]).sum())
        raise InputError(f"{where}: value {bad[0]!r} ({n:,} areas) is not a split (train, val, test)")
    meets = shapely.intersects(areas.geoms, extent) & (shapely.area(shapely.intersection(areas.geoms, extent)) > 0)
    if not meets.any():
        raise InputError(f"--areas {source.areas}: no area meets the imagery (check the CRS of both)")
    regions = {s: areas.geoms[meets & (values == s)] for s in SPLITS}
    return {s: g for s, g in regions.items() if len(g)}, int((~meets).sum())


def block_split(mosaic: Mosaic, tile: int, factor: int, val_fraction: float) -> dict[str, np.ndarray]:
    """Square blocks of ``2 k T`` px over the mosaic, a fixed share drawn into val (the rest train)."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    side = 2 * factor * tile
    rows, cols = -(-mosaic.height // side), -(-mosaic.width // side)
    n = rows * cols
    n_val = 0 if val_fraction == 0 else max(1, int(round(val_fraction * n)))
    if n_val >= n:
        raise InputError(
            f"--images: the imagery holds {n} block(s) of {side} px (2 x context factor x tile); too small to "
            "split into train and val: give --areas with a split field, or --val-fraction 0"
        )
    order = np.random.default_rng(20240601).permutation(n)  # fixed: the same split every run
    is_val = np.zeros(n, bool)
    is_val[order[:n_val]] = True
    boxes = {"train": [], "val": []}
    t = mosaic.transform
    for b in range(n):
        r, c = divmod(b, cols)
        x0, y0 = t * (c * side, r * side)
        x1, y1 = t * (min((c + 1) * side, mosaic.width), min((r + 1) * side, mosaic.height))
        boxes["val" if is_val[b] else "train"].append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    return {s: np.asarray(g, dtype=object) for s, g in boxes.items() if g}


def _pixel_boxes(transform: Affine, windows: np.ndarray) -> np.ndarray:
    """Boxes in CRS units of (N, 4) windows (col, row, width, height)."""
    c0, r0 = windows[:, 0].astype(float), windows[:, 1].astype(float)
    c1, r1 = c0 + windows[:, 2], r0 + windows[:, 3]
    xa, ya = transform * (c0, r0)
    xb, yb = transform * (c1, r1)
    return shapely.box(np.minimum(xa, xb), np.minimum(ya, yb), np.maximum(xa, xb), np.maximum(ya, yb))


def training_positions(data: VectorData, split: str, tile: int, factor: int) -> np.ndarray:
    """(N, 2) (row, col) of the training tiles: lattice positions at least ``min_labelled`` inside the areas."""
    region = shapely.union_all(data.region_index(split).geoms)
    m = data.mosaic
    step = max(tile // LATTICE_DIVISOR, 1)
    inv = ~m.transform
    left, bottom, right, top = shapely.bounds(region)
    cs, rs = zip(*(inv * xy for xy in ((left, top), (right, bottom), (left, bottom), (right, top))))
    # HR windows inside the imagery (as the tiles dataset's random crops) when it is at least T wide and high
    c_lo, c_hi = max(int(np.floor(min(cs))) - tile, 0), min(int(np.ceil(max(cs))), max(m.width - tile, 0))
    r_lo, r_hi = max(int(np.floor(min(rs))) - tile, 0), min(int(np.ceil(max(rs))), max(m.height - tile, 0))
    cols = np.arange(c_lo - c_lo % step, c_hi + 1, step)
    rows = np.arange(r_lo - r_lo % step, r_hi + 1, step)
    if cols.size == 0 or rows.size == 0:
        return np.zeros((0, 2), np.int64)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    windows = np.column_stack([cc, rr, np.full_like(cc, tile), np.full_like(cc, tile)])
    boxes = _pixel_boxes(m.transform, windows)
    shapely.prepare(region)
    near = shapely.intersects(region, boxes)
    inside = np.zeros(len(boxes))
    inside[near] = shapely.area(shapely.intersection(boxes[near], region)) / shapely.area(boxes[near])
    keep = inside >= data.source.min_labelled
    if data.blocks:  # no training context may see another split's block
        others = [g for s, g in data.regions.items() if s != split]
        if others:
            other = shapely.union_all(np.concatenate(others))
            ctx = windows.copy()
            ctx[:, 0] -= (factor - 1) * tile // 2
            ctx[:, 1] -= (factor - 1) * tile // 2
            ctx[:, 2:] = factor * tile
            ctx_boxes = _pixel_boxes(m.transform, ctx[keep])
            overlap = shapely.area(shapely.intersection(ctx_boxes, other)) > 0
            kept = np.flatnonzero(keep)
            keep[kept[overlap]] = False
    return np.column_stack([rr[keep], cc[keep]]).astype(np.int64)


def grid_positions(data: VectorData, split: str, tile: int) -> np.ndarray:
    """(N, 2) (row, col) of the mosaic's tile grid (predict's) meeting an area of ``split``, row-major."""
    region = shapely.union_all(data.region_index(split).geoms)
    grid = TileGrid(data.mosaic.width, data.mosaic.height, tile)
    windows = np.asarray([(int(w.col_off), int(w.row_off), tile, tile) for _, _, w in grid.windows()], np.int64)
    boxes = _pixel_boxes(data.mosaic.transform, windows)
    shapely.prepare(region)
    meets = shapely.intersects(region, boxes)
    meets[meets] = shapely.area(shapely.intersection(boxes[meets], region)) > 0
    return windows[meets][:, [1, 0]]


class VectorDataset(CaswitDataset):
    """Tiles of one split of a :class:`VectorData`: predict's HR tile and LR context, labels burnt from polygons.

    Args:
        data: the mosaic, labels and areas (:func:`load_vector_data`).
        split: "train", "val" or "test".
        input_spec: bands, scaling, normalisation, T and k.
        random_crops: draw a training position at random for every sample (else the positions in order).
        samples: samples per epoch with ``random_crops`` (None: as many as the split's area holds tiles).
        grid: the mosaic's tile grid over the split's areas (validation, evaluation) instead of
            the training positions.
        transform: applied to each finished sample dict.
    """

    def __init__(
        self,
        data: VectorData,
        split: str,
        input_spec: InputSpec,
        *,
        random_crops: bool = False,
        samples: int | None = None,
        grid: bool = False,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.data, self.split = data, split
        self.classes = data.classes
        self.input_spec = input_spec
        self.transform = transform
        self.labelled = True
        tile, k = input_spec.tile_size, input_spec.context_factor
        self.regions = data.region_index(split)
        self.region = shapely.union_all(self.regions.geoms)  # to skip the area mask of windows wholly inside
        shapely.prepare(self.region)
        self.extent = mosaic_bounds(data.mosaic)
        if grid:
            self.positions = grid_positions(data, split, tile)
        else:
            self.positions = training_positions(data, split, tile, k)
        if len(self.positions) == 0:
            raise InputError(
                f"--areas {data.source.areas or '(block split)'}: no {tile} px tile lies at least "
                f"{100 * data.source.min_labelled:.0f} % inside a {split!r} area"
            )
        self.random_crops = random_crops and not grid
        if self.random_crops:
            area = sum(shapely.area(self.regions.geoms)) / abs(data.mosaic.transform.determinant)
            self.length = samples or max(1, int(round(area / tile**2)))
        else:
            self.length = len(self.positions)
        self._handle: tuple[int, object, MaskRule] | None = None
        # remote imagery: predict's GDAL options (retries, bounded waits and caches) wherever it is read,
        # and no DataLoader worker inheriting this process's HTTP connections
        self.gdal_options = gdal_remote_options(data.images)
        clear_connections_at_forks(data.images)

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None  # a GDAL handle never crosses processes
        return state

    def _open(self):
        import os

        if self._handle is None or self._handle[0] != os.getpid():
            with self._gdal_env():
                src = self.data.mosaic.open()
            self._handle = (os.getpid(), src, mask_rule(src, self.input_spec.bands))
        return self._handle[1], self._handle[2]

    def _gdal_env(self):
        return rasterio.Env(**self.gdal_options) if self.gdal_options else contextlib.nullcontext()

    def window(self, index: int) -> Window:
        tile = self.input_spec.tile_size
        if self.random_crops:
            # torch's RNG is seeded differently in every DataLoader worker, and saved with the run
            index = int(torch.randint(0, len(self.positions), ()).item())
        row, col = (int(v) for v in self.positions[index])
        return Window(col, row, tile, tile)

    def labels(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """HR (T, T) and LR (T, T) uint8 labels of ``window`` (before the imagery's validity is applied)."""
        k = self.input_spec.context_factor
        t_h, t_w = int(window.height), int(window.width)
        fill = IGNORE_INDEX if self.data.background is None else self.data.background
        hr_t = window_transform(self.data.mosaic.transform, window)
        lr_t = lowres_transform(window_transform(self.data.mosaic.transform, context_window(window, k)), k)
        out = []
        for transform in (hr_t, lr_t):
            label = self.data.labels.burn(transform, t_h, t_w, fill)
            if not self.inside_region(grid_bounds(transform, t_h, t_w)):
                inside = self.regions.burn(transform, t_h, t_w, 0).astype(bool)
                label[~inside] = IGNORE_INDEX
            out.append(label)
        return out[0], out[1]

    def inside_region(self, bounds: tuple[float, float, float, float]) -> bool:
        """Whether the split's areas cover ``bounds`` where it meets the imagery's extent.

        Pixels outside the imagery are ignored whatever the areas say (they are not valid
        imagery), so a context window past the mosaic's edge needs no area mask for them.
        """
        left, bottom, right, top = self.extent
        clipped = (max(bounds[0], left), max(bounds[1], bottom), min(bounds[2], right), min(bounds[3], top))
        return clipped[0] < clipped[2] and clipped[1] < clipped[3] and shapely.covers(self.region, shapely.box(*clipped))

    def read(self, index: int):
        return self.read_window(self.window(index))

    def read_window(self, window: Window):
        """Raw (hr, lr, label, lr_label, id) of the tile at ``window`` (mosaic pixels)."""
        src, rule = self._open()
        k = self.input_spec.context_factor
        with self._gdal_env():
            hr, lr, hr_valid, lr_valid = read_tile_context_valid(src, window, self.input_spec.bands, k, mask=rule)
        label, lr_label = self.labels(window)
        if not hr_valid.all():  # the usual tile is valid throughout: no mask to apply
            label[~hr_valid] = IGNORE_INDEX
        if not lr_valid.all():
            lr_label[~lr_valid] = IGNORE_INDEX
        sample_id = f"mosaic/r{int(window.row_off)}_c{int(window.col_off)}"
        return hr, lr, label, lr_label, sample_id

    def georef(self, index: int) -> SampleGeo:
        m = self.data.mosaic
        row, col = (int(v) for v in self.positions[index % len(self.positions)])
        tile = self.input_spec.tile_size
        return SampleGeo("mosaic", Window(col, row, tile, tile), m.width, m.height, m.transform, m.crs)

    def image_ids(self) -> list[str]:
        return ["mosaic"]

    def input_files(self) -> list[Path]:
        return self.data.source.input_files()


def summary_line(data: VectorData) -> str:
    """``labels: 1,234 polygons (3 overlapping pairs, 2 repaired), 4 classes; areas: train 3, val 1``."""
    s = data.summary
    notes = [f"{s['overlapping_pairs']:,} overlapping pairs (the later polygon wins)"]
    if s["repaired"]:
        notes.append(f"{s['repaired']:,} invalid repaired (make_valid)")
    if s["skipped_non_polygons"]:
        notes.append(f"{s['skipped_non_polygons']:,} points/lines skipped")
    areas = ", ".join(f"{k} {v}" for k, v in s["areas"].items())
    kind = "blocks" if data.blocks else "areas"
    extra = f", {s['areas_outside_imagery']} outside the imagery" if s.get("areas_outside_imagery") else ""
    line = (f"labels: {s['polygons']:,} polygons ({'; '.join(notes)}), {len(data.classes)} classes; "
            f"{kind}: {areas}{extra}")
    return "\n".join([*(f"images: {note}" for note in s.get("input_notes", ())), line])


def warn_unused(data: VectorData) -> None:
    """A warning for classes of the table that no polygon carries (they will score as undefined)."""
    unused = [c.name for c in data.classes.classes if c.name not in data.summary["polygons_per_class"]
              and c.id != data.background]
    if unused:
        warnings.warn(f"--labels {data.source.labels}: no polygon of class {', '.join(unused[:8])}", stacklevel=2)
