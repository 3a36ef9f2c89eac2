"""The region a prediction is asked for: polygons (``--roi``) or a box (``--bbox``), on the mosaic's pixel grid.

The region never moves the tile grid: tiles stay anchored as for the whole
mosaic, so inside the region the map is the whole mosaic's map. What the
region decides is which pixels are kept (those whose centre lies in a
polygon, GDAL's rule, as ``rasterio.features.rasterize``; ``scanline.py``
fills them), which tiles are run (those with such a pixel) and the output's
extent (the polygons' bounding box, snapped outward to whole pixels and cut
to the mosaic).

The polygons are read once (``vector_layers.py``: CRS check, polygons only,
invalid ones repaired), reprojected to the mosaic's CRS, then carried in
the mosaic's pixel coordinates (column, row), where every test below is a
pixel-centre test whatever the grid's affine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.geo.polygon_raster import PolygonIndex
from caswit_geo.geo.scanline import fill_polygons
from caswit_geo.geo.vector_layers import read_polygons, reproject

MAX_RECTS = 256  # feature boxes the units are planned on; more features plan on their common box
BBOX_VERTICES = 64  # points per side of a --bbox reprojected from another CRS (its sides curve)
SNAP_TOLERANCE = 1e-6  # pixels


@dataclass
class RegionPolygons:
    """The region's features in a CRS (the mosaic's), in the layer's order, with their attributes."""

    geoms: np.ndarray  # shapely polygons
    attributes: list[dict]  # per feature: its attribute columns (str, int, float or None)
    label: str  # "--roi PATH" or "--bbox ..." (messages)
    repaired: int = 0
    index: np.ndarray | None = None  # each feature's position in the layer (None: 0, 1, ...)


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``XMIN,YMIN,XMAX,YMAX`` -> four finite numbers with XMIN < XMAX and YMIN < YMAX; ConfigError otherwise."""
    parts = str(text).replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--bbox {text}: expected XMIN,YMIN,XMAX,YMAX (four numbers)")
    xmin, ymin, xmax, ymax = values
    if not (xmin < xmax and ymin < ymax):
        raise ConfigError(f"--bbox {text}: XMIN must be below XMAX and YMIN below YMAX")
    return values


def parse_crs(text: str, option: str) -> CRS:
    try:
        return CRS.from_user_input(str(text))
    except CRSError:
        raise ConfigError(f"{option} {text}: not a CRS (e.g. EPSG:4326)") from None


def region_polygons(roi: str | Path | None, roi_layer: str | None, bbox: str | None, bbox_crs: str | None,
                    crs: CRS | None) -> RegionPolygons | None:
    """The region of ``--roi``/``--bbox`` in ``crs`` (the mosaic's), or None when none is asked."""
    if roi is not None and bbox is not None:
        raise ConfigError("--roi and --bbox both give the region: choose one")
    if roi_layer is not None and roi is None:
        raise ConfigError("--roi-layer names a layer of --roi: add --roi PATH")
    if bbox_crs is not None and bbox is None:
        raise ConfigError("--bbox-crs is the CRS of --bbox: add --bbox XMIN,YMIN,XMAX,YMAX")
    if roi is not None:
        if crs is None:
            raise ConfigError(f"--roi {roi}: the imagery has no CRS to place the polygons in")
        layer = read_polygons(roi, None, crs, layer=roi_layer, option="--roi", skip_non_polygons=True,
                              attributes=True)
        if layer.skipped:
            raise InputError(f"--roi {roi}: {layer.skipped:,} features are points or lines; a region is made of "
                             "polygons (keep only those, e.g. ogr2ogr -nlt MULTIPOLYGON -where ...)")
        attributes = [{str(k): _plain(v) for k, v in row.items()} for row in layer.attributes]
        return RegionPolygons(layer.geoms, attributes, f"--roi {roi}", layer.repaired, layer.index)
    if bbox is None:
        return None
    box = shapely.box(*parse_bbox(bbox))
    if bbox_crs is not None:
        if crs is None:
            raise ConfigError("--bbox-crs: the imagery has no CRS to reproject the box to")
        source = parse_crs(bbox_crs, "--bbox-crs")
        if source != crs:
            side = max(box.bounds[2] - box.bounds[0], box.bounds[3] - box.bounds[1]) / BBOX_VERTICES
            try:
                box = reproject(np.array([shapely.segmentize(box, side)], dtype=object), source, crs)[0]
            except InputError as exc:
                raise ConfigError(f"--bbox {bbox} (--bbox-crs {bbox_crs}): {exc}") from None
    return RegionPolygons(np.array([box], dtype=object), [{}], f"--bbox {bbox}")


def _plain(value):
    """A value a CSV or JSON file holds as is: numbers, text, None (dates and the like as text)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    text = str(value)
    return None if text in ("NaT", "nan", "<NA>") else text


def to_pixels(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """``geoms`` from CRS coordinates to the pixel coordinates (column, row) of a grid with ``transform``."""
    inv = ~transform

    def apply(coords: np.ndarray) -> np.ndarray:
        x, y = coords[:, 0], coords[:, 1]
        return np.column_stack([inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f])

    return shapely.transform(geoms, apply)


@dataclass
class Region:
    """The region on a mosaic's grid: polygons in its pixel coordinates, cut to its extent.

    ``window``: the output's extent, the polygons' bounding box snapped
    outward to whole pixels (mosaic pixels). ``digest``: what the region is,
    for ``plan.json`` (a resumed job must be asked for the same region).
    """

    geoms: np.ndarray  # one polygon (or multipolygon) per feature, mosaic pixel coordinates
    attributes: list[dict]
    window: Window
    label: str
    features: np.ndarray  # each polygon's feature position in the layer
    repaired: int = 0
    digest: str = ""
    _index: PolygonIndex | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_index"] = None  # rebuilt where used (DataLoader workers)
        return state

    @property
    def index(self) -> PolygonIndex:
        if self._index is None:
            self._index = PolygonIndex(self.geoms, np.ones(len(self.geoms), np.uint8))
        return self._index

    @property
    def pixel_area(self) -> float:
        """The polygons' area in square pixels (overlaps counted once)."""
        return float(shapely.area(shapely.union_all(self.geoms)))

    def mask(self, window: Window) -> np.ndarray:
        """(height, width) bool: pixels of ``window`` (mosaic pixels) whose centre lies in a polygon."""
        grid = Affine.translation(int(window.col_off), int(window.row_off))
        return self.index.burn(grid, int(window.height), int(window.width), 0) > 0

    def feature_mask(self, feature: int, window: Window) -> np.ndarray:
        """As :meth:`mask`, for one feature alone (features may overlap: each counts its own pixels)."""
        grid = Affine.translation(int(window.col_off), int(window.row_off))
        out = np.zeros((int(window.height), int(window.width)), np.uint8)
        return fill_polygons(self.geoms[feature:feature + 1], np.ones(1, np.uint8), grid, out) > 0

    def meets(self, window: Window) -> bool:
        """Whether some pixel of ``window`` (a tile) has its centre in the region."""
        c0, r0 = int(window.col_off), int(window.row_off)
        box = shapely.box(c0, r0, c0 + int(window.width), r0 + int(window.height))
        hits = self.index.query(box.bounds)
        if hits.size == 0:
            return False
        if shapely.contains(self.geoms[hits], box).any():
            return True
        return bool(self.mask(window).any())

    def overlaps(self, window: Window) -> bool:
        """Whether the region shares some area with ``window`` (an output raster's extent)."""
        c0, r0 = int(window.col_off), int(window.row_off)
        box = shapely.box(c0, r0, c0 + int(window.width), r0 + int(window.height))
        hits = self.index.query(box.bounds)
        return bool(hits.size) and bool((shapely.area(shapely.intersection(self.geoms[hits], box)) > 0).any())

    def feature_windows(self) -> list[Window]:
        """Each feature's pixel bounding box, within :attr:`window`."""
        out = []
        for left, top, right, bottom in shapely.bounds(self.geoms):
            out.append(_snap(left, top, right, bottom))
        return out

    def rects(self) -> list[Window]:
        """Where units are planned: the features' boxes (their common box when there are many)."""
        windows = self.feature_windows()
        return windows if len(windows) <= MAX_RECTS else [self.window]


def _snap(left: float, top: float, right: float, bottom: float) -> Window:
    # outward to whole pixels, but not for a reprojection's rounding (a row of 1e-9 px is no row)
    c0, r0 = math.floor(left + SNAP_TOLERANCE), math.floor(top + SNAP_TOLERANCE)
    c1 = max(math.ceil(right - SNAP_TOLERANCE), c0 + 1)
    r1 = max(math.ceil(bottom - SNAP_TOLERANCE), r0 + 1)
    return Window(c0, r0, c1 - c0, r1 - r0)


def region_on_grid(polygons: RegionPolygons, transform: Affine, width: int, height: int) -> Region:
    """The region on the grid (``transform``, ``width`` x ``height``): cut to it, checked, snapped.

    InputError for a region outside the grid (or meeting it with no pixel centre).
    """
    pixels = to_pixels(polygons.geoms, transform)
    cut = shapely.clip_by_rect(pixels, 0, 0, width, height)
    keep = ~shapely.is_empty(cut) & (shapely.area(cut) > 0)
    if not keep.any():
        raise InputError(f"{polygons.label}: the region lies outside the imagery")
    geoms = np.asarray([_polygonal(g) for g in cut[keep]], dtype=object)
    attributes = [a for a, k in zip(polygons.attributes, keep) if k]
    features = (np.arange(len(keep)) if polygons.index is None else np.asarray(polygons.index))[keep]
    left, top, right, bottom = shapely.total_bounds(geoms)
    window = _snap(left, top, right, bottom)
    digest = hashlib.sha256()
    digest.update(repr((int(window.col_off), int(window.row_off), int(window.width), int(window.height))).encode())
    for wkb in shapely.to_wkb(shapely.set_precision(geoms, 1e-6)):
        digest.update(wkb)
    region = Region(geoms, attributes, window, polygons.label, features, polygons.repaired, digest.hexdigest()[:32])
    if not any(region.meets(w) for w in region.feature_windows()):
        raise InputError(f"{polygons.label}: the region holds no pixel centre of the imagery (too small?)")
    return region


def _polygonal(geom):
    """Polygons only (a clip along an edge may leave lines beside them)."""
    if shapely.get_type_id(geom) in (3, 6):
        return geom
    parts = [p for p in shapely.get_parts(geom) if shapely.get_type_id(p) in (3, 6)]
    return shapely.multipolygons(shapely.get_parts(parts)) if parts else shapely.Polygon()


def intersect_windows(window: Window, to: Window) -> Window | None:
    """``window`` ∩ ``to`` (whole pixels), None when they do not meet."""
    c0, r0 = max(int(window.col_off), int(to.col_off)), max(int(window.row_off), int(to.row_off))
    c1 = min(int(window.col_off + window.width), int(to.col_off + to.width))
    r1 = min(int(window.row_off + window.height), int(to.row_off + to.height))
    return Window(c0, r0, c1 - c0, r1 - r0) if c1 > c0 and r1 > r0 else None


__all__ = ["Region", "RegionPolygons", "intersect_windows", "parse_bbox", "region_on_grid", "region_polygons",
           "to_pixels"]
