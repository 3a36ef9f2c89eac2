"""Class raster -> polygons (GeoPackage, GeoParquet, GeoJSON, FlatGeobuf).

- Sieve (optional, ``min_area`` in m2): GDAL's sieve filter, file to file,
  merges regions smaller than the threshold into their largest neighbour;
  nodata (255) is masked, so it neither absorbs nor is absorbed.
- Polygonize: GDAL polygonize run on the raster band on disk
  (``rasterio.features.shapes`` on a ``rasterio.band``), 4-connected, so
  the raster is streamed, never loaded whole.
- Simplify (optional, tolerance in m): ``shapely.coverage_simplify`` on the
  whole coverage (nodata regions included while simplifying, dropped
  after), so shared borders stay shared: no gaps, no overlaps.
- Attributes ``class_id``, ``class_name``, ``area_m2`` (NaN without CRS;
  computed on an equal-area projection for geographic CRS).
- A GeoPackage carries its QGIS style (categories by class, in the class
  colours) in its ``layer_styles`` table (``qgis_style.py``).

Memory grows with the number of polygons (they are simplified together),
not with the raster size.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.features import shapes, sieve

from caswit_geo.core.errors import OutputError
from caswit_geo.core.spec import IGNORE_INDEX, ClassTable
from caswit_geo.geo.area import pixel_area_m2, unit_to_m
from caswit_geo.geo.profiles import sieve_profile
from caswit_geo.geo.qgis_style import categorized_qml, categorized_sld, write_gpkg_style
from caswit_geo.safeio.files import temp_path
from caswit_geo.safeio.sweep import holding
from caswit_geo.safeio.writes import atomic_path

FORMATS = {".gpkg": "GPKG", ".parquet": "Parquet", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf"}


def vector_format(path: str | Path, option: str = "--vector") -> str:
    """Format of an output vector file from its extension; OutputError when unsupported."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"{option} {path}: unsupported extension {suffix or '(none)'}; use {', '.join(FORMATS)}")
    return FORMATS[suffix]


MAX_LAYER_NAME = 255


def check_layer_name(name: str, option: str = "--vector-layer") -> str:
    if not name or len(name) > MAX_LAYER_NAME or not name.isprintable():
        raise OutputError(f"{option} {name[:40]!r}: expected a printable name of 1 to {MAX_LAYER_NAME} characters")
    return name


def geopackage_layers(path: str | Path, option: str = "--vector") -> list[str]:
    """The layers of the existing GeoPackage ``path``; OutputError when it is not one GDAL can open.

    A GeoPackage is a container: predict writes its own layer into it and
    leaves the others as they are (as ``ogr2ogr -update`` would).
    """
    import pyogrio

    try:
        return [str(name) for name in pyogrio.list_layers(path)[:, 0]]
    except Exception as e:  # pyogrio raises its own DataSourceError, or GDAL's errors
        raise OutputError(f"{option} {path}: exists but is not a GeoPackage GDAL can open "
                          f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                          "remove it or choose another file") from None


@dataclass
class VectorResult:
    path: Path | None
    features: int
    class_areas_m2: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


# ---------------------------------------------------------------------------
# Sieve
# ---------------------------------------------------------------------------


def _loaded_libgdal() -> ctypes.CDLL | None:
    """The libgdal rasterio itself loaded (never a second copy), or None where it cannot be found."""
    import rasterio._base  # noqa: F401  (makes sure the library is loaded)

    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.strip() else ""
                if os.path.basename(path).startswith("libgdal") and ".so" in path:
                    return ctypes.CDLL(path)
    except OSError:
        pass
    return None


def _gdal_sieve_file(lib: ctypes.CDLL, src: str, dst: str, threshold: int, connectivity: int) -> None:
    lib.GDALOpenEx.restype = ctypes.c_void_p
    lib.GDALOpenEx.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALGetRasterBand.restype = ctypes.c_void_p
    lib.GDALGetRasterBand.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.GDALGetMaskBand.restype = ctypes.c_void_p
    lib.GDALGetMaskBand.argtypes = [ctypes.c_void_p]
    lib.GDALSieveFilter.restype = ctypes.c_int
    lib.GDALSieveFilter.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 3
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
    of_raster, of_update = 0x02, 0x01
    with rasterio.Env():
        hsrc = lib.GDALOpenEx(src.encode(), of_raster, None, None, None)
        hdst = lib.GDALOpenEx(dst.encode(), of_raster | of_update, None, None, None)
        try:
            if not hsrc or not hdst:
                raise OSError(f"GDAL could not open {src if not hsrc else dst}")
            band_src = lib.GDALGetRasterBand(hsrc, 1)
            err = lib.GDALSieveFilter(
                band_src, lib.GDALGetMaskBand(band_src), lib.GDALGetRasterBand(hdst, 1), threshold, connectivity,
                None, None, None,
            )
            if err >= 3:  # CE_Failure
                raise OSError(f"GDAL sieve failed: {lib.CPLGetLastErrorMsg().decode(errors='replace')}")
        finally:
            if hdst:
                lib.GDALClose(hdst)
            if hsrc:
                lib.GDALClose(hsrc)


def sieve_raster(src_path: str | Path, dst_path: str | Path, min_pixels: int, connectivity: int = 4,
                 streaming: bool = True) -> None:
    """Write ``src_path`` with regions smaller than ``min_pixels`` merged into their largest neighbour.

    Streams from file to file with GDAL's sieve filter when rasterio's libgdal
    can be reached; otherwise (or ``streaming=False``) sieves in memory.
    """
    with rasterio.open(src_path) as src:  # the source may be a VRT: write a GeoTIFF whatever it is
        profile = sieve_profile(src.width, src.height, src.crs, src.transform, src.nodata)
    with rasterio.open(dst_path, "w", **profile):
        pass
    lib = _loaded_libgdal() if streaming else None
    if lib is not None:
        _gdal_sieve_file(lib, str(src_path), str(dst_path), int(min_pixels), connectivity)
        return
    with rasterio.open(src_path) as src:
        arr = src.read(1)
    out = sieve(arr, int(min_pixels), mask=arr != IGNORE_INDEX, connectivity=connectivity)
    with rasterio.open(dst_path, "r+") as dst:
        dst.write(out, 1)


# ---------------------------------------------------------------------------
# Polygons
# ---------------------------------------------------------------------------


def _polygon(geom: dict) -> shapely.Polygon:
    rings = geom["coordinates"]
    return shapely.Polygon(rings[0], rings[1:])


def polygonize(
    class_path: str | Path,
    classes: ClassTable,
    *,
    simplify: float | None = None,
) -> gpd.GeoDataFrame:
    """Polygons of a class raster (nodata dropped), optionally coverage-simplified.

    ``simplify``: tolerance in metres (CRS units without a projected CRS;
    degrees converted at 111,320 m per degree for geographic CRS).
    """
    with rasterio.open(class_path) as src:
        crs, transform = src.crs, src.transform
        geoms, values = [], []
        for geom, value in shapes(rasterio.band(src, 1), connectivity=4, transform=transform):
            geoms.append(_polygon(geom))
            values.append(int(value))
    geoms = np.array(geoms, dtype=object)
    values = np.array(values, dtype=np.int64)
    if simplify and len(geoms):
        tolerance = _tolerance_in_crs_units(simplify, crs)
        geoms = shapely.coverage_simplify(geoms, tolerance)
    keep = values != IGNORE_INDEX
    geoms, values = geoms[keep], values[keep]
    names = classes.names
    gdf = gpd.GeoDataFrame(
        {
            "class_id": values.astype(np.int32),
            "class_name": [names[v] if v < len(names) else f"class_{v}" for v in values],
        },
        geometry=list(geoms),
        crs=crs,
    )
    gdf["area_m2"] = polygon_areas_m2(gdf)
    return gdf


def _tolerance_in_crs_units(metres: float, crs) -> float:
    f = unit_to_m(crs)
    if f is not None:
        return metres / f
    if crs is not None and crs.is_geographic:
        return metres / 111_320.0
    warnings.warn("the class raster has no CRS: --simplify is taken in pixels", stacklevel=3)
    return metres


def polygon_areas_m2(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """Polygon areas in m2: planar for projected CRS, equal-area projection for geographic, NaN without CRS."""
    if len(gdf) == 0:
        return np.zeros(0)
    crs = gdf.crs
    if crs is None:
        warnings.warn("the class raster has no CRS: area_m2 is left empty", stacklevel=3)
        return np.full(len(gdf), np.nan)
    if crs.is_projected:
        f = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return gdf.geometry.area.to_numpy() * f * f
    lon, lat = gdf.union_all().centroid.coords[0] if len(gdf) < 10_000 else _bbox_centre(gdf)
    laea = f"+proj=laea +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m +no_defs"
    return gdf.geometry.to_crs(laea).area.to_numpy()


def _bbox_centre(gdf: gpd.GeoDataFrame) -> tuple[float, float]:
    x0, y0, x1, y1 = gdf.total_bounds
    return (x0 + x1) / 2, (y0 + y1) / 2


def write_vectors(gdf: gpd.GeoDataFrame, path: str | Path, layer: str | None = None) -> None:
    """Write ``gdf`` in the format of ``path``'s extension."""
    fmt = vector_format(path)
    path = Path(path)
    if fmt == "Parquet":
        gdf.to_parquet(path)
    else:
        # a temporary name ends in ".part<ext>": name the layer after the destination
        gdf.to_file(path, driver=fmt, layer=layer or path.stem, engine="pyogrio")


def vectorize(
    class_path: str | Path,
    out_path: str | Path,
    classes: ClassTable,
    *,
    min_area: float | None = None,
    simplify: float | None = None,
    work_dir: str | Path | None = None,
    layer: str | None = None,
    update_from: str | Path | None = None,
) -> VectorResult:
    """Polygons of ``class_path`` (a file or VRT) written to ``out_path`` (format from the extension).

    The file appears complete or not at all (written under a temporary name,
    then renamed). ``out_path`` may itself be a temporary name of an
    output set; ``layer`` then names the layer after the real destination.
    ``work_dir``: where the sieved raster goes (default: beside ``out_path``).
    ``update_from``: an existing GeoPackage whose other layers are kept: the
    file written is a copy of it with ``layer`` added (or replaced).
    """
    t0 = time.perf_counter()
    out_path = Path(out_path)
    vector_format(out_path)
    source = class_path
    work = Path(work_dir or out_path.parent)
    with holding(work):
        sieved = None
        try:
            if min_area:
                with rasterio.open(class_path) as src:
                    px = pixel_area_m2(src.crs, src.transform)
                    if px is None:
                        px = abs(src.transform.a * src.transform.e)
                        warnings.warn("the class raster has no projected CRS: --min-area is taken in pixels",
                                      stacklevel=2)
                threshold = max(1, math.ceil(min_area / px - 1e-9))
                sieved = temp_path(Path(os.path.abspath(work)) / "sieved.tif")
                sieve_raster(class_path, sieved, threshold)
                source = sieved
            gdf = polygonize(source, classes, simplify=simplify)
        finally:
            if sieved is not None:
                sieved.unlink(missing_ok=True)
    with atomic_path(out_path) as tmp:  # a full disk is named there (a GeoPackage says "no such table")
        if update_from is not None:
            shutil.copyfile(update_from, tmp)
        write_vectors(gdf, tmp, layer=layer or out_path.stem)
        if vector_format(out_path) == "GPKG":  # the style QGIS opens the layer with
            name = layer or out_path.stem
            write_gpkg_style(tmp, name, categorized_qml(classes), categorized_sld(classes, name),
                             description="land cover classes: caswit-geo")
    areas = gdf.groupby("class_name")["area_m2"].sum().to_dict() if len(gdf) else {}
    return VectorResult(
        path=out_path,
        features=len(gdf),
        class_areas_m2={k: float(v) for k, v in areas.items()},
        seconds=time.perf_counter() - t0,
    )
