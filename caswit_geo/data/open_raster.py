"""Opening data set rasters with errors that name the file.

Loaders keep their handles in a :class:`~caswit_geo.geo.raster_cache.RasterHandles`
pool with :func:`open_raster` as its opener (one pool per worker process).
"""

from __future__ import annotations

from pathlib import Path

import rasterio
from rasterio.errors import RasterioIOError

from caswit_geo.core.errors import CaswitError, DatasetError, InputError
from caswit_geo.geo.sources import check_source


def open_raster(
    path: str | Path, error: type[CaswitError] = DatasetError, role: str = "file"
) -> rasterio.io.DatasetReader:
    """Open ``path`` for reading; a missing or unreadable file raises ``error`` naming it."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: {role} not found")
    try:
        check_source(path)  # a FIFO or device would block GDAL
    except InputError as e:
        raise error(str(e)) from None
    try:
        return rasterio.open(path)  # PNG datasets (URUR) carry no georeferencing: caswit_geo.geo silences that
    except RasterioIOError as exc:
        raise error(f"{path}: not a readable raster ({str(exc).splitlines()[0]})") from None
