"""Opens files with PyQGIS as a user's QGIS would and prints what it shows, as JSON (run by test_qgis_client.py).

Run with the system Python that has ``qgis`` (Debian's python3-qgis), offscreen::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 qgis_client.py FILE [FILE...]

For each file: the renderer type, its classes or categories (value, label,
colour) and the legend entries (label, colour). A GeoPackage is opened by
its layer, so QGIS applies the default style of its ``layer_styles`` table;
other files get the ``.qml`` beside them, as when a user opens them.
"""

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer  # noqa: E402


def rgb(color):
    return [color.red(), color.green(), color.blue()]


def raster(path):
    layer = QgsRasterLayer(path, os.path.basename(path))
    renderer = layer.renderer()
    out = {"valid": layer.isValid(), "renderer": renderer.type(), "bands": layer.bandCount(),
           "band_names": [layer.dataProvider().generateBandName(b) for b in range(1, layer.bandCount() + 1)]}
    if renderer.type() == "paletted":
        out["classes"] = [[c.value, c.label, rgb(c.color)] for c in renderer.classes()]
    out["legend"] = [[label, rgb(color)] for label, color in layer.legendSymbologyItems()]
    return out


def vector(path):
    uri = path
    if path.endswith(".gpkg"):
        uri = f"{path}|layername={os.path.splitext(os.path.basename(path))[0]}"
    layer = QgsVectorLayer(uri, os.path.basename(path), "ogr")
    renderer = layer.renderer()
    out = {"valid": layer.isValid(), "renderer": renderer.type(), "features": layer.featureCount()}
    if renderer.type() == "categorizedSymbol":
        out["attribute"] = renderer.classAttribute()
        out["classes"] = [[int(c.value()), c.label(), rgb(c.symbol().color())] for c in renderer.categories()]
    out["legend"] = [[item.label(), rgb(item.symbol().color())] for item in renderer.legendSymbolItems()]
    return out


def main(paths):
    app = QgsApplication([], False)
    app.initQgis()
    report = {p: raster(p) if p.endswith((".tif", ".tiff")) else vector(p) for p in paths}
    print(json.dumps(report))
    app.exitQgis()


if __name__ == "__main__":
    main(sys.argv[1:])
