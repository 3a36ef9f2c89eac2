"""Georeferencing predict cannot use as it is, refused with what to do instead.

A raster's pixels reach the map through its geotransform; a raster whose
georeferencing is something else (ground control points, a CRS without a
geotransform), whose rows run northwards, or whose geographic extent lies
past the poles or the antimeridian would give a map that is misplaced,
mirrored or whose areas are NaN. Each is one line naming the file and the
GDAL command that makes it usable. Rotated north-up-ish grids are accepted:
their geotransform places every pixel exactly.
"""

from __future__ import annotations

from pathlib import Path

import rasterio
from affine import Affine

from caswit_geo.core.errors import InputError

# a degree past the poles or the antimeridian is a wrong extent, not rounding (a pixel at 1e-9 deg is)
GEOGRAPHIC_SLACK_DEG = 1e-6


def check_georeferencing(src: rasterio.io.DatasetReader, path: str | Path) -> None:
    """Refuse what the geotransform of ``src`` cannot place: see the module docstring."""
    t = src.transform
    gcps, _ = src.gcps
    has_transform = t != Affine.identity()
    if not has_transform and gcps:
        raise InputError(
            f"{path}: georeferenced by {len(gcps)} ground control points, which predict does not apply; "
            f"warp it to a geotransform first (gdalwarp {Path(path).name} warped.tif)"
        )
    if not has_transform and src.crs is not None:
        raise InputError(
            f"{path}: has a CRS but no geotransform, so its pixels have no place; give it one "
            "(gdal_edit.py -a_ullr ULX ULY LRX LRY) or drop the CRS (gdal_edit.py -unsetsrs)"
        )
    if has_transform and t.b == 0 and t.d == 0 and t.e > 0:
        raise InputError(
            f"{path}: south-up (its first row is its southern edge); make it north-up first "
            f"(gdalwarp {Path(path).name} north-up.tif)"
        )
    if src.crs is not None and src.crs.is_geographic and has_transform:
        check_geographic_extent(t, src.width, src.height, path)


def check_geographic_extent(t: Affine, width: int, height: int, path: str | Path) -> None:
    """Longitudes in [-180, 180] and latitudes in [-90, 90] at the four corners of a geographic raster."""
    corners = [t * (c, r) for c in (0, width) for r in (0, height)]
    lons = [x for x, _ in corners]
    lats = [y for _, y in corners]
    if min(lats) < -90 - GEOGRAPHIC_SLACK_DEG or max(lats) > 90 + GEOGRAPHIC_SLACK_DEG:
        worst = max(lats, key=abs)
        raise InputError(f"{path}: its extent reaches latitude {worst:.6g} deg, past the pole; "
                         "its geotransform is wrong (check it with gdalinfo)")
    if min(lons) < -180 - GEOGRAPHIC_SLACK_DEG or max(lons) > 180 + GEOGRAPHIC_SLACK_DEG:
        worst = max(lons, key=abs)
        raise InputError(f"{path}: its extent reaches longitude {worst:.6g} deg, past the antimeridian; "
                         f"reproject it to a projected CRS first (gdalwarp -t_srs EPSG:<UTM zone> "
                         f"{Path(path).name} projected.tif)")

