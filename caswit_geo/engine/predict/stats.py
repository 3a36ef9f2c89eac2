"""``predict --stats``: class areas per region feature, per input file and over each output, from the final map.

Counted in finalize on the assembled class rasters, block of rows by block
of rows (bounded memory). Zones:

* ``feature``: each ``--roi`` feature (or the ``--bbox``; ``feature`` is its
  position in the layer, from 0), its pixels those
  whose centre lies in it (the rule the map's region mask follows;
  overlapping features each count their own pixels), with the feature's
  attribute columns;
* ``file``: each input file's extent on the output (per-file outputs: the
  output itself), inside the region when one is asked;
* ``total``: each output raster whole (inside the region).

A zone has one row per class present and one for nodata (class ``nodata``,
id 255): pixels, ``area_m2`` (empty without a projected or geographic CRS)
and ``share_pct`` of the zone's pixels. The rows of a zone add up to its
pixels and its pixel area.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
from rasterio.windows import Window

from caswit_geo.core.spec import ClassTable
from caswit_geo.geo.area import row_areas_m2
from caswit_geo.geo.blend import NODATA
from caswit_geo.geo.region import Region, intersect_windows

ROWS = 1024  # rows of the class raster counted at once
MAX_PIXELS = 1 << 24  # and no more pixels than this (a wide raster: fewer rows)
BASE_COLUMNS = ("zone", "feature", "file")
COUNT_COLUMNS = ("class_id", "class", "pixels", "area_m2", "share_pct")


@dataclass
class Zone:
    """Counts of one zone: pixels and areas per class id (256; 255 = nodata)."""

    kind: str  # "feature", "file" or "total"
    feature: int | None  # the feature's position in the --roi layer (0-based)
    file: str  # the input file, or the output raster's name for totals
    attributes: dict
    pixels: np.ndarray
    areas: np.ndarray | None

    def rows(self, classes: ClassTable) -> list[dict]:
        total = int(self.pixels.sum())
        out = []
        for i in [*range(len(classes)), NODATA]:
            if self.pixels[i] == 0 and i == NODATA:
                continue
            out.append({
                "zone": self.kind, "feature": "" if self.feature is None else self.feature, "file": self.file,
                **self.attributes,
                "class_id": i, "class": "nodata" if i == NODATA else classes.names[i], "pixels": int(self.pixels[i]),
                "area_m2": None if self.areas is None else round(float(self.areas[i]), 3),
                "share_pct": round(100.0 * int(self.pixels[i]) / total, 4) if total else 0.0,
            })
        return out

    def summary(self, classes: ClassTable) -> dict:
        """For the result and the printed summary: the zone and its classes' pixels and areas."""
        names = [*classes.names, "nodata"]
        ids = [*range(len(classes)), NODATA]
        return {"zone": self.kind, "feature": self.feature, "file": self.file, "attributes": self.attributes,
                "pixels": {n: int(self.pixels[i]) for n, i in zip(names, ids)},
                "area_m2": None if self.areas is None else {n: float(self.areas[i]) for n, i in zip(names, ids)}}


def count(read: Callable[[Window], np.ndarray], window: Window, crs, transform, mask: Callable[[Window], np.ndarray] | None,
          origin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels and areas per class id of ``window`` (pixels of the class raster), where ``mask`` holds.

    ``read(window)`` gives the class raster's values; ``mask(window)`` takes
    the window in mosaic pixels (the raster's origin there is ``origin``).
    """
    pixels = np.zeros(256, np.int64)
    areas: np.ndarray | None = np.zeros(256, np.float64)
    c0, r0, w, h = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
    step = max(1, min(ROWS, MAX_PIXELS // max(w, 1)))
    for y in range(r0, r0 + h, step):
        rows = min(step, r0 + h - y)
        values = read(Window(c0, y, w, rows))
        keep = None if mask is None else mask(Window(c0 + origin[0], y + origin[1], w, rows))
        per_row = row_areas_m2(crs, transform, y, rows)
        if per_row is None:
            areas = None
        if per_row is None or np.all(per_row == per_row[0]):  # one area for every pixel (projected CRS)
            counts = np.bincount(values.ravel() if keep is None else values[keep], minlength=256)
            if areas is not None:
                areas += counts * per_row[0]
        else:  # geographic CRS: a pixel's area depends on its row
            counts = np.zeros(256, np.int64)
            for i in range(rows):
                row = np.bincount(values[i] if keep is None else values[i][keep[i]], minlength=256)
                counts += row
                if areas is not None:
                    areas += row * per_row[i]
        pixels += counts
    return pixels, areas


def raster_zones(path: Path, name: str, window: Window, transform, crs, region: Region | None,
                 files: list[tuple[str, Window]], feature_file: str = "") -> list[Zone]:
    """The zones of one output raster (``window``: its extent in mosaic pixels; ``files``: the input
    files' names and extents in mosaic pixels, for the per-file zones; ``feature_file``: the input
    file the feature rows are of, for per-file outputs)."""
    origin = (int(window.col_off), int(window.row_off))
    whole = Window(0, 0, int(window.width), int(window.height))
    zones = []
    with rasterio.open(path) as src:
        def read(w: Window) -> np.ndarray:
            return src.read(1, window=w)

        mask = None if region is None else region.mask
        if region is not None:
            for f, fw in enumerate(region.feature_windows()):
                local = _local(fw, window)
                if local is None:
                    continue
                feature_mask = lambda w, f=f: region.feature_mask(f, w)  # noqa: E731
                pixels, areas = count(read, local, crs, transform, feature_mask, origin)
                if pixels.sum():
                    zones.append(Zone("feature", int(region.features[f]), feature_file,
                                      attribute_columns(region.attributes[f]), pixels, areas))
        for file_name, fw in files:
            local = _local(fw, window)
            if local is not None:
                zones.append(Zone("file", None, file_name, {}, *count(read, local, crs, transform, mask, origin)))
        zones.append(Zone("total", None, name, {}, *count(read, whole, crs, transform, mask, origin)))
    return zones


def attribute_columns(attributes: dict) -> dict:
    """A feature's attributes as columns; one named like ours (``class``, ``file``...) gets ``roi_`` before it."""
    reserved = BASE_COLUMNS + COUNT_COLUMNS
    return {(f"roi_{k}" if k in reserved else k): v for k, v in attributes.items()}


def _local(window: Window, raster: Window) -> Window | None:
    """``window`` (mosaic pixels) within ``raster``, in the raster's pixels; None when they do not meet."""
    inside = intersect_windows(window, raster)
    if inside is None:
        return None
    return Window(int(inside.col_off - raster.col_off), int(inside.row_off - raster.row_off),
                  int(inside.width), int(inside.height))


def stats_text(zones: list[Zone], classes: ClassTable, fmt: str) -> str:
    """The zones as CSV (one row per zone and class) or JSON (a list of zones with their class rows)."""
    if fmt == "json":
        doc = [{"zone": z.kind, "feature": z.feature, "file": z.file, "attributes": z.attributes,
                "classes": [{k: r[k] for k in COUNT_COLUMNS} for r in z.rows(classes)]} for z in zones]
        return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    attributes = list(dict.fromkeys(k for z in zones for k in z.attributes))
    columns = [*BASE_COLUMNS, *attributes, *COUNT_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for zone in zones:
        for row in zone.rows(classes):
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


__all__ = ["Zone", "count", "raster_zones", "stats_text"]
