"""Streaming part files into one output raster: a VRT over the parts, copied by GDAL.

The parts of a raster tile it without gaps or overlaps and their offsets
are multiples of the output block, so each block of the output comes from
one part: GDAL reads the parts through a VRT and writes every output block
once, in order, with memory bounded by its block cache.

Two layouts (``fmt``):

- ``cog``: a Cloud Optimized GeoTIFF (GDAL's COG driver): tiled, DEFLATE
  with a predictor, overviews inside the file before the full-resolution
  data, so that a viewer or a web client reads a screenful of it at any
  scale with a few range requests;
- ``gtiff``: a tiled DEFLATE GeoTIFF whose overviews are appended after the
  data (the layout of earlier versions).

Their creation options are ``profiles.py``'s.

A COG's overviews are the pyramid the units computed (``pyramid.py``:
the majority class of each 2 x 2 block, level after level, so that a small
class does not speckle the view; for confidence, the mean of the valid
values, since nearest would alias), declared in the VRT and copied, not
recomputed: building overviews is most of the cost of a COG. A plain
GeoTIFF gets GDAL's overviews after its data, as in earlier versions:
NEAREST for classes, AVERAGE for confidence. Nodata (255) never enters an
overview value.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.shutil import copy as gdal_copy
from rasterio.windows import Window

from caswit_geo.geo.class_raster import overview_factors
from caswit_geo.geo.profiles import NODATA, cog_average_options, cog_options, gtiff_options


def parts_vrt(
    parts: Sequence[tuple],
    width: int,
    height: int,
    crs: CRS | None,
    transform: Affine,
    band: int | Sequence[int] = 1,
    *,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    description: str | Sequence[str] = "",
    tags: dict[str, str] | None = None,
    composite: bool = False,
    overviews: Sequence[str | Path] = (),
) -> str:
    """VRT XML of one band of ``parts`` on one grid (or of several: ``band`` and ``description`` lists).

    A part is (window in the VRT's pixels, file) or (window, file, window
    of the file to read: default its top-left corner of the same size).
    ``composite``: parts may overlap; their nodata is transparent (a later
    part's nodata never hides an earlier part's class). ``overviews``:
    rasters (band 1 of each) holding the overview levels, in order.
    """
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs is not None:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in transform.to_gdal())
    if tags:
        md = ET.SubElement(root, "Metadata")
        for key, value in tags.items():
            ET.SubElement(md, "MDI", key=key).text = value
    bands = [band] if isinstance(band, int) else list(band)
    descriptions = [description] if isinstance(description, str) else list(description)
    if len(descriptions) != len(bands) or (len(bands) > 1 and (colormap is not None or overviews)):
        raise ValueError("one description per band; a colour table and overviews are for one band")
    for i, (source_band, text) in enumerate(zip(bands, descriptions)):
        vb = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band=str(i + 1))
        if text:
            ET.SubElement(vb, "Description").text = text
        ET.SubElement(vb, "NoDataValue").text = str(NODATA)
        if colormap is not None:
            ET.SubElement(vb, "ColorInterp").text = "Palette"
            table = ET.SubElement(vb, "ColorTable")
            for value in range(256):
                r, g, b, a = colormap.get(value, (0, 0, 0, 0))
                ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b), c4=str(a))
        else:
            ET.SubElement(vb, "ColorInterp").text = "Gray"
        _sources(vb, parts, source_band, composite)
    for path in overviews:
        ov = ET.SubElement(vb, "Overview")
        ET.SubElement(ov, "SourceFilename", relativeToVRT="0").text = os.path.abspath(path)
        ET.SubElement(ov, "SourceBand").text = "1"
    return ET.tostring(root, encoding="unicode")


def _sources(vb: ET.Element, parts: Sequence[tuple], band: int, composite: bool) -> None:
    """The parts' ``band`` placed in the VRT band ``vb``."""
    for part in parts:
        window, path = part[0], part[1]
        w, h = int(window.width), int(window.height)
        read = part[2] if len(part) > 2 else Window(0, 0, w, h)
        src = ET.SubElement(vb, "ComplexSource" if composite else "SimpleSource")
        ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = os.path.abspath(path)
        ET.SubElement(src, "SourceBand").text = str(band)
        ET.SubElement(src, "SrcRect", xOff=str(int(read.col_off)), yOff=str(int(read.row_off)), xSize=str(w),
                      ySize=str(h))
        ET.SubElement(src, "DstRect", xOff=str(int(window.col_off)), yOff=str(int(window.row_off)),
                      xSize=str(w), ySize=str(h))
        if composite:
            ET.SubElement(src, "NODATA").text = str(NODATA)


def write_raster(source: str, dest: str | Path, *, fmt: str, block: int, is_classes: bool,
                 cache_mb: int = 256, average_overviews: bool = False) -> None:
    """Copy ``source`` (a VRT over parts) to ``dest`` as a COG or a tiled GeoTIFF with overviews.

    A COG takes the overviews the source declares (``parts_vrt(overviews=)``,
    the units' pyramids); a source without them gets none, unless
    ``average_overviews``: GDAL then computes them (average), reading the
    data once more. A GeoTIFF gets overviews computed by GDAL after its data.
    """
    if fmt not in ("cog", "gtiff"):
        raise ValueError(f"unknown output format {fmt!r}")
    with rasterio.Env(GDAL_CACHEMAX=cache_mb * 2**20, GDAL_NUM_THREADS="ALL_CPUS"):
        with rasterio.open(source) as src:
            width, height = src.width, src.height
            if fmt == "cog" and average_overviews:
                gdal_copy(src, dest, **cog_average_options(block))
            elif fmt == "cog":
                gdal_copy(src, dest, **cog_options(block, existing_overviews=bool(src.overviews(1))))
            else:
                gdal_copy(src, dest, **gtiff_options(width, height, block))
        if fmt == "gtiff":
            factors = overview_factors(width, height)
            if factors:
                resampling = Resampling.nearest if is_classes else Resampling.average
                with rasterio.open(dest, "r+") as dst:
                    dst.build_overviews(factors, resampling)
                    dst.update_tags(ns="rio_overview", resampling=resampling.name)
    Path(f"{dest}.aux.xml").unlink(missing_ok=True)  # GDAL's own sidecar, if any: the legend is written apart
