"""The outputs as QGIS shows them: PyQGIS opens them (renderers, categories, legend).

QGIS runs in the system Python (Debian's python3-qgis), offscreen, in a
subprocess (``qgis_client.py``): the test suite's Python cannot import it.
Without it the test is skipped and says why (``.ci/run`` installs it).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PREDICT_CLASSES, rgb_image, run_predict, write_on_grid

SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT = Path(__file__).with_name("qgis_client.py")
QGIS_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "QT_QPA_PLATFORM": "offscreen",
            "HOME": os.environ.get("HOME", "/tmp"), "XDG_RUNTIME_DIR": "/tmp"}


def qgis_missing() -> str | None:
    """Why PyQGIS cannot run here, or None."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True, env=QGIS_ENV,
                           timeout=120)
    if probe.returncode:
        return f"{SYSTEM_PYTHON} cannot import qgis (apt-get install python3-qgis): {probe.stderr.strip()[-200:]}"
    return None


def open_in_qgis(*paths: Path) -> dict:
    proc = subprocess.run([SYSTEM_PYTHON, str(CLIENT), *map(str, paths)], capture_output=True, text=True,
                          env=QGIS_ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_qgis_shows_exactly_the_classes(tmp_path, weights):
    why = qgis_missing()
    if why:
        pytest.skip(why)
    write_on_grid(tmp_path / "in.tif", rgb_image(256, 300, seed=5))
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "map.tif", confidence=tmp_path / "conf.tif",
                probabilities=tmp_path / "prob.tif", vector=tmp_path / "poly.gpkg")
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "map2.tif", vector=tmp_path / "poly2.fgb")
    (tmp_path / "bare.tif").write_bytes((tmp_path / "map.tif").read_bytes())  # the same raster without its .qml
    report = open_in_qgis(tmp_path / "map.tif", tmp_path / "conf.tif", tmp_path / "prob.tif", tmp_path / "poly.gpkg",
                          tmp_path / "poly2.fgb", tmp_path / "bare.tif")
    expected = [[c.id, c.name, list(c.color)] for c in PREDICT_CLASSES.classes]
    legend = [[c.name, list(c.color)] for c in PREDICT_CLASSES.classes]

    classes = report[str(tmp_path / "map.tif")]
    assert classes["valid"] and classes["renderer"] == "paletted"
    assert classes["classes"] == expected  # not 256 entries: no black 4..255, no nodata
    assert classes["legend"] == legend
    # what the style is for: the colour table alone gives a legend of 256 entries
    assert len(report[str(tmp_path / "bare.tif")]["legend"]) == 256

    confidence = report[str(tmp_path / "conf.tif")]
    assert confidence["renderer"] == "singlebandpseudocolor" and len(confidence["legend"]) >= 2
    assert confidence["legend"][0][0] == "confidence 0 %" and confidence["legend"][-1][0] == "100 %"
    probabilities = report[str(tmp_path / "prob.tif")]
    assert probabilities["renderer"] == "singlebandpseudocolor" and probabilities["bands"] == len(expected)
    assert probabilities["band_names"] == [f"Band {c.id + 1}: {c.name}" for c in PREDICT_CLASSES.classes]

    for name in ("poly.gpkg", "poly2.fgb"):
        polygons = report[str(tmp_path / name)]
        assert polygons["valid"] and polygons["features"] > 0
        assert polygons["renderer"] == "categorizedSymbol" and polygons["attribute"] == "class_id"
        assert polygons["classes"] == expected
        assert polygons["legend"] == legend
