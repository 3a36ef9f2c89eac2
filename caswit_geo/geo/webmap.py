"""Web map services as input: a GDAL WMS or WMTS service description, or a ``WMTS:`` connection string
(``WMTS:URL[,layer=NAME][,tilematrixset=NAME][,style=NAME]``, as GDAL takes it), read around a region at
the model's GSD.

A service's extent is a country or the planet, so it is read only around
the region asked: the mosaic is a VRT over the service on a grid of the
model's pixel size, anchored at the service's own origin (so a raster of
the same pixels, read locally, has the same tile grid), covering the
region's box plus the reach of the LR context, cut to whole multiples of
``align`` pixels (the tile stride and the context factor) from that origin.

GDAL picks the service's level for the pixel size asked (the finest one
not coarser than it) and resamples from it (average when it shrinks,
bilinear when it enlarges; none when the level is the GSD itself). Each
open service makes one request at a time (``MaxConnections`` 1 in a WMS
description, :func:`service_options` for the others): the readers, one per
process, bound the requests in flight. GDAL's disk cache of a WMTS's tiles
is off (:func:`service_options`).

GDAL opens a connection string as it is, the same service as the
``<GDAL_WMTS>`` description of its URL and options. It is a remote name
(``remote.py``): shown and stored masked (its URL without query nor
``user:password@``, its options kept), and known for ``--resume`` by that.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import rasterio
from affine import Affine

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.core.jsonfile import read_bounded
from caswit_geo.geo.area import unit_to_m
from caswit_geo.geo.mosaic import Mosaic, RasterInfo, build_vrt_xml, check_input, describe_raster
from caswit_geo.geo.remote import TILE_CACHE_OFF, is_connection_string, mask, split_connection_string, unless_set

SERVICE_ROOTS = ("<GDAL_WMS", "<GDAL_WMTS")
# GDAL's default for a service opened without MaxConnections (a WMTS's own WMS, say): one request at a time
SERVICE_CONNECTIONS = {"GDAL_MAX_CONNECTIONS": "1"}
MAX_SERVICE_BYTES = 1 << 20  # a service description is a few hundred bytes
# the options of GDAL's WMTS connection string, WMTS:URL[,key=value]...
WMTS_OPTIONS = ("layer", "tilematrixset", "tilematrix", "zoom_level", "style", "extendbeyonddateline")
_CONNECTIONS = re.compile(r"<MaxConnections>\s*\d+\s*</MaxConnections>")


def service_options() -> dict[str, str]:
    """GDAL settings of reading a web map service: one request at a time per open service, and no disk
    cache of its tiles unless the user's environment turns it on (GDAL_ENABLE_WMS_CACHE).

    GDAL keeps a WMTS's tiles in ~/.cache/gdalwmscache for 7 days and removes them only past 64 MB of
    expired ones, so a region's predict would leave gigabytes there, and a later run could read tiles a
    service has since replaced. Each run decodes every pixel once anyway (the LR pre-pass keeps them for
    the readers). The cache also starts a thread of GDAL's own that a fork may catch at work.
    """
    return {**SERVICE_CONNECTIONS, **unless_set(TILE_CACHE_OFF)}


def service_kind(path: str | Path) -> str | None:
    """"WMS" or "WMTS" when ``path`` is a GDAL service description file or a ``WMTS:`` connection string,
    else None."""
    if is_connection_string(path):
        return "WMTS"
    p = Path(path)
    try:
        if not p.is_file():
            return None
        with open(p, "rb") as f:
            head = f.read(256).decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    except OSError:
        return None
    for root in SERVICE_ROOTS:
        if head.startswith(root):
            return root[1:].replace("GDAL_", "")
    return None


def check_connection_string(item: str | Path) -> None:
    """A ``WMTS:`` connection string's options are GDAL's (an unknown one is refused, not ignored);
    InputError naming it, its URL masked."""
    if not is_connection_string(item):
        return
    url, options = split_connection_string(item)
    label = mask(item)
    if not url:
        raise InputError(f"{label}: names no GetCapabilities URL (WMTS:URL[,layer=NAME][,tilematrixset=NAME]...)")
    keys = []
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip().lower()
        if key not in WMTS_OPTIONS or not eq or not value.strip():
            raise InputError(f"{label}: {option!r} is not an option of a WMTS connection string "
                             f"({', '.join(f'{k}=...' for k in WMTS_OPTIONS)})")
        if key in keys:
            raise InputError(f"{label}: {key} is given twice")
        keys.append(key)
    if {"tilematrix", "zoom_level"} <= set(keys):
        raise InputError(f"{label}: tilematrix and zoom_level both choose the level; give one")


def service_label(item: str | Path) -> str:
    """The service as messages name it: a description file's name, a connection string masked."""
    return mask(item) if is_connection_string(item) else Path(item).name


def service_text(path: str | Path) -> str:
    """The description, with one connection at a time per open service (added or replacing the file's);
    a connection string as it is (GDAL opens it)."""
    if is_connection_string(path):
        return str(path)  # WMTS: its connections follow GDAL_MAX_CONNECTIONS (service_options)
    raw = read_bounded(path, what="the service description", max_bytes=MAX_SERVICE_BYTES)
    text = raw.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if not text.startswith("<GDAL_WMS"):
        return text  # WMTS: its connections follow GDAL_MAX_CONNECTIONS (service_options)
    head, end, tail = _CONNECTIONS.sub("", text).rpartition("</GDAL_WMS>")
    return head + "<MaxConnections>1</MaxConnections>" + end + tail


def service_crs(path: str | Path):
    """The CRS the service is described in (the region is placed in it)."""
    return describe_raster(path).crs


def service_levels(info: RasterInfo, source: str) -> list[float]:
    """Pixel sizes (CRS units) of the service's levels, finest first."""
    with rasterio.open(source) as src:
        factors = src.overviews(1) if src.count else []
    return [abs(info.transform.a)] + [abs(info.transform.a) * f for f in factors]


def open_service(path: str | Path, bands, gsd: float | None, bounds: tuple[float, float, float, float],
                 margin: int, align: int) -> tuple[Mosaic, list[str]]:
    """The mosaic of the service ``path`` around ``bounds`` (the region's box, in the service's CRS).

    ``margin``: pixels read around the box (the LR context's reach);
    ``align``: the grid's window starts at multiples of it from the service's
    origin. Returns the mosaic and a note saying which level and resampling
    are used.
    """
    text = service_text(path)
    info = describe_raster(path)
    name = service_label(path)
    if info.count == 0 and service_kind(path) == "WMTS":  # GDAL lists its layers as subdatasets
        raise InputError(f"{name}: the service has several layers, styles or tile matrix sets: choose with "
                         "layer=NAME (tilematrixset=NAME, style=NAME) in a connection string, or <Layer> "
                         "(<TileMatrixSet>, <Style>) in a description")
    check_input(info, bands)
    if gsd is None:
        raise ConfigError(f"{name}: the checkpoint records no ground sampling distance to read the service at")
    factor = unit_to_m(info.crs)
    if factor is None:
        raise InputError(f"{name}: the service's CRS is not projected (metres); describe it in a projected one "
                         "(e.g. <SRS>EPSG:3857</SRS> or the national grid)")
    t = info.transform
    if not info.north_up:
        raise InputError(f"{name}: the service's grid is rotated or south-up")
    res = gsd / factor
    full_w, full_h = int(info.width * t.a / res), int(info.height * -t.e / res)
    left, bottom, right, top = bounds
    c0 = math.floor((left - t.c) / res) - margin
    c1 = math.ceil((right - t.c) / res) + margin
    r0 = math.floor((t.f - top) / res) - margin
    r1 = math.ceil((t.f - bottom) / res) + margin
    c0, r0 = max(c0 // align * align, 0), max(r0 // align * align, 0)
    c1, r1 = min(-(-c1 // align) * align, full_w), min(-(-r1 // align) * align, full_h)
    if c1 <= c0 or r1 <= r0:
        raise InputError(f"{name}: the region lies outside the service's extent")
    transform = Affine(res, 0.0, t.c + c0 * res, 0.0, -res, t.f - r0 * res)
    width, height = c1 - c0, r1 - r0
    levels = service_levels(info, text)
    level = max((i for i, r in enumerate(levels) if r <= res * (1 + 1e-6)), default=0)
    resample = not math.isclose(levels[level], res, rel_tol=1e-9)
    # read from that level and resampled by us (geo/resampled.py): the same pixels whatever the window
    way = ("average" if levels[level] < res else "bilinear") if resample else "none (the level is the GSD)"
    note = (f"{name}: read at {gsd:g} m from the service's level {level} ({levels[level] * factor:.3g} m pixels), "
            f"resampling {way}; {width} x {height} px around the region")
    xml = build_vrt_xml([dataclasses.replace(info, path=text)], transform, width, height, bands, info.crs, resample)
    # the input, as the plan sees it: the service's imagery around the region (not the planet)
    around = dataclasses.replace(info, width=width, height=height, transform=transform, overviews=0)
    mosaic = Mosaic(source=xml, files=[around], width=width, height=height, count=info.count, dtype=info.dtype,
                    crs=info.crs, transform=transform, bands=tuple(int(b) for b in bands), resampled=True,
                    native=text, native_overview=level - 1 if level > 0 else None)
    return mosaic, [note]


__all__ = [
    "SERVICE_CONNECTIONS", "check_connection_string", "open_service", "service_crs", "service_kind", "service_label",
    "service_options", "service_text",
]
