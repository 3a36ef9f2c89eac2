"""How caswit-geo writes class and confidence rasters: layout, legend, tags.

Every class raster is single-band uint8 with nodata 255, a colour table, the
class names (band description, dataset tags, and a PAM ``.aux.xml`` sidecar
with a GDAL raster attribute table and category names, which QGIS and
``gdalinfo`` read as the legend) and the model's metadata as tags.
Confidence rasters have the same layout without the legend.

:class:`AtomicRasterWriter` writes one such raster block by block under a
temporary name (``safeio/writes.py``) and renames it when complete; ``predict``
assembles its outputs from unit parts instead (``assemble.py``). Creation
options come from ``profiles.py``.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from caswit_geo.core.errors import CaswitError, disk_full_guard, one_line
from caswit_geo.core.jsonfile import parse_json
from caswit_geo.core.spec import ClassInfo, ClassTable
from caswit_geo.geo.profiles import class_raster_profile
from caswit_geo.safeio.files import usual_permissions
from caswit_geo.safeio.writes import AtomicWrite

CONFIDENCE_DESCRIPTION = "confidence: probability of the predicted class, percent (255 = nodata)"
PROBABILITIES_DESCRIPTION = "one band per class (its name is the band description): probability, percent (255 = nodata)"


def output_block(tile: int) -> int:
    """GeoTIFF block size: the largest of 512..16 dividing the tile (tiles then fill whole blocks)."""
    return next((b for b in (512, 256, 128, 64, 32, 16) if tile % b == 0), 256)


def overview_factors(width: int, height: int, min_size: int = 256) -> list[int]:
    """2, 4, 8... until the smaller overview fits in ``min_size`` pixels."""
    factors, f = [], 2
    while max(width, height) / (f // 2) > min_size and min(width, height) // f >= 1:
        factors.append(f)
        f *= 2
    return factors


def check_reads_back(tmp: Path, path: Path) -> None:
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


MAX_LEGEND_TAG_BYTES = 256 * 2**10  # 255 classes with long names and colours: about 30 KiB


def map_legend(src) -> ClassTable | None:
    """The class table a map carries: caswit-geo's ``CASWIT_CLASSES`` tag, else the category names of
    its ``.aux.xml`` (as QGIS and GDAL write them); None when it names no class.

    The tag is read like any file content: bounded, parsed, checked; a map
    whose tag is not a valid class table is a map without a legend, said in
    a warning.
    """
    raw = src.tags().get("CASWIT_CLASSES")
    if raw is None:
        names = [n for n in read_pam_categories(src.name) if n] if Path(src.name).exists() else []
        if not names:
            return None
        generic = ClassTable.generic(len(names))
        return ClassTable([ClassInfo(i, n[:100], c.color) for i, (n, c) in enumerate(zip(names, generic.classes))])
    try:
        classes = parse_json(raw, source=src.name, what="the CASWIT_CLASSES tag", max_bytes=MAX_LEGEND_TAG_BYTES,
                             max_depth=3)
        return ClassTable.from_dict({"classes": classes, "weights": None}, "CASWIT_CLASSES")
    except CaswitError as e:
        warnings.warn(f"{src.name}: its class legend is not usable ({one_line(str(e))}); classes are numbered",
                      stacklevel=2)
        return None


def model_tags(meta_name: str, checkpoint: str, classes: ClassTable, extra: dict | None = None) -> dict[str, str]:
    """Dataset tags describing the model that made a class raster."""
    from caswit_geo import __version__

    tags = {
        "TIFFTAG_SOFTWARE": f"caswit-geo {__version__}",
        "CASWIT_MODEL": meta_name,
        "CASWIT_CHECKPOINT": Path(checkpoint).name,
        "CASWIT_CLASSES": json.dumps(classes.to_dict()["classes"]),
    }
    for k, v in (extra or {}).items():
        tags[f"CASWIT_{k.upper()}"] = v if isinstance(v, str) else json.dumps(v, default=str)
    return tags



class AtomicRasterWriter:
    """A single-band uint8 GeoTIFF written under a temporary name, renamed on :meth:`commit`.

    Layout of :func:`~caswit_geo.geo.profiles.class_raster_profile`,
    optional colour table and legend (:func:`pam_xml`, written to
    ``legend``: by default the ``.aux.xml`` sidecar of ``path``), nearest
    overviews. Write each block once (block-aligned windows, any order):
    rewriting compressed blocks makes GeoTIFFs grow. :meth:`finish`
    completes the file under its temporary name, :meth:`commit` renames it
    (finishing first if needed). Used as a context manager, leaving without
    a commit aborts (temporary files removed). The raster and its legend are
    each an :class:`~caswit_geo.safeio.writes.AtomicWrite`, so the litter of
    a killed run is removed by the next one.
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
        legend: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.legend = Path(f"{path}.aux.xml") if legend is None else Path(legend)
        self.classes = classes
        self.overviews = overviews
        self.finished = False
        self.committed = False
        self._raster: AtomicWrite | None = None
        self._legend: AtomicWrite | None = None  # written only with classes
        try:
            self._raster = AtomicWrite(self.path)
            self.tmp = self._raster.tmp
            if classes is not None:
                self._legend = AtomicWrite(self.legend)
            self.dst = rasterio.open(self.tmp, "w", **class_raster_profile(width, height, crs, transform, block))
            usual_permissions(self.tmp)
            if classes is not None:
                self.dst.write_colormap(1, classes.colormap())
            if description:
                self.dst.set_band_description(1, description)
            if tags:
                self.dst.update_tags(**tags)
        except BaseException:
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
        """Overviews, close, legend: a complete file, still under its temporary name."""
        if self.finished:
            return
        with disk_full_guard(self.path.parent):  # judged while the partial file still takes its space
            if self.overviews:
                factors = overview_factors(self.dst.width, self.dst.height)
                if factors:
                    self.dst.build_overviews(factors, Resampling.nearest)
                    self.dst.update_tags(ns="rio_overview", resampling="nearest")
            self.dst.close()
            check_reads_back(self.tmp, self.path)
            if self._legend is not None:
                self._legend.tmp.write_text(pam_xml(self.classes))
        self.finished = True

    def commit(self) -> Path:
        """Rename the finished file, then its legend, to their destinations: each appears complete or not at all."""
        self.finish()
        self._raster.commit()
        if self._legend is not None:
            self._legend.commit()
        else:  # a stale legend of a replaced file would describe the wrong classes
            self.legend.unlink(missing_ok=True)
        self.committed = True
        return self.path

    def abort(self) -> None:
        dst = getattr(self, "dst", None)
        if dst is not None and not dst.closed:
            try:
                dst.close()
            except Exception:
                pass
        for write in (self._raster, self._legend):
            if write is not None:
                write.abort()

    def __enter__(self) -> "AtomicRasterWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self.committed:
            self.abort()

