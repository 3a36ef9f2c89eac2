"""Opening input rasters and writing output rasters for ``predict``.

Inputs: one raster or several forming one mosaic. Several files (or one file
read at another pixel size) become a GDAL VRT built here as an XML string,
so that every reader (DataLoader workers included) opens the same virtual
mosaic and the LR context crosses file borders. The VRT carries an explicit
mask band, so gaps between files and each file's own nodata, alpha band or
internal mask are nodata in the mosaic.

Validity follows the GDAL dataset mask (nodata value, alpha band, internal
mask) with one exception: a band that is tagged alpha but read by the model
as data (RGBI files whose NIR band is tagged alpha) is not used as a mask.

Outputs are written to a hidden temporary file beside the destination and
renamed when complete (:class:`AtomicRasterWriter`), so an interrupted run
never leaves a partial file at the destination.
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from ..atomic import usual_permissions
from ..errors import InputError, OutputError, disk_full_guard, one_line
from ..spec import IGNORE_INDEX, ClassTable
from .sources import check_source

SUPPORTED_DTYPES = ("uint8", "uint16")
# what a folder contributes to a mosaic; a .vrt is taken only when named (a folder often holds
# a VRT of its own tiles, which would cover them twice)
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".img")
NODATA = IGNORE_INDEX  # nodata of every class / confidence raster we write

# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


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
        return Path(self.path).name

    @property
    def alpha_bands(self) -> tuple[int, ...]:
        return tuple(i + 1 for i, ci in enumerate(self.colorinterp) if ci == ColorInterp.alpha)


def expand_inputs(items: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their rasters, not recursive) and glob patterns -> sorted unique files."""
    if not items:
        raise InputError("no input raster given")
    out: list[Path] = []
    for item in items:
        s = str(item)
        p = Path(s)
        if p.is_dir():
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
        key = q.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(q)
    return unique


def describe_raster(path: str | Path) -> RasterInfo:
    """Open ``path`` and read its structure; clear errors for non-rasters."""
    path = check_source(path)  # a regular file (a FIFO would block GDAL), and so are a VRT's sources
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
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
                )
    except RasterioIOError:
        raise InputError(f"{path}: not a raster GDAL can read") from None


def check_input(info: RasterInfo, bands: Sequence[int]) -> None:
    """Band count and data type against what the checkpoint reads."""
    if info.count == 0:
        raise InputError(f"{info.path}: has no raster band")
    if info.count < max(bands):
        raise InputError(
            f"{info.path}: has {info.count} band(s) but the checkpoint reads bands {','.join(map(str, bands))}"
        )
    if info.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"{info.path}: data type {info.dtype} is not supported (8- or 16-bit unsigned integers)")


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

    @property
    def is_vrt(self) -> bool:
        return self.source.lstrip().startswith("<VRTDataset")

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    def open(self) -> rasterio.io.DatasetReader:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(self.source)

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
) -> Mosaic:
    """Validate the inputs and build the virtual mosaic.

    ``target_res``: pixel size (CRS units) to read at; None keeps the
    inputs' own. Inputs must share CRS, pixel size, band count and data type.
    """
    infos = [describe_raster(p) for p in paths]
    for info in infos:
        check_input(info, bands)
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
    names = [i.name for i in infos]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"two inputs are named {dup}: outputs per input file would collide")
    bands = tuple(int(b) for b in bands)
    for info in infos:
        used_alpha = set(info.alpha_bands) & set(bands)
        if info.alpha_mask and used_alpha:
            notes.append(
                f"{info.name}: band {min(used_alpha)} is tagged alpha but the model reads it as data; "
                "it is not used as a nodata mask"
            )

    resample = target_res is not None and not (
        math.isclose(target_res, first.res[0], rel_tol=1e-9) and math.isclose(target_res, first.res[1], rel_tol=1e-9)
    )
    if len(infos) == 1 and not resample:
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
    xres, yres = (target_res, target_res) if resample else first.res
    width = max(1, int(round((right - left) / xres)))
    height = max(1, int(round((top - bottom) / yres)))
    transform = Affine(xres, 0.0, left, 0.0, -yres, top)
    if not resample:
        for info in infos:
            off = ~transform @ (info.transform.c, info.transform.f)
            if max(abs(v - round(v)) for v in off) > 0.01:
                notes.append(f"{info.name}: not on the pixel grid of the mosaic; its pixels are snapped to it")
    xml = build_vrt_xml(infos, transform, width, height, bands, first.crs, resample)
    return Mosaic(
        source=xml,
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
    (upsampling); masks always nearest.
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
        alpha_is_data = info.alpha_mask and set(info.alpha_bands) & set(bands)
        nodata_bands = [b for b in bands if info.nodata[b - 1] is not None]
        transparent_zero = [("NODATA", "0")]  # a 0 (invalid) pixel never hides a 255 already written
        if info.per_dataset_mask and not alpha_is_data:
            add_source(mask, info, "mask,1", "ComplexSource", "nearest", transparent_zero)
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


@dataclass(frozen=True)
class MaskRule:
    """How validity is read from one open dataset (decided once: rasterio builds enums per call)."""

    kind: str  # "dataset" (read the per-dataset mask band), "nodata" (compare values) or "none"
    nodata: tuple[float | None, ...] = ()  # per requested band, for "nodata"


def mask_rule(src: rasterio.io.DatasetReader, bands: Sequence[int]) -> MaskRule:
    """The GDAL dataset-mask rule of ``src`` for ``bands`` (see :func:`valid_mask`)."""
    flags = src.mask_flag_enums[0]
    alpha_bands = {i + 1 for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha}
    if MaskFlags.per_dataset in flags and not (MaskFlags.alpha in flags and alpha_bands & set(bands)):
        return MaskRule("dataset")
    nodata = tuple(src.nodatavals[b - 1] for b in bands)
    if all(v is None for v in nodata):
        return MaskRule("none")
    return MaskRule("nodata", nodata)


def valid_mask(
    src: rasterio.io.DatasetReader,
    window: Window,
    bands: Sequence[int],
    data: np.ndarray | None = None,
    rule: MaskRule | None = None,
) -> np.ndarray:
    """(h, w) bool: True where ``window`` (inside the raster) holds valid data.

    The GDAL dataset mask: a per-dataset mask (internal mask, alpha band, the
    mask band of our VRTs) if present and not an alpha band the model reads
    as data; else the nodata value: valid where any of ``bands`` differs
    from it; else everything valid. ``data``: the (C, h, w) values of
    ``bands`` already read, to avoid reading them twice; ``rule``: the
    dataset's :func:`mask_rule`, when the caller keeps it.
    """
    h, w = int(window.height), int(window.width)
    rule = rule or mask_rule(src, bands)
    if rule.kind == "dataset":
        return src.read_masks(1, window=window) > 0
    if rule.kind == "none":
        return np.ones((h, w), dtype=bool)
    if data is None:
        data = src.read(list(bands), window=window)
    valid = np.zeros((h, w), dtype=bool)
    for i, v in enumerate(rule.nodata):
        valid |= True if v is None else data[i] != v
    return valid


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


def check_output_path(path: str | Path, overwrite: bool, option: str = "--out") -> Path:
    """Refuse an existing destination without ``overwrite``; check its folder is writable.

    The folder check creates and removes a probe file: permission bits lie on
    some file systems (and to root).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder")
    if path.exists() and not overwrite:
        raise OutputError(f"{option} {path}: exists (pass --overwrite to replace it)")
    check_folder_writable(folder, option)
    return path


def check_folder_writable(folder: str | Path, option: str = "--out") -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise OutputError(f"{option}: folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"{option}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".caswit-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{option}: cannot write in {folder} ({e.strerror or e})") from None
    return folder


def temp_path_for(path: str | Path, suffix: str | None = None) -> Path:
    """A hidden, unique temporary name beside ``path`` (same file system: rename is atomic)."""
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".part{suffix}")
    os.close(fd)
    usual_permissions(tmp)  # mkstemp makes 0600
    return Path(tmp)


def commit_file(tmp: str | Path, path: str | Path) -> None:
    """Atomically move a complete temporary file to its destination."""
    os.replace(tmp, path)


def overview_factors(width: int, height: int, min_size: int = 256) -> list[int]:
    """2, 4, 8... until the smaller overview fits in ``min_size`` pixels."""
    factors, f = [], 2
    while max(width, height) / (f // 2) > min_size and min(width, height) // f >= 1:
        factors.append(f)
        f *= 2
    return factors


class AtomicRasterWriter:
    """A single-band uint8 GeoTIFF written under a temporary name, renamed on :meth:`commit`.

    Tiled and compressed (DEFLATE, horizontal predictor), nodata 255, optional
    colour table, class names (band description, dataset tags, and a PAM
    ``.aux.xml`` sidecar with a GDAL raster attribute table and category
    names, which QGIS and ``gdalinfo`` read as the legend), nearest
    overviews. Write each block once (block-aligned windows, any order):
    rewriting compressed blocks makes GeoTIFFs grow.
    :meth:`finish` completes the file under its temporary name, :meth:`commit`
    renames it (finishing first if needed): several outputs can all be
    finished before any is renamed. Used as a context manager, leaving
    without a commit aborts (temporary files removed).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        crs: CRS | None,
        transform: Affine,
        block: int = 256,
        classes: ClassTable | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
        overviews: bool = True,
    ) -> None:
        self.path = Path(path)
        self.classes = classes
        self.overviews = overviews
        self.tmp = temp_path_for(self.path, ".tif")
        self.finished = False
        self.committed = False
        tiled = width >= 16 and height >= 16
        profile = dict(
            driver="GTiff",
            width=width,
            height=height,
            count=1,
            dtype="uint8",
            crs=crs,
            transform=transform,
            nodata=NODATA,
            compress="deflate",
            predictor=2,
            BIGTIFF="IF_SAFER",
        )
        if tiled:
            profile.update(tiled=True, blockxsize=block, blockysize=block)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.dst = rasterio.open(self.tmp, "w", **profile)
            if classes is not None:
                self.dst.write_colormap(1, classes.colormap())
            if description:
                self.dst.set_band_description(1, description)
            if tags:
                self.dst.update_tags(**tags)
        except Exception:
            self.abort()
            raise

    @property
    def shape(self) -> tuple[int, int]:
        return self.dst.height, self.dst.width

    def write(self, window: Window, array: np.ndarray) -> None:
        """(h, w) uint8 into ``window`` (inside the raster)."""
        with disk_full_guard(self.path.parent):
            self.dst.write(array[None].astype(np.uint8, copy=False), window=window)

    def finish(self) -> None:
        """Overviews, close, legend sidecar: a complete file, still under its temporary name."""
        if self.finished:
            return
        with disk_full_guard(self.path.parent):  # judged while the partial file still takes its space
            if self.overviews:
                factors = overview_factors(self.dst.width, self.dst.height)
                if factors:
                    self.dst.build_overviews(factors, Resampling.nearest)
                    self.dst.update_tags(ns="rio_overview", resampling="nearest")
            self.dst.close()
            _check_reads_back(self.tmp, self.path)
            if self.classes is not None:
                Path(f"{self.tmp}.aux.xml").write_text(pam_xml(self.classes))
        self.finished = True

    def commit(self) -> Path:
        """Rename the finished file to its destination (it appears complete or not at all)."""
        self.finish()
        aux_tmp = Path(f"{self.tmp}.aux.xml")
        aux_dst = Path(f"{self.path}.aux.xml")
        commit_file(self.tmp, self.path)
        if self.classes is not None:
            commit_file(aux_tmp, aux_dst)
        else:  # a stale legend of a replaced file would describe the wrong classes
            aux_tmp.unlink(missing_ok=True)
            aux_dst.unlink(missing_ok=True)
        self.committed = True
        return self.path

    def abort(self) -> None:
        dst = getattr(self, "dst", None)
        if dst is not None and not dst.closed:
            try:
                dst.close()
            except Exception:
                pass
        for p in (self.tmp, Path(f"{self.tmp}.aux.xml")):
            p.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicRasterWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self.committed:
            self.abort()


def _check_reads_back(tmp: Path, path: Path) -> None:
    """GDAL reports some failed writes (a full disk while flushing at close) only in its log: reopen."""
    try:
        with rasterio.open(tmp):
            pass
    except RasterioIOError as e:
        raise OSError(f"{path}: the file written does not read back ({one_line(e)})") from e


def class_description(classes: ClassTable) -> str:
    return "land cover class: " + ", ".join(f"{c.id} {c.name}" for c in classes.classes)


def pam_xml(classes: ClassTable) -> str:
    """PAM sidecar: category names and a thematic raster attribute table (value, class, RGBA)."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    cats = ET.SubElement(band, "CategoryNames")
    for c in classes.classes:
        ET.SubElement(cats, "Category").text = c.name
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    # GDAL field types: 0 integer, 2 string; usages: 5 MinMax (value), 2 Name, 6-9 Red/Green/Blue/Alpha
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9)]
    for i, (name, ftype, usage) in enumerate(fields):
        fd = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(fd, "Name").text = name
        ET.SubElement(fd, "Type").text = str(ftype)
        ET.SubElement(fd, "Usage").text = str(usage)
    for row, c in enumerate(classes.classes):
        r = ET.SubElement(rat, "Row", index=str(row))
        for v in (c.id, c.name, *c.color, 255):
            ET.SubElement(r, "F").text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def read_pam_categories(path: str | Path) -> list[str]:
    """Category names from the ``.aux.xml`` sidecar of ``path`` (empty if none)."""
    aux = Path(f"{path}.aux.xml")
    if not aux.exists():
        return []
    root = ET.parse(aux).getroot()
    return [c.text or "" for c in root.iter("Category")]


def model_tags(meta_name: str, checkpoint: str, classes: ClassTable, extra: dict | None = None) -> dict[str, str]:
    """Dataset tags describing the model that made a class raster."""
    from .. import __version__

    tags = {
        "TIFFTAG_SOFTWARE": f"caswit-geo {__version__}",
        "CASWIT_MODEL": meta_name,
        "CASWIT_CHECKPOINT": Path(checkpoint).name,
        "CASWIT_CLASSES": json.dumps(classes.to_dict()["classes"]),
    }
    for k, v in (extra or {}).items():
        tags[f"CASWIT_{k.upper()}"] = v if isinstance(v, str) else json.dumps(v, default=str)
    return tags


def copy_window_masked(
    src_path: str | Path,
    window: Window,
    writer: AtomicRasterWriter,
    mask_source: str | None,
    bands: Sequence[int],
    chunk: int = 1024,
) -> None:
    """Copy ``window`` of a single-band raster into ``writer`` (same size), chunk by chunk.

    Pixels invalid in ``mask_source`` (a raster on the writer's grid, read
    with :func:`valid_mask` for ``bands``) become nodata.
    """
    from .context import read_canvas  # here: context imports this module

    h, w = writer.shape
    with rasterio.open(src_path) as src, _open_quiet(mask_source) as msrc:
        for win in iter_chunks(w, h, chunk):
            src_win = Window(window.col_off + win.col_off, window.row_off + win.row_off, win.width, win.height)
            arr = read_canvas(src, src_win, [1], fill=NODATA)[0]
            if msrc is not None:
                arr = np.where(valid_mask(msrc, win, bands), arr, NODATA).astype(np.uint8)
            writer.write(win, arr)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _open_quiet(source: str | None):
    if source is None:
        return _Null()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(source)


def iter_chunks(width: int, height: int, chunk: int) -> Iterable[Window]:
    """Row-major windows of ``chunk x chunk`` covering the raster."""
    for r in range(0, height, chunk):
        for c in range(0, width, chunk):
            yield Window(c, r, min(chunk, width - c), min(chunk, height - r))
