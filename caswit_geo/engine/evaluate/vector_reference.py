"""A polygon layer as the reference of ``eval --pred``: burnt on the map's grid, window by window.

The polygons are read once, reprojected to the map's CRS and indexed
(``geo/polygon_raster.py``); each window of the map is burnt by the pixel-centre
rule, the later polygon winning, exactly as the vector training data is. With
``--areas`` only the pixels inside an area (any split) are scored; inside,
pixels under no polygon take ``--background`` or are ignored.

The classes: ``--classes`` when given, else the class names the map carries
(``geo.class_raster.map_legend``: its values are matched by name), else the
field's own values (integers are the map's ids).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.core.spec import IGNORE_INDEX, ClassTable
from caswit_geo.data.vector_classes import class_ids
from caswit_geo.geo.polygon_raster import PolygonIndex, window_transform
from caswit_geo.geo.vector_layers import read_polygons

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite")


def is_vector(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


class VectorReference:
    """Reference class ids of any window of the map's grid, burnt from polygons.

    Args:
        path, field, layer: the label polygons and their class field.
        grid: the map (an open raster): CRS and transform of the windows.
        table: the classes (None: the field's values).
        areas, areas_layer: polygons outside which nothing is scored (None: everywhere).
        background: class of area pixels under no polygon (None: ignored).
    """

    def __init__(self, path: Path, field: str | None, grid, *, layer: str | None = None,
                 table: ClassTable | None = None, areas: Path | None = None, areas_layer: str | None = None,
                 background: str | None = None, skip_non_polygons: bool = False) -> None:
        if field is None:
            raise ConfigError(f"--ref {path}: a polygon reference needs --class-field")
        if grid.crs is None:
            raise InputError(f"--pred {grid.name}: the map has no CRS; polygons cannot be placed on it")
        if background is not None and areas is None:
            raise ConfigError("--background needs --areas: outside labelled areas nothing is known")
        layer_data = read_polygons(path, field, grid.crs, layer=layer, skip_non_polygons=skip_non_polygons,
                                   option="--ref")
        self.classes, ids, bg = class_ids(layer_data.values, table, background, f"--ref {path}, field {field!r}",
                                          "the map's classes" if table is not None else "the class table")
        self.labels = PolygonIndex(layer_data.geoms, ids)
        self.areas = None
        if areas is not None:
            area_data = read_polygons(areas, None, grid.crs, layer=areas_layer, option="--areas")
            self.areas = PolygonIndex(area_data.geoms, np.ones(len(area_data), np.uint8))
        self.fill = IGNORE_INDEX if bg is None else bg
        self.transform = grid.transform
        self.name = str(path)

    def read(self, window, tile: int) -> np.ndarray:
        """(T, T) int64 reference ids of ``window`` (inside the raster), 255 elsewhere."""
        h, w = int(window.height), int(window.width)
        t = window_transform(self.transform, window)
        label = self.labels.burn(t, h, w, self.fill)
        if self.areas is not None:
            label[self.areas.burn(t, h, w, 0) == 0] = IGNORE_INDEX
        out = np.full((tile, tile), IGNORE_INDEX, np.int64)
        out[:h, :w] = label
        return out
