"""Input rasters of ``predict``: files, folders and globs read as one virtual mosaic.

One raster or several forming one mosaic. Several files become a GDAL VRT
built here as an XML string, so that every reader (DataLoader workers
included) opens the same virtual mosaic and the LR context crosses file
borders. The VRT carries an explicit mask band,
so gaps between files and each file's own nodata, alpha band or internal
mask are nodata in the mosaic (see ``masks.py`` for the validity rule).
Read at another pixel size, the files (or that VRT on their own grid) are
resampled by ``resampled.py``, the same pixels whatever the window read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from caswit_geo.core.errors import InputError, one_line
from caswit_geo.geo.georef import check_georeferencing
from caswit_geo.geo.masks import alpha_holds_data
from caswit_geo.geo.remote import gdal_name, gdal_remote_options, input_name, is_remote, known_size, mask, mask_text
from caswit_geo.geo.resampled import ResampledReader, ResampledSource, open_reader, overview_for
from caswit_geo.geo.sources import check_source, vrt_data_rects

SUPPORTED_DTYPES = ("uint8", "uint16")
# what a folder contributes to a mosaic; a .vrt is taken only when named (a folder often holds
# a VRT of its own tiles, which would cover them twice)
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".img")
MAX_DATA_RECTS = 1 << 16  # a VRT with more source rectangles is planned as if data were everywhere


@dataclass(frozen=True)
class RasterInfo:
    """What predict needs to know about one input file (read once, no pixels)."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: tuple[float | None, ...]
    colorinterp: tuple[ColorInterp, ...]
    per_dataset_mask: bool  # alpha band or internal mask (GMF_PER_DATASET)
    alpha_mask: bool  # that per-dataset mask comes from an alpha band
    block_shape: tuple[int, int]
    overviews: int = 0  # overview levels of band 1 (JPEG 2000 resolution levels count)
    overview_factors: tuple[int, ...] = ()  # the file's own overviews of band 1, as reduction factors
    driver: str = "GTiff"  # GDAL's short name of the format
    files_bytes: int = 0  # the file and, for a VRT, the files it reads
    alpha_is_data: bool = False  # a band tagged alpha holds more than a mask's values (RGBI's NIR)
    nodata_given: bool = False  # ``nodata`` comes from --nodata, not from the file
    # where a VRT's pixels come from, (col, row, width, height) in its own pixels; None: everywhere
    data_rects: tuple[tuple[int, int, int, int], ...] | None = None

    @property
    def layout(self) -> str:
        """How the file is laid out when it has no tiles, for messages ("striped TIFF", "PNG file")."""
        return "striped TIFF" if self.driver == "GTiff" else f"{self.driver} file (untiled)"

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def north_up(self) -> bool:
        t = self.transform
        return t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units (north-up rasters)."""
        t = self.transform
        return t.c, t.f + self.height * t.e, t.c + self.width * t.a, t.f

    @property
    def name(self) -> str:
        """The file name, for messages and tags (a URL's, without its query)."""
        return input_name(self.path)

    @property
    def label(self) -> str:
        """The whole name, for messages (a URL without credentials nor query)."""
        return mask(self.path)

    @property
    def alpha_bands(self) -> tuple[int, ...]:
        return tuple(i + 1 for i, ci in enumerate(self.colorinterp) if ci == ColorInterp.alpha)


def expand_inputs(items: Sequence[str | Path]) -> list[str | Path]:
    """Files, folders (their rasters, not recursive) and glob patterns -> sorted unique files.

    URLs and GDAL network names (``remote.py``) stay strings: their GDAL name.
    """
    if not items:
        raise InputError("no input raster given")
    out: list[str | Path] = []
    for item in items:
        s = str(item)
        p = Path(s)
        if is_remote(s):
            out.append(gdal_name(s))
        elif p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                raise InputError(f"{s}: folder holds no raster ({', '.join(RASTER_SUFFIXES)})")
            out.extend(found)
        elif p.exists():
            out.append(p)
        elif any(c in s for c in "*?["):
            found = sorted(Path(q) for q in glob.glob(s) if Path(q).is_file())
            if not found:
                raise InputError(f"{s}: pattern matches no file")
            out.extend(found)
        else:
            raise InputError(f"{s}: no such file or folder")
    seen, unique = set(), []
    for q in out:  # keep the paths as given (messages name them so), drop duplicates
        key = q if isinstance(q, str) else q.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(q)
    return unique


def describe_raster(path: str | Path) -> RasterInfo:
    """Open ``path`` and read its structure; clear errors for non-rasters."""
    path = check_source(path)  # a regular file (a FIFO would block GDAL), and so are a VRT's sources
    remote = gdal_remote_options([path])  # retries, no sidecar lookups: as the readers will read it
    try:
        with rasterio.Env(**remote) if remote else contextlib.nullcontext():
            with rasterio.open(path) as src:
                check_georeferencing(src, path)
                flags = src.mask_flag_enums[0] if src.count else ()
                return RasterInfo(
                    path=str(path),
                    width=src.width,
                    height=src.height,
                    count=src.count,
                    dtype=src.dtypes[0] if src.count else "none",
                    crs=src.crs,
                    transform=src.transform,
                    nodata=tuple(src.nodatavals),
                    colorinterp=tuple(src.colorinterp),
                    per_dataset_mask=MaskFlags.per_dataset in flags,
                    alpha_mask=MaskFlags.alpha in flags,
                    block_shape=tuple(src.block_shapes[0]) if src.count else (0, 0),
                    overviews=_overview_levels(src),
                    overview_factors=tuple(src.overviews(1)) if src.count else (),
                    driver=src.driver,
                    files_bytes=_files_bytes(src),
                    alpha_is_data=MaskFlags.alpha in flags and any(
                        alpha_holds_data(src, i + 1) for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha
                    ),
                    data_rects=_data_rects(path),
                )
    except RasterioIOError as e:
        if is_remote(path):  # the network's reason (HTTP status, credentials) is the useful part
            raise InputError(f"{mask(path)}: cannot be opened ({mask_text(one_line(e))[:200]})") from None
        raise InputError(f"{path}: not a raster GDAL can read") from None


def _overview_levels(src) -> int:
    """Overview levels of band 1; a VRT without its own reads those of its first source (GDAL does)."""
    if not src.count:
        return 0
    levels = len(src.overviews(1))
    if levels or src.driver != "VRT" or len(src.files) < 2:
        return levels
    try:
        with rasterio.open(src.files[1]) as first:
            return len(first.overviews(1)) if first.count else 0
    except RasterioIOError:
        return 0


def _files_bytes(src) -> int:
    """Bytes on disk of the raster and the files it reads (a VRT's sources; a file's sidecars);
    of a remote file, the size its server gave when it was probed (``remote.py``)."""
    total = 0
    for name in dict.fromkeys(src.files):
        if is_remote(name):
            total += known_size(name)
            continue
        try:
            total += os.stat(name).st_size
        except OSError:  # a source named but absent is reported where it is read
            pass
    return total


def nodata_notes(info: RasterInfo, bands: Sequence[int]) -> list[str]:
    """A warning when the nodata value is the brightest value: real imagery reaches it (white roofs, sand)."""
    values = {info.nodata[b - 1] for b in bands if b - 1 < len(info.nodata)} - {None}
    if info.nodata_given:  # the user chose it (--nodata)
        return []
    if info.dtype not in SUPPORTED_DTYPES or len(values) != 1:
        return []
    value = values.pop()
    if value != np.iinfo(np.dtype(info.dtype)).max:
        return []
    return [f"{info.name}: nodata is {value:g}, the brightest value, which real imagery reaches (saturated white: "
            f"roofs, sand); where every band is {value:g} the map is nodata (--nodata none reads them as data)"]


def _data_rects(path: str | Path) -> tuple[tuple[int, int, int, int], ...] | None:
    if is_remote(path) or not str(path).lower().endswith(".vrt"):
        return None
    rects = vrt_data_rects(path, MAX_DATA_RECTS)
    return None if rects is None else tuple(rects)


def check_input(info: RasterInfo, bands: Sequence[int]) -> None:
    """Band count and data type against what the checkpoint reads."""
    if info.count == 0:
        raise InputError(f"{info.label}: has no raster band")
    if info.count < max(bands):
        raise InputError(
            f"{info.label}: has {info.count} band(s) but the checkpoint reads bands {','.join(map(str, bands))}"
        )
    if info.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"{info.label}: data type {info.dtype} is not supported (8- or 16-bit unsigned integers)")


@dataclass
class Mosaic:
    """One virtual raster over the inputs: what every reader opens.

    ``source`` is a file path (one input read as is) or a VRT XML document
    (several files, or one file read at another pixel size); both are
    accepted by ``rasterio.open``.
    """

    source: str
    files: list[RasterInfo]
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    bands: tuple[int, ...]
    resampled: bool = False
    warnings: list[str] = field(default_factory=list)
    # resampled: the files (or a web map service) on their own grid (path, VRT or service description),
    # read by .resampled, the same pixels whatever the window; None: ``source`` is read as it is
    native: str | None = None
    native_overview: int | None = None  # the overview level ``native`` is opened at (one file, a web map)
    native_factor: int = 1  # how many files' pixels a pixel of ``native`` is wide (read from overviews)

    @property
    def reader(self) -> "str | ResampledSource":
        """What readers open (:func:`.resampled.open_reader`): ``source``, or ``native`` resampled."""
        if self.native is None:
            return self.source
        return ResampledSource(self.native, self.width, self.height, self.transform, self.native_overview)

    @property
    def is_vrt(self) -> bool:
        return self.source.lstrip().startswith("<VRTDataset")

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    def open(self) -> "rasterio.io.DatasetReader | ResampledReader":
        return open_reader(self.reader)

    @property
    def block_height(self) -> float:
        """Height of the inputs' blocks in mosaic pixels (the tallest; scaled when read at another pixel size)."""
        return max(info.block_shape[0] * abs(info.transform.e) / (self.res[1] or 1.0) for info in self.files)

    @property
    def block_width(self) -> float:
        """Width of the inputs' blocks in mosaic pixels (the widest; scaled when read at another pixel size)."""
        return max(info.block_shape[1] * abs(info.transform.a) / (self.res[0] or 1.0) for info in self.files)

    def data_windows(self, info: RasterInfo) -> list[Window]:
        """Where ``info``'s pixels come from, in mosaic pixels: its window, or its VRT source rectangles."""
        window = self.file_window(info)
        if info.data_rects is None:
            return [window]
        sx, sy = window.width / info.width, window.height / info.height
        c0, r0 = int(window.col_off), int(window.row_off)
        out = []
        for c, r, w, h in info.data_rects:
            x0, y0 = c0 + math.floor(c * sx), r0 + math.floor(r * sy)
            x1, y1 = c0 + math.ceil((c + w) * sx), r0 + math.ceil((r + h) * sy)
            out.append(Window(x0, y0, max(x1 - x0, 1), max(y1 - y0, 1)))
        return out

    def file_window(self, info: RasterInfo) -> Window:
        """The window of the mosaic grid covering ``info`` (rounded to whole pixels)."""
        if len(self.files) == 1 and not self.resampled:
            return Window(0, 0, self.width, self.height)
        inv = ~self.transform
        left, bottom, right, top = info.bounds
        c0, r0 = inv @ (left, top)
        c1, r1 = inv @ (right, bottom)
        c0, r0, c1, r1 = (int(round(v)) for v in (c0, r0, c1, r1))
        return Window(c0, r0, max(c1 - c0, 1), max(r1 - r0, 1))


def open_mosaic(
    paths: Sequence[str | Path],
    bands: Sequence[int],
    *,
    target_res: float | None = None,
    nodata: float | str | None = None,
    alpha_mask: bool = False,
) -> Mosaic:
    """Validate the inputs and build the virtual mosaic.

    ``nodata``: a value that replaces every file's own nodata value, or
    ``"none"`` for no nodata value (None keeps the files'); alpha bands and
    internal masks still apply. The files are then read through our VRT,
    whose mask band applies it.

    ``alpha_mask``: a band tagged alpha is the nodata mask even where it
    holds more than a mask's values (the user says it is one).

    ``target_res``: pixel size (CRS units) to read at; None keeps the
    inputs' own. Inputs must share CRS, pixel size, band count and data type.
    """
    infos = [describe_raster(p) for p in paths]
    for info in infos:
        check_input(info, bands)
    if nodata is not None:
        value = None if nodata == "none" else float(nodata)
        infos = [dataclasses.replace(i, nodata=(value,) * i.count, nodata_given=True) for i in infos]
    if alpha_mask:
        infos = [dataclasses.replace(i, alpha_is_data=False) for i in infos]
    notes: list[str] = []
    first = infos[0]
    for info in infos[1:]:
        if info.crs != first.crs:
            raise InputError(
                f"inputs differ in CRS: {first.name} is {_crs_name(first.crs)}, {info.name} is {_crs_name(info.crs)}"
            )
        if not np.allclose(info.res, first.res, rtol=1e-6, atol=0):
            raise InputError(
                f"inputs differ in pixel size: {first.name} is {first.res[0]:g} x {first.res[1]:g}, "
                f"{info.name} is {info.res[0]:g} x {info.res[1]:g}"
            )
        if info.dtype != first.dtype:
            raise InputError(
                f"inputs differ in data type: {first.name} is {first.dtype}, {info.name} is {info.dtype}"
            )
    bands = tuple(int(b) for b in bands)
    for info in infos:
        used_alpha = set(info.alpha_bands) & set(bands)
        if info.alpha_mask and used_alpha:
            notes.append(
                f"{info.name}: band {min(used_alpha)} is tagged alpha but the model reads it as data; "
                "it is not used as a nodata mask"
            )
        elif info.alpha_is_data:
            notes.append(
                f"{info.name}: band {min(info.alpha_bands)} is tagged alpha but holds more than a mask's 0 and 255 "
                "(a near-infrared band?); it is not used as a nodata mask (gdal_edit.py -colorinterp_"
                f"{min(info.alpha_bands)} undefined retags it; --alpha-mask uses it as the mask)"
            )
        notes.extend(nodata_notes(info, bands))

    resample = target_res is not None and not (
        math.isclose(target_res, first.res[0], rel_tol=1e-9) and math.isclose(target_res, first.res[1], rel_tol=1e-9)
    )
    # one file is read as it is, unless its alpha band must not be its mask: our VRT's mask band then says so
    if len(infos) == 1 and not resample and not first.alpha_is_data and not first.nodata_given:
        return Mosaic(
            source=first.path,
            files=infos,
            width=first.width,
            height=first.height,
            count=first.count,
            dtype=first.dtype,
            crs=first.crs,
            transform=first.transform,
            bands=bands,
            warnings=notes,
        )
    for info in infos:
        if not info.north_up:
            raise InputError(
                f"{info.name}: rotated or south-up rasters cannot be mosaicked or resampled here; warp it first"
            )
    left = min(i.bounds[0] for i in infos)
    bottom = min(i.bounds[1] for i in infos)
    right = max(i.bounds[2] for i in infos)
    top = max(i.bounds[3] for i in infos)

    def grid(xres: float, yres: float) -> tuple[Affine, int, int]:
        width = max(1, int(round((right - left) / xres)))
        height = max(1, int(round((top - bottom) / yres)))
        return Affine(xres, 0.0, left, 0.0, -yres, top), width, height

    native_transform, native_width, native_height = grid(*first.res)
    for info in infos:
        off = ~native_transform @ (info.transform.c, info.transform.f)
        if max(abs(v - round(v)) for v in off) > 0.01:
            notes.append(f"{info.name}: not on the pixel grid of the mosaic; its pixels are snapped to it")
    if not resample:
        native = build_vrt_xml(infos, native_transform, native_width, native_height, bands, first.crs)
        return Mosaic(source=native, files=infos, width=native_width, height=native_height,
                      count=min(i.count for i in infos), dtype=first.dtype, crs=first.crs, transform=native_transform,
                      bands=bands, warnings=notes)
    transform, width, height = grid(target_res, target_res)
    # shrunk twofold or more: read from the files' overviews (JPEG 2000 resolution levels), as gdalwarp does
    one_file = len(infos) == 1 and not first.alpha_is_data and not first.nodata_given  # read without a VRT
    level = shared_overview(infos, native_transform, target_res, in_vrt=not one_file)
    f = 1 if level is None else first.overview_factors[level]
    if one_file:
        native, overview = first.path, level
    else:  # our VRT on the files' grid, or on that of their overviews
        ov_transform, ov_width, ov_height = grid(first.res[0] * f, first.res[1] * f)
        ov_infos = [i if f == 1 else dataclasses.replace(i, width=i.width // f, height=i.height // f,
                                                         transform=i.transform * Affine.scale(f)) for i in infos]
        native = build_vrt_xml(ov_infos, ov_transform, ov_width, ov_height, bands, first.crs, overview=level)
        overview = None
    return Mosaic(
        source=build_vrt_xml(infos, transform, width, height, bands, first.crs, resample),
        native=native,
        native_overview=overview,
        native_factor=f,
        files=infos,
        width=width,
        height=height,
        count=min(i.count for i in infos),
        dtype=first.dtype,
        crs=first.crs,
        transform=transform,
        bands=bands,
        resampled=resample,
        warnings=notes,
    )


def shared_overview(infos: Sequence[RasterInfo], native_transform: Affine, target_res: float,
                    in_vrt: bool = True) -> int | None:
    """The overview level to read ``target_res`` from (:func:`.resampled.overview_for`), or None.

    Read through our VRT (``in_vrt``), the level must have the same factor in each file, and whole
    overview pixels (each file's size and place on the mosaic multiples of it), so the overviews form
    one grid; else a finer level. VRT inputs are read at full resolution (their overviews are their
    sources')."""
    first = infos[0]
    if target_res <= max(first.res) or any(i.driver == "VRT" for i in infos):
        return None
    level = overview_for(max(first.res), first.overview_factors, target_res)
    if not in_vrt:
        return level
    offsets = [~native_transform @ (i.transform.c, i.transform.f) for i in infos]
    while level is not None and level >= 0:
        f = first.overview_factors[level]
        if all(len(i.overview_factors) > level and i.overview_factors[level] == f and i.width % f == 0
               and i.height % f == 0 and all(round(v) % f == 0 for v in off) for i, off in zip(infos, offsets)):
            return level
        level -= 1
    return None


def _crs_name(crs: CRS | None) -> str:
    if crs is None:
        return "without CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else (crs.to_string()[:60] or "a custom CRS")


_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "float32": "Float32"}


def build_vrt_xml(
    infos: Sequence[RasterInfo],
    transform: Affine,
    width: int,
    height: int,
    bands: Sequence[int],
    crs: CRS | None,
    resample: bool = False,
    overview: int | None = None,
) -> str:
    """GDAL VRT over ``infos`` on the grid (``transform``, ``width``, ``height``).

    Data bands keep the inputs' band numbers (as many as the file with the
    fewest bands has). Files that overlap composite
    through their masks (``UseMaskBand``), so one file's nodata never hides
    another's pixels. The mask band is the OR of the files' validity:
    per-dataset masks (alpha, internal) as ``mask,1``; nodata masks as the
    OR of the data bands' masks (GDAL's dataset mask); files without any
    mask valid over their footprint (GDAL's all-valid ``mask,1``). Gaps
    between files are nodata.
    When ``resample`` the pixels are averaged (downsampling) or bilinear
    (upsampling); masks always nearest. ``overview``: each file's overview
    level of that number is read (``infos`` describe those overviews).
    """
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs is not None:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in transform.to_gdal())
    first = infos[0]
    gdal_type = _GDAL_TYPES[first.dtype]
    overlapping = _any_overlap(infos)
    finer = first.res[0] < abs(transform.a)
    data_resampling = ("average" if finer else "bilinear") if resample else None
    inv = ~transform

    def dst_rect(info: RasterInfo) -> dict[str, str]:
        left, bottom, right, top = info.bounds
        c0, r0 = inv @ (left, top)
        c1, r1 = inv @ (right, bottom)
        if not resample:  # same pixel size: snap to whole pixels (no resampling by GDAL)
            c0, r0 = round(c0), round(r0)
            c1, r1 = c0 + info.width, r0 + info.height
        return dict(xOff=repr(float(c0)), yOff=repr(float(r0)), xSize=repr(float(c1 - c0)), ySize=repr(float(r1 - r0)))

    def add_source(parent, info: RasterInfo, source_band: str, kind: str, resampling: str | None, extra=()):
        attrs = {"resampling": resampling} if resampling else {}
        src = ET.SubElement(parent, kind, **attrs)
        ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = info.path
        if overview is not None:
            ET.SubElement(ET.SubElement(src, "OpenOptions"), "OOI", key="OVERVIEW_LEVEL").text = str(overview)
        ET.SubElement(src, "SourceBand").text = source_band
        ET.SubElement(
            src,
            "SourceProperties",
            RasterXSize=str(info.width),
            RasterYSize=str(info.height),
            DataType=gdal_type if not source_band.startswith("mask") else "Byte",
            BlockXSize=str(info.block_shape[1]),
            BlockYSize=str(info.block_shape[0]),
        )
        ET.SubElement(src, "SrcRect", xOff="0", yOff="0", xSize=str(info.width), ySize=str(info.height))
        ET.SubElement(src, "DstRect", **dst_rect(info))
        for tag, text in extra:
            ET.SubElement(src, tag).text = text

    for b in range(1, min(i.count for i in infos) + 1):
        vb = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(b))
        ci = first.colorinterp[b - 1]
        # alpha handled by the mask band: do not let readers treat the band as alpha again
        ET.SubElement(vb, "ColorInterp").text = "Undefined" if ci == ColorInterp.alpha else ci.name.capitalize()
        for info in infos:
            if overlapping:
                add_source(vb, info, str(b), "ComplexSource", data_resampling, [("UseMaskBand", "true")])
            else:
                add_source(vb, info, str(b), "SimpleSource", data_resampling)

    mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
    for info in infos:
        alpha_is_data = info.alpha_mask and (set(info.alpha_bands) & set(bands) or info.alpha_is_data)
        nodata_bands = [b for b in bands if info.nodata[b - 1] is not None]
        transparent_zero = [("NODATA", "0")]  # a 0 (invalid) pixel never hides a 255 already written
        if info.per_dataset_mask and not alpha_is_data:
            add_source(mask, info, "mask,1", "ComplexSource", "nearest", transparent_zero)
        elif info.nodata_given:  # the file's own nodata mask is not ours: valid where a band differs from ours
            value = info.nodata[bands[0] - 1]
            for b in bands if value is not None else bands[:1]:
                skip = [("NODATA", repr(float(value)))] if value is not None else []
                add_source(mask, info, str(b), "ComplexSource", "nearest",
                           skip + [("ScaleOffset", "255"), ("ScaleRatio", "0")])
        elif nodata_bands:
            for b in nodata_bands:  # valid where any band is valid: OR through transparency
                add_source(mask, info, f"mask,{b}", "ComplexSource", "nearest", transparent_zero)
        elif not alpha_is_data:  # no mask at all: GDAL's all-valid mask band (255, reads no pixel)
            add_source(mask, info, "mask,1", "ComplexSource", "nearest", transparent_zero)
        else:  # only an alpha band that is data: the footprint is valid (constant 255 from band values)
            add_source(
                mask, info, str(bands[0]), "ComplexSource", "nearest", [("ScaleOffset", "255"), ("ScaleRatio", "0")]
            )
    return ET.tostring(root, encoding="unicode")


def _any_overlap(infos: Sequence[RasterInfo]) -> bool:
    """True when two files share some area (sweep over sorted left edges)."""
    boxes = sorted((i.bounds for i in infos), key=lambda b: b[0])
    eps = 1e-6 * max(infos[0].res)
    active: list[tuple[float, float, float, float]] = []
    for box in boxes:
        active = [a for a in active if a[2] > box[0] + eps]
        for a in active:
            if min(a[3], box[3]) - max(a[1], box[1]) > eps:
                return True
        active.append(box)
    return False

