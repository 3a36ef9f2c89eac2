"""predict's QGIS styles: beside every raster, inside the GeoPackage, beside other polygon formats."""

import sqlite3
import xml.etree.ElementTree as ET

import pytest

from caswit_geo.core.errors import ConfigError
from tests.helpers import PREDICT_CLASSES, colour_table_classes, qml_palette, rgb_image, run_predict, write_on_grid

pytestmark = pytest.mark.usefixtures("single_thread")


def categories(qml: str) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(value, label, RGB) of a categorised polygon style."""
    renderer = ET.fromstring(qml).find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class_id"
    symbols = {s.get("name"): s for s in renderer.find("symbols")}
    out = []
    for c in renderer.iter("category"):
        color = {p.get("k"): p.get("v") for p in symbols[c.get("symbol")].iter("prop")}["color"]
        out.append((int(c.get("value")), c.get("label"), tuple(int(v) for v in color.split(",")[:3])))
    return out


def test_styles_of_every_output(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(200, 260, seed=2))
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "map.tif", confidence=tmp_path / "conf.tif",
                vector=tmp_path / "poly.gpkg")
    expected = colour_table_classes(tmp_path / "map.tif", PREDICT_CLASSES)
    assert qml_palette(tmp_path / "map.qml") == expected  # 4 entries: nothing for 4..254, nothing for nodata
    gradient = ET.parse(tmp_path / "conf.qml").getroot().find("pipe/rasterrenderer")
    assert gradient.get("type") == "singlebandpseudocolor"
    assert not (tmp_path / "poly.qml").exists()  # the GeoPackage holds its own
    with sqlite3.connect(tmp_path / "poly.gpkg") as db:
        rows = db.execute("SELECT f_table_name, f_geometry_column, styleQML, useAsDefault FROM layer_styles").fetchall()
    assert [(r[0], r[1], r[3]) for r in rows] == [("poly", "geom", 1)]
    assert categories(rows[0][2]) == expected


def test_style_beside_other_polygon_formats_and_per_file_outputs(tmp_path, weights):
    for name in ("a", "b"):
        write_on_grid(tmp_path / "in" / f"{name}.tif", rgb_image(130, 140, seed=4), col=0 if name == "a" else 140)
    out = tmp_path / "out"
    out.mkdir()
    run_predict(weights, [tmp_path / "in"], out, confidence=out, vector=tmp_path / "poly.geojson")
    assert categories((tmp_path / "poly.qml").read_text()) == [(c.id, c.name, c.color) for c in PREDICT_CLASSES.classes]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{s}_{kind}.{ext}" for s in "ab" for kind in ("landcover", "confidence")
                            for ext in ("tif", "qml")] + [f"{s}_landcover.tif.aux.xml" for s in "ab"])
    for s in "ab":
        assert qml_palette(out / f"{s}_landcover.qml") == colour_table_classes(out / f"{s}_landcover.tif",
                                                                              PREDICT_CLASSES)


def test_outputs_sharing_a_style_file_are_refused(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(64, 64))
    with pytest.raises(ConfigError, match="would share the QGIS style file map.qml"):
        run_predict(weights, [tmp_path / "in.tif"], tmp_path / "map.tif", vector=tmp_path / "map.geojson")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
