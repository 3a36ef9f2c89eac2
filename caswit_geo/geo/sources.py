"""Input raster files: checked before GDAL opens them, and named when reading them fails.

:func:`check_source` refuses what is not a regular file before GDAL sees it:
GDAL would block forever on a FIFO (and a blocked read ignores SIGTERM), or
read a device. A VRT's source files are checked the same way (recursively,
a few levels deep), so a mosaic of one missing or special file fails up
front, naming that file.

:func:`read_error` turns a GDAL failure met while reading pixels (a
truncated COG, a VRT source gone since) into an :class:`InputError` naming
the file: the one GDAL's messages name, else the input given. It works on
exceptions of this process and on those re-raised from DataLoader workers,
whose text holds the worker's whole traceback.
"""

from __future__ import annotations

import math
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

from caswit_geo.core.errors import InputError, exception_chain, one_line
from caswit_geo.geo.remote import input_name, is_remote, mask, mask_text

VRT_MAX_BYTES = 64 << 20  # a VRT larger than this is not a mosaic description
VRT_MAX_DEPTH = 4  # VRTs of VRTs
# GDAL source names that are not plain paths: /vsi... virtual files, DRIVER:... subdatasets
_NOT_A_PATH = re.compile(r"^(/vsi|[A-Za-z][A-Za-z0-9_]+:(?!\\))")


def check_source(path: str | Path, what: str = "") -> str | Path:
    """``path`` if it is a readable regular file (and a VRT's sources are), else InputError.

    A remote name (``remote.py``) is returned as it is, a string: GDAL tells
    whether it can be read.
    """
    if is_remote(path):
        return str(path)
    path = Path(path)
    _check_file(path, what)
    if path.suffix.lower() == ".vrt":
        _check_vrt_sources(path, what, VRT_MAX_DEPTH, [])
    return path


def source_files(path: str | Path) -> list[Path]:
    """Every file GDAL reads through ``path``: itself and, for a VRT, its sources (nested ones too).

    An output must never replace any of them: a VRT's sources are inputs as
    much as the VRT is. Raises InputError as :func:`check_source` does.
    A remote input has none (nothing local is read through it).
    """
    if is_remote(path):
        return []
    path = Path(path)
    _check_file(path, "")
    found = [path]
    if path.suffix.lower() == ".vrt":
        _check_vrt_sources(path, "", VRT_MAX_DEPTH, found)
    return found


def vrt_data_rects(path: str | Path, limit: int) -> list[tuple[int, int, int, int]] | None:
    """Where a VRT's pixels come from: its sources' destination rectangles ``(col, row, width, height)``
    in its own pixels, clipped to it and deduplicated, or None when that is not known (a source
    without ``DstRect``, more than ``limit`` rectangles: then the whole raster counts as data).

    A VRT may declare a huge raster around a few small sources; planning by these rectangles
    keeps the plan proportional to the data, not to the declared size.
    """
    try:
        root = ET.parse(path).getroot()
        width, height = int(root.get("rasterXSize", "0")), int(root.get("rasterYSize", "0"))
    except (ET.ParseError, OSError, ValueError):
        return None
    if root.get("subClass"):  # warped or pansharpened VRTs: their pixels do not come from rectangles
        return None
    rects: set[tuple[int, int, int, int]] = set()
    for band in root.iter("VRTRasterBand"):
        for source in band:
            if not source.tag.endswith("Source"):
                continue
            dst = source.find("DstRect")
            if dst is None:
                return None
            try:
                x, y = float(dst.get("xOff", "nan")), float(dst.get("yOff", "nan"))
                w, h = float(dst.get("xSize", "nan")), float(dst.get("ySize", "nan"))
            except ValueError:
                return None
            if not all(map(math.isfinite, (x, y, w, h))):
                return None
            c0, r0 = max(0, math.floor(x)), max(0, math.floor(y))
            c1, r1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
            if c1 > c0 and r1 > r0:
                rects.add((c0, r0, c1 - c0, r1 - r0))
            if len(rects) > limit:
                return None
    return sorted(rects) or None  # no source rectangle inside it: not a layout this reads


def _check_file(path: Path, what: str) -> None:
    label = f"{what} {path}" if what else str(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except OSError as e:
        raise InputError(f"{label}: cannot access ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{label}: is a folder, not a raster file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
        raise InputError(f"{label}: is {kind}, not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise InputError(f"{label}: not readable ({(e.strerror or str(e)).lower()})") from None


def _check_vrt_sources(vrt: Path, what: str, depth: int, found: list[Path]) -> None:
    if vrt.stat().st_size > VRT_MAX_BYTES:
        raise InputError(f"{vrt}: a VRT of {vrt.stat().st_size >> 20} MB is not a mosaic description")
    try:
        root = ET.parse(vrt).getroot()
    except ET.ParseError as e:
        raise InputError(f"{vrt}: not a valid VRT ({e})") from None
    for element in root.iter("SourceFilename"):
        name = (element.text or "").strip()
        if not name or _NOT_A_PATH.match(name):
            continue
        source = vrt.parent / name if element.get("relativeToVRT") == "1" else Path(name)
        try:
            _check_file(source, "")
        except InputError as e:
            raise InputError(f"{vrt}: source {e}") from None
        if source not in found:
            found.append(source)
        if source.suffix.lower() == ".vrt":
            if depth <= 1:
                raise InputError(f"{vrt}: VRTs nested more than {VRT_MAX_DEPTH} deep")
            _check_vrt_sources(source, what, depth - 1, found)


# ---------------------------------------------------------------------------
# Failures while reading
# ---------------------------------------------------------------------------

# a GDAL message inside a worker's traceback text: "rasterio._err.CPLE_OpenFailedError: <message>"
_GDAL_LINE = re.compile(r"^rasterio[\w.]*\.(?:CPLE_\w+|RasterioIOError): (.+)$", re.M)
_RASTER_NAME = re.compile(r"[^\s:,'\"]+\.(?:tiff?|vrt|jp2|img|png|jpe?g)\b", re.I)


def _is_gdal(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("rasterio")


def gdal_messages(exc: BaseException) -> list[str]:
    """GDAL's messages about ``exc``, outermost first (worker tracebacks included)."""
    out = []
    for e in exception_chain(exc):
        text = str(e)
        found = _GDAL_LINE.findall(text)
        if found:  # a traceback's text: the innermost cause comes first
            out += reversed(found)
        elif _is_gdal(e):
            out.append(text)
    return [one_line(m) for m in out if m.strip()]


def read_error(exc: BaseException, names: Sequence[str | Path] = (), fallback: str | None = None) -> InputError | None:
    """InputError naming the file that failed to read, or None when ``exc`` is not a GDAL read failure.

    Args:
        exc: the exception (from this process or a DataLoader worker).
        names: the input files; the one GDAL's messages name is reported.
        fallback: what to name when no file is recognised (e.g. the inputs given).
    """
    if isinstance(exc, InputError) or not (any(_is_gdal(e) for e in exception_chain(exc))
                                           or _GDAL_LINE.search(str(exc))):
        return None
    messages = gdal_messages(exc)
    if not messages or messages[0].lower().startswith("write failed"):
        return None
    text = "\n".join(messages)
    named = None
    for name in names:
        name = str(name)
        if name in text or input_name(name) in _RASTER_NAME.findall(text):
            named = mask(name)
            break
    if named is None:
        found = _RASTER_NAME.findall(text)
        named = found[0] if found else fallback
    if named is None:
        return None
    reason = messages[-1] if len(messages) > 1 else messages[0]
    # GDAL's messages may quote a URL with its token: names and reasons are masked
    error = InputError(mask_text(f"{named}: cannot read its pixels ({reason[:300]})"))
    error.__cause__ = exc
    return error

