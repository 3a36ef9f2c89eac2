"""Ground area of raster pixels in square metres.

Projected CRS: every pixel has the same area, |det(transform)| times the
square of the CRS unit in metres. Geographic CRS (degrees): a pixel's area
depends on its latitude; it is computed per row on the CRS ellipsoid.
No CRS: areas are unknown (None), only pixel counts are meaningful.
"""

from __future__ import annotations

import numpy as np
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS


def unit_to_m(crs: CRS | None) -> float | None:
    """Metres per CRS unit for projected CRS, None for geographic or missing CRS."""
    if crs is None or not crs.is_projected:
        return None
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # a projected CRS without a linear unit
        return None


def pixel_area_m2(crs: CRS | None, transform: Affine) -> float | None:
    """Area of one pixel in m2 for projected CRS; None otherwise."""
    f = unit_to_m(crs)
    if f is None:
        return None
    return abs(transform.a * transform.e - transform.b * transform.d) * f * f


def row_areas_m2(crs: CRS | None, transform: Affine, row0: int, nrows: int) -> np.ndarray | None:
    """(nrows,) pixel area in m2 of rows ``row0 ...``; None without a usable CRS."""
    const = pixel_area_m2(crs, transform)
    if const is not None:
        return np.full(nrows, const)
    if crs is None or not crs.is_geographic or transform.b or transform.d:
        return None
    geod = _geod(crs)
    x0, dx = transform.c, transform.a
    out = np.empty(nrows)
    for i in range(nrows):
        top = transform.f + (row0 + i) * transform.e
        bottom = top + transform.e
        lons = [x0, x0 + dx, x0 + dx, x0]
        lats = [top, top, bottom, bottom]
        out[i] = abs(geod.polygon_area_perimeter(lons, lats)[0])
    return out


def _geod(crs: CRS) -> Geod:
    try:
        from pyproj import CRS as PCRS

        return PCRS.from_wkt(crs.to_wkt()).get_geod() or Geod(ellps="WGS84")
    except Exception:
        return Geod(ellps="WGS84")
