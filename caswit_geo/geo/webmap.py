"""Web map services as input: a GDAL WMS or WMTS service description, read around a region at the model's GSD.

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
description, :data:`SERVICE_OPTIONS` for the others): the readers, one per
process, bound the requests in flight.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from affine import Affine

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.geo.area import unit_to_m
from caswit_geo.geo.georef import open_quietly
from caswit_geo.geo.mosaic import Mosaic, RasterInfo, build_vrt_xml, check_input, describe_raster

SERVICE_ROOTS = ("<GDAL_WMS", "<GDAL_WMTS")
# GDAL's default for a service opened without MaxConnections (a WMTS's own WMS, say): one request at a time
SERVICE_OPTIONS = {"GDAL_MAX_CONNECTIONS": "1"}
MAX_SERVICE_BYTES = 1 << 20  # a service description is a few hundred bytes
_CONNECTIONS = re.compile(r"<MaxConnections>\s*\d+\s*</MaxConnections>")


def service_kind(path: str | Path) -> str | None:
    """"WMS" or "WMTS" when ``path`` is a GDAL service description file, else None."""
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
    """A ``WMTS:`` connection string is refused, with how to give the service (its text is not echoed:
    it may hold a token)."""
    if str(item)[:5].upper() == "WMTS:":
        raise ConfigError("a WMTS: connection string is not read as an input; write the service as a GDAL WMTS "
                          "description file (<GDAL_WMTS><GetCapabilitiesUrl>URL</GetCapabilitiesUrl>"
                          "<Layer>NAME</Layer></GDAL_WMTS>) and give that file")


def service_text(path: Path) -> str:
    """The description, with one connection at a time per open service (added or replacing the file's)."""
    if path.stat().st_size > MAX_SERVICE_BYTES:
        raise InputError(f"{path.name}: {path.stat().st_size:,} bytes, more than a service description "
                         f"({MAX_SERVICE_BYTES:,} at most)")
    text = path.read_text("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if not text.startswith("<GDAL_WMS"):
        return text  # WMTS: its connections follow GDAL_MAX_CONNECTIONS (SERVICE_OPTIONS)
    head, end, tail = _CONNECTIONS.sub("", text).rpartition("</GDAL_WMS>")
    return head + "<MaxConnections>1</MaxConnections>" + end + tail


def service_crs(path: Path):
    """The CRS the service is described in (the region is placed in it)."""
    return describe_raster(path).crs


def service_levels(info: RasterInfo, source: str) -> list[float]:
    """Pixel sizes (CRS units) of the service's levels, finest first."""
    with open_quietly(source) as src:
        factors = src.overviews(1) if src.count else []
    return [abs(info.transform.a)] + [abs(info.transform.a) * f for f in factors]


def open_service(path: Path, bands, gsd: float | None, bounds: tuple[float, float, float, float],
                 margin: int, align: int) -> tuple[Mosaic, list[str]]:
    """The mosaic of the service ``path`` around ``bounds`` (the region's box, in the service's CRS).

    ``margin``: pixels read around the box (the LR context's reach);
    ``align``: the grid's window starts at multiples of it from the service's
    origin. Returns the mosaic and a note saying which level and resampling
    are used.
    """
    text = service_text(path)
    info = describe_raster(path)
    check_input(info, bands)
    name = path.name
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
    resample = not math.isclose(levels[level], res, rel_tol=1e-9) or level > 0
    # what our VRT asks of GDAL (build_vrt_xml): it then reads from the level above
    way = ("average" if levels[0] < res else "bilinear") if resample else "none (the level is the GSD)"
    note = (f"{name}: read at {gsd:g} m from the service's level {level} ({levels[level] * factor:.3g} m pixels), "
            f"resampling {way}; {width} x {height} px around the region")
    xml = build_vrt_xml([dataclasses.replace(info, path=text)], transform, width, height, bands, info.crs, resample)
    # the input, as the plan sees it: the service's imagery around the region (not the planet)
    around = dataclasses.replace(info, width=width, height=height, transform=transform, overviews=0)
    mosaic = Mosaic(source=xml, files=[around], width=width, height=height, count=info.count, dtype=info.dtype,
                    crs=info.crs, transform=transform, bands=tuple(int(b) for b in bands), resampled=True)
    return mosaic, [note]


__all__ = ["SERVICE_OPTIONS", "check_connection_string", "open_service", "service_crs", "service_kind", "service_text"]
