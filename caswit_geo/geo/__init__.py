"""Geospatial pieces: tile grids and context windows (pure), raster IO, vectors.

May import: runtime, safeio, core.

Importing this package stays light (no GDAL): the CLI's error printer uses
some of its modules before any raster is opened.
"""

import re
import warnings

from caswit_geo.geo.forks import single_threaded_children

# rasterio's NotGeoreferencedWarning, matched by its messages rather than its class: importing rasterio here
# would load GDAL with every caswit_geo.geo module. The CLI drops that class by name whatever its message.
NOT_GEOREFERENCED_MESSAGES = (
    "Dataset has no geotransform",
    "The given matrix is equal to Affine.identity",
)


def ignore_not_georeferenced() -> None:
    """Silence rasterio's NotGeoreferencedWarning in this process.

    Planning says in its own words, once, that an input has no georeferencing
    ("working in pixel coordinates"), and PNG data sets never have any; rasterio
    would repeat its raw warning at every open, in every reader. One
    process-wide filter, because warnings.catch_warnings() around each open is
    not thread-safe and the LR pre-pass opens sources from several threads.
    """
    for message in NOT_GEOREFERENCED_MESSAGES:
        warnings.filterwarnings("ignore", message=re.escape(message), category=UserWarning)


ignore_not_georeferenced()
single_threaded_children()  # see geo/forks.py
