"""QGIS styles: the XML lists exactly the classes of the table, in their colours; GeoPackage layer_styles rows."""

import sqlite3
import xml.etree.ElementTree as ET

import geopandas as gpd
import pytest
import shapely

from caswit_geo.core.spec import ClassInfo, ClassTable
from caswit_geo.geo.qgis_style import (
    categorized_qml,
    categorized_sld,
    gradient_qml,
    paletted_qml,
    style_path,
    write_gpkg_style,
)

CLASSES = ClassTable([ClassInfo(0, "building", (219, 14, 154)), ClassInfo(1, "water & <river>", (21, 83, 174)),
                      ClassInfo(2, "forest", (25, 74, 38))])


def rgb(text: str) -> tuple[int, int, int]:
    """'#db0e9a' or '219,14,154,255' -> (219, 14, 154)."""
    if text.startswith("#"):
        return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
    return tuple(int(v) for v in text.split(",")[:3])


@pytest.mark.parametrize("name, expected", [("map.tif", "map.qml"), ("a.b.tif", "a.b.qml"),
                                            ("out/poly.geojson", "out/poly.qml")])
def test_style_path_is_the_file_qgis_looks_for(name, expected):
    assert str(style_path(name)) == expected


def test_paletted_style_lists_exactly_the_classes():
    root = ET.fromstring(paletted_qml(CLASSES))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = [(int(e.get("value")), e.get("label"), rgb(e.get("color"))) for e in renderer.iter("paletteEntry")]
    assert entries == [(c.id, c.name, c.color) for c in CLASSES.classes]  # no 3..255, no nodata entry
    cmap = CLASSES.colormap()
    assert all(cmap[v][:3] == color for v, _, color in entries)


def test_gradient_style_spans_percent():
    renderer = ET.fromstring(gradient_qml("confidence", band=2)).find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandpseudocolor" and renderer.get("band") == "2"
    shader = renderer.find("rastershader/colorrampshader")
    items = [int(i.get("value")) for i in shader.iter("item")]
    assert (shader.get("minimumValue"), shader.get("maximumValue")) == ("0", "100")
    assert items[0] == 0 and items[-1] == 100 and items == sorted(items)
    assert next(shader.iter("item")).get("label") == "confidence 0 %"


def test_categorized_style_one_fill_per_class_in_its_colour():
    renderer = ET.fromstring(categorized_qml(CLASSES)).find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class_id"
    cats = [(int(c.get("value")), c.get("label"), c.get("symbol")) for c in renderer.iter("category")]
    assert [(v, n) for v, n, _ in cats] == [(c.id, c.name) for c in CLASSES.classes]
    symbols = {s.get("name"): s for s in renderer.find("symbols")}
    for (value, _, symbol), c in zip(cats, CLASSES.classes):
        props = {p.get("k"): p.get("v") for p in symbols[symbol].iter("prop")}
        options = {o.get("name"): o.get("value") for o in symbols[symbol].iter("Option") if o.get("name")}
        assert rgb(props["color"]) == rgb(options["color"]) == c.color


def test_sld_rules_match_the_classes():
    root = ET.fromstring(categorized_sld(CLASSES, "landcover"))
    ns = {"se": "http://www.opengis.net/se", "ogc": "http://www.opengis.net/ogc"}
    rules = root.findall(".//se:Rule", ns)
    got = [(r.find("se:Name", ns).text, int(r.find(".//ogc:Literal", ns).text),
            rgb(r.find(".//se:Fill/se:SvgParameter", ns).text)) for r in rules]
    assert got == [(c.name, c.id, c.color) for c in CLASSES.classes]


def polygons(path, layer):
    gdf = gpd.GeoDataFrame({"class_id": [0, 2]}, geometry=[shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1)],
                           crs="EPSG:2154")
    gdf.to_file(path, layer=layer, driver="GPKG", engine="pyogrio")


def test_gpkg_style_row_as_qgis_writes_it(tmp_path):
    gpkg = tmp_path / "v.gpkg"
    polygons(gpkg, "landcover")
    write_gpkg_style(gpkg, "landcover", "<qgis>user's</qgis>", name="mine")  # a style the user saved
    write_gpkg_style(gpkg, "landcover", "<qgis>first</qgis>")
    write_gpkg_style(gpkg, "landcover", categorized_qml(CLASSES), categorized_sld(CLASSES, "landcover"))
    with sqlite3.connect(gpkg) as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(layer_styles)")]
        rows = db.execute("SELECT f_table_name, f_geometry_column, styleName, styleQML, useAsDefault, update_time "
                          "FROM layer_styles ORDER BY id").fetchall()
        contents = db.execute("SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'").fetchall()
    assert cols == ["id", "f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName",
                    "styleQML", "styleSLD", "useAsDefault", "description", "owner", "ui", "update_time"]
    assert contents == [("attributes",)]
    # one default: ours; the user's style stays, our earlier one of the same name is replaced
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [("landcover", "geom", "mine", 0),
                                                         ("landcover", "geom", "landcover", 1)]
    assert rows[1][3] == categorized_qml(CLASSES) and rows[1][5].endswith("Z")
    # the GeoPackage still reads as one polygon layer (plus the attributes table)
    assert len(gpd.read_file(gpkg, layer="landcover")) == 2


def test_gpkg_style_needs_the_layer(tmp_path):
    gpkg = tmp_path / "v.gpkg"
    polygons(gpkg, "landcover")
    with pytest.raises(ValueError, match="no layer 'other'"):
        write_gpkg_style(gpkg, "other", "<qgis/>")
