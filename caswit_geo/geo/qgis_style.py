"""QGIS styles of the outputs: the legend a user sees when the file is opened.

- class rasters: a paletted renderer listing exactly the checkpoint's classes
  (value, name, colour). Without it QGIS shows the GeoTIFF's whole colour
  table, 256 entries, the unused ones black and nodata among them;
- polygons: a categorised renderer on ``class_id``, one fill per class;
- confidence and probability rasters: a pseudocolour gradient over 0..100 %.

A style is a ``.qml`` file beside the data (``<name>.qml`` for
``<name>.tif``, which QGIS loads by itself) or, for a GeoPackage, a row of its
``layer_styles`` table (:func:`write_gpkg_style`), which is where QGIS saves a
style "in the database" and which it loads as the layer's default. The XML
is the subset that QGIS 3.x writes for these renderers; QGIS fills in the
rest with its defaults.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

from caswit_geo.core.spec import ClassTable

QGIS_VERSION = "3.22.0"  # the oldest format these files are written for (QGIS reads older styles as is)
CLASS_FIELD = "class_id"  # the polygons' attribute that the categories match (vectorize.py)
OUTLINE = "35,35,35,255"  # QGIS's default polygon outline
# confidence / probability: dark purple (low) to yellow (high), viridis' ends and middle
GRADIENT = ((0, (68, 1, 84)), (50, (33, 145, 140)), (100, (253, 231, 37)))


def style_path(path: str | Path) -> Path:
    """Where QGIS looks for the style of a file layer: its name with ``.qml`` instead of the last suffix."""
    return Path(path).with_suffix(".qml")


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _document(*, layer: str) -> ET.Element:
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="AllStyleCategories")
    if layer == "raster":
        ET.SubElement(ET.SubElement(root, "pipe"), "provider")
    return root


def _text(root: ET.Element) -> str:
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode") + "\n"


def paletted_qml(classes: ClassTable, band: int = 1) -> str:
    """Class raster style: one palette entry per class, nothing for unused values or nodata."""
    root = _document(layer="raster")
    renderer = ET.SubElement(root.find("pipe"), "rasterrenderer", type="paletted", band=str(band), opacity="1",
                             alphaBand="-1", nodataColor="")
    palette = ET.SubElement(renderer, "colorPalette")
    for c in classes.classes:
        ET.SubElement(palette, "paletteEntry", value=str(c.id), color=_hex(c.color), alpha="255", label=c.name)
    return _text(root)


def gradient_qml(label: str, band: int = 1, minimum: int = 0, maximum: int = 100) -> str:
    """Percent raster style (confidence, probability): a colour ramp from ``minimum`` to ``maximum``.

    ``label`` names the quantity in the legend (its ends read "``label`` 0 %" and "100 %").
    """
    root = _document(layer="raster")
    renderer = ET.SubElement(root.find("pipe"), "rasterrenderer", type="singlebandpseudocolor", band=str(band),
                             opacity="1", alphaBand="-1", nodataColor="", classificationMin=str(minimum),
                             classificationMax=str(maximum))
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader", colorRampType="INTERPOLATED",
                           classificationMode="1", clip="0", minimumValue=str(minimum), maximumValue=str(maximum))
    span = maximum - minimum
    for share, rgb in GRADIENT:
        value = minimum + span * share // 100
        ET.SubElement(shader, "item", value=str(value), color=_hex(rgb), alpha="255",
                      label=f"{label} {value} %" if share == 0 else f"{value} %")
    return _text(root)


def _fill_symbol(name: str, rgb: tuple[int, int, int]) -> ET.Element:
    symbol = ET.Element("symbol", type="fill", name=name, alpha="1", clip_to_extent="1", force_rhr="0")
    layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "pass": "0", "enabled": "1", "locked": "0"})
    options = ET.SubElement(layer, "Option", type="Map")
    props = {"color": f"{rgb[0]},{rgb[1]},{rgb[2]},255", "outline_color": OUTLINE, "outline_style": "solid",
             "outline_width": "0.26", "outline_width_unit": "MM", "style": "solid", "joinstyle": "bevel"}
    for k, v in props.items():
        ET.SubElement(options, "Option", name=k, value=v, type="QString")
    for k, v in props.items():  # the older form, which QGIS before 3.26 reads
        ET.SubElement(layer, "prop", k=k, v=v)
    return symbol


def categorized_qml(classes: ClassTable, field: str = CLASS_FIELD) -> str:
    """Polygon style: categories on ``field``, one fill per class in its colour, labelled with its name."""
    root = _document(layer="vector")
    renderer = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr=field, symbollevels="0",
                             enableorderby="0", forceraster="0")
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, c in enumerate(classes.classes):
        ET.SubElement(categories, "category", render="true", symbol=str(i), value=str(c.id), label=c.name)
        symbols.append(_fill_symbol(str(i), c.color))
    return _text(root)


def categorized_sld(classes: ClassTable, layer: str, field: str = CLASS_FIELD) -> str:
    """The same categories as an OGC SLD 1.1 document (the ``styleSLD`` column; GeoServer and others read it)."""
    ns = {"": "http://www.opengis.net/sld", "ogc": "http://www.opengis.net/ogc", "se": "http://www.opengis.net/se"}
    for prefix, uri in ns.items():
        ET.register_namespace(prefix, uri)
    sld, se, ogc = (f"{{{ns[p]}}}" for p in ("", "se", "ogc"))
    root = ET.Element(f"{sld}StyledLayerDescriptor", version="1.1.0")
    named = ET.SubElement(root, f"{sld}NamedLayer")
    ET.SubElement(named, f"{se}Name").text = layer
    style = ET.SubElement(ET.SubElement(named, f"{sld}UserStyle"), f"{se}FeatureTypeStyle")
    for c in classes.classes:
        rule = ET.SubElement(style, f"{se}Rule")
        ET.SubElement(rule, f"{se}Name").text = c.name
        test = ET.SubElement(ET.SubElement(rule, f"{ogc}Filter"), f"{ogc}PropertyIsEqualTo")
        ET.SubElement(test, f"{ogc}PropertyName").text = field
        ET.SubElement(test, f"{ogc}Literal").text = str(c.id)
        poly = ET.SubElement(rule, f"{se}PolygonSymbolizer")
        ET.SubElement(ET.SubElement(poly, f"{se}Fill"), f"{se}SvgParameter", name="fill").text = _hex(c.color)
        stroke = ET.SubElement(poly, f"{se}Stroke")
        ET.SubElement(stroke, f"{se}SvgParameter", name="stroke").text = "#232323"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


# The table as QGIS creates it (QgsOgrProviderUtils, GeoPackage), registered as an attributes table.
LAYER_STYLES_SQL = (
    'CREATE TABLE IF NOT EXISTS "layer_styles" ("id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256), '
    '"f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, '
    '"useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30), '
    "\"update_time\" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)


def write_gpkg_style(gpkg: str | Path, layer: str, qml: str, sld: str = "", name: str | None = None,
                     description: str = "") -> None:
    """Store ``qml`` as the default style of ``layer`` in the GeoPackage ``gpkg`` (its ``layer_styles`` table).

    As QGIS does when it saves a style in the database: the table is
    created if missing and registered in ``gpkg_contents``; an earlier
    default style of the same layer is no longer the default, and an earlier
    style of the same name for that layer (a replaced layer's) is replaced.
    The geometry column is the layer's own (from ``gpkg_geometry_columns``).
    """
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    with contextlib.closing(sqlite3.connect(str(gpkg))) as db, db:
        row = db.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)).fetchone()
        if row is None:
            raise ValueError(f"{gpkg}: no layer {layer!r} with geometry to style")
        db.execute(LAYER_STYLES_SQL)
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, last_change) "
            "VALUES ('layer_styles', 'attributes', 'layer_styles', ?)", (now,)
        )
        db.execute("DELETE FROM layer_styles WHERE f_table_name = ? AND styleName = ?", (layer, name or layer))
        db.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
            "styleQML, styleSLD, useAsDefault, description, owner, ui, update_time) "
            "VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL, ?)",
            (layer, row[0], name or layer, qml, sld, description, now),
        )


__all__ = ["categorized_qml", "categorized_sld", "gradient_qml", "paletted_qml", "style_path", "write_gpkg_style"]
