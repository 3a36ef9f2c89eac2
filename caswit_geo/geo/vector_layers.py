"""Polygon layers read from disk (labels, labelled areas), checked and reprojected once.

A vector file is untrusted input: the layer must exist and carry a CRS, the
field must exist and hold text or integers, geometries must be polygons
(points and lines are refused, or skipped and counted when the caller says
so), invalid polygons are repaired with ``make_valid`` (and counted). The
polygons are reprojected to the mosaic's CRS here, once, and kept as a
shapely array in the layer's order: later features win when rasterised.

Memory grows linearly with the polygons: they stay in memory as GEOS
objects with their STRtree, about 1.1 kB per 10-vertex polygon (measured by
``benchmarks/vector_dataset.py``: 1 GiB for a million) plus 16 bytes per
further vertex. DataLoader workers started by fork share them (GEOS data is
never written; only the small Python wrappers a worker touches are copied).
Attribute columns other than the class field are not read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from rasterio.crs import CRS

from caswit_geo.core.errors import InputError

MAX_FEATURES = 20_000_000  # a bound on what a layer may hold before anything is read
MAX_ATTRIBUTES = 64  # attribute columns kept when all are asked for
POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass
class PolygonLayer:
    """Polygons of one layer in the mosaic's CRS, in the layer's order, with one field's values.

    ``values`` is an object array (str or int); ``repaired``/``skipped``:
    how many features ``make_valid`` fixed and how many non-polygons were left out.
    """

    path: Path
    layer: str | None
    geoms: np.ndarray  # shapely geometries, (N,)
    values: np.ndarray | None  # (N,) object: the field's values, None when no field was read
    repaired: int = 0
    skipped: int = 0
    index: np.ndarray | None = None  # (N,) each polygon's feature position in the layer
    attributes: list[dict] | None = None  # (N,) the features' attribute columns, when asked for

    def __len__(self) -> int:
        return len(self.geoms)

    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of every polygon together."""
        b = shapely.bounds(self.geoms)
        return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def _where(path: Path, layer: str | None) -> str:
    return f"{path}" + (f" (layer {layer!r})" if layer else "")


def read_polygons(
    path: str | Path,
    field: str | None,
    crs: CRS | None,
    *,
    layer: str | None = None,
    skip_non_polygons: bool = False,
    option: str = "--labels",
    attributes: bool = False,
) -> PolygonLayer:
    """Read ``path``'s polygons and ``field``, reprojected to ``crs`` (None: the mosaic has no CRS).

    Raises :class:`InputError` naming the file (and the option, the layer,
    the field) for: a missing file or layer, a layer without a CRS, a
    missing field, values that are neither text nor integers, points or
    lines (unless ``skip_non_polygons``), an empty layer. ``attributes``:
    also keep every attribute column (the first ``MAX_ATTRIBUTES``) of the
    features kept, as :attr:`PolygonLayer.attributes`.
    """
    path = Path(path)
    where = f"{option} {_where(path, layer)}"
    if not path.is_file():
        raise InputError(f"{option} {path}: file not found")
    table, source_crs, fields = _read_table(path, layer, field, where, attributes)
    if field is not None and field not in fields:
        shown = ", ".join(fields[:12]) + (", ..." if len(fields) > 12 else "")
        raise InputError(f"{where}: no field {field!r} (fields: {shown or 'none'})")
    geoms = np.asarray(table.geometry.values, dtype=object)
    values = None
    if field is not None:
        values = _field_values(table[field], where, field)
    keep = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    kinds = shapely.get_type_id(geoms)
    polygonal = np.isin(kinds, (3, 6))  # Polygon, MultiPolygon
    collections = kinds == 7
    if collections.any():  # a collection of polygons is a polygon; anything else in it is not
        geoms = geoms.copy()
        for i in np.flatnonzero(collections & keep):
            parts = shapely.get_parts(geoms[i])
            if all(shapely.get_type_id(p) in (3, 6) for p in parts):
                geoms[i] = shapely.multipolygons(shapely.get_parts(parts))
                polygonal[i] = True
    others = keep & ~polygonal
    skipped = int(others.sum())
    if skipped and not skip_non_polygons:
        kind = shapely.get_type_id(geoms[others][0])
        name = shapely.GeometryType(kind).name.title().replace("string", "String")
        raise InputError(
            f"{where}: {skipped:,} features are not polygons (e.g. a {name}); labels are areas: "
            "pass --skip-non-polygons to leave them out"
        )
    keep &= polygonal
    index = np.flatnonzero(keep)
    geoms = geoms[keep]
    values = values[keep] if values is not None else None
    if len(geoms) == 0:
        raise InputError(f"{where}: no polygon")
    invalid = ~shapely.is_valid(geoms)
    repaired = int(invalid.sum())
    if repaired:
        geoms = geoms.copy()
        geoms[invalid] = [_polygonal(g) for g in shapely.make_valid(geoms[invalid])]
    source_crs = CRS.from_user_input(source_crs)
    if crs is not None and source_crs != crs:
        try:
            geoms = reproject(geoms, source_crs, crs)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
    rows = None
    if attributes:
        columns = [c for c in fields if c in table.columns][:MAX_ATTRIBUTES]
        rows = table.iloc[index][columns].to_dict("records") if columns else [{} for _ in index]
    return PolygonLayer(path, layer, geoms, values, repaired, skipped, index, rows)


def _read_table(path: Path, layer: str | None, field: str | None, where: str, attributes: bool):
    """(GeoDataFrame, its CRS, its fields): GDAL's formats through pyogrio, GeoParquet through pyarrow
    (GDAL builds may lack its driver). Bounded: the feature count is checked before anything is read."""
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path, layer, field, where, attributes)
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        info = pyogrio.read_info(path, layer=layer)
    except (DataSourceError, DataLayerError) as exc:
        raise InputError(f"{where}: not a vector layer GDAL can read ({str(exc).splitlines()[0]})") from None
    _check_count(info["features"], where)
    if info["crs"] is None:
        raise InputError(f"{where}: the layer has no CRS; set one (e.g. ogr2ogr -a_srs EPSG:2154)")
    fields = [str(f) for f in info["fields"]]
    columns = fields[:MAX_ATTRIBUTES] if attributes else [field] if field in fields else []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # GDAL's notes on odd layers
            table = pyogrio.read_dataframe(path, layer=layer, columns=columns, fid_as_index=False)
    except (DataSourceError, DataLayerError) as exc:
        raise InputError(f"{where}: cannot read ({str(exc).splitlines()[0]})") from None
    return table, info["crs"], fields


def _read_parquet(path: Path, layer: str | None, field: str | None, where: str, attributes: bool):
    import geopandas as gpd
    import pyarrow
    import pyarrow.parquet as pq

    if layer is not None:
        raise InputError(f"{where}: a GeoParquet file has one layer; leave the layer out")
    try:
        schema = pq.read_schema(path)
        _check_count(pq.ParquetFile(path).metadata.num_rows, where)
        table = gpd.read_parquet(path)
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{where}: not a GeoParquet file ({str(exc).splitlines()[0][:200]})") from None
    if table.crs is None:
        raise InputError(f"{where}: the layer has no CRS; set one (e.g. ogr2ogr -a_srs EPSG:2154)")
    fields = [str(n) for n in schema.names if n != table.geometry.name]
    table = table[[c for c in fields if attributes or c == field] + [table.geometry.name]]
    return table, table.crs.to_wkt(), fields


def _check_count(features: int, where: str) -> None:
    if features > MAX_FEATURES:
        raise InputError(f"{where}: {features:,} features, more than the {MAX_FEATURES:,} this reads")


def _polygonal(geom):
    """The polygonal part of what ``make_valid`` returned (a bow tie may leave lines beside polygons)."""
    if shapely.get_type_id(geom) in (3, 6):
        return geom
    parts = [p for p in shapely.get_parts(geom) if shapely.get_type_id(p) in (3, 6)]
    return shapely.multipolygons(shapely.get_parts(parts)) if parts else shapely.Polygon()


def _field_values(column, where: str, field: str) -> np.ndarray:
    """The field as an object array of str or int; other types (reals, dates) and nulls refused."""
    import pandas as pd

    if column.isna().any():
        raise InputError(f"{where}: field {field!r} is empty in {int(column.isna().sum()):,} features")
    if pd.api.types.is_integer_dtype(column.dtype):
        return np.asarray([int(v) for v in column], dtype=object)
    if pd.api.types.is_float_dtype(column.dtype):
        whole = np.isfinite(column.values) & (column.values == np.round(column.values))
        if whole.all():  # integers stored as reals (a Shapefile's N(10,0), a CSV)
            return np.asarray([int(v) for v in column], dtype=object)
        raise InputError(f"{where}: field {field!r} holds real numbers (e.g. {column.values[~whole][0]}); "
                         "classes are text or integers")
    if pd.api.types.is_object_dtype(column.dtype) or pd.api.types.is_string_dtype(column.dtype):
        if all(isinstance(v, str) for v in column):
            return np.asarray([v.strip() for v in column], dtype=object)
    raise InputError(f"{where}: field {field!r} is of type {column.dtype}; classes are text or integers")


def reproject(geoms: np.ndarray, src: CRS, dst: CRS) -> np.ndarray:
    """``geoms`` from ``src`` to ``dst`` (coordinates transformed in x, y order, as GIS axis order)."""
    from pyproj import Transformer

    transformer = Transformer.from_crs(src, dst, always_xy=True)

    def transform(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    out = shapely.transform(geoms, transform)
    if not np.isfinite(shapely.bounds(out)).all():
        raise InputError(f"polygons do not project to {dst.to_string()[:60]}: they lie outside its area of use")
    return out
