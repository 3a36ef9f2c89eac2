"""Geospatial pieces: tile grids and context windows (pure), raster IO, vectors.

May import: runtime, safeio, core.
"""

import warnings

from rasterio.errors import NotGeoreferencedWarning

from caswit_geo.geo.forks import single_threaded_children


def ignore_not_georeferenced() -> None:
    """Silence rasterio's NotGeoreferencedWarning in this process.

    Planning says in its own words, once, that an input has no georeferencing
    ("working in pixel coordinates"), and PNG data sets never have any; rasterio
    would repeat its raw warning at every open, in every reader. One
    process-wide filter, because warnings.catch_warnings() around each open is
    not thread-safe and the LR pre-pass opens sources from several threads.
    """
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


ignore_not_georeferenced()
single_threaded_children()  # see geo/forks.py
