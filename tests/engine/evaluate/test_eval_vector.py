"""eval --pred MAP --ref POLYGONS: the polygons burnt on the map's grid, scored inside the areas only."""

import numpy as np

from caswit_geo.core.spec import ClassInfo, ClassTable
from caswit_geo.engine.evaluate.evaluation import evaluate_rasters
from caswit_geo.geo.class_raster import model_tags
from tests.helpers import VECTOR_NAMES, run_cli, write_geotiff, write_vector_scene


def test_a_map_equal_to_the_polygons_scores_100_inside_the_areas(tmp_path, capsys):
    scene = write_vector_scene(tmp_path / "scene", size=(160, 224))
    label = scene["label"].copy()
    x_test = int(0.75 * 224)  # the test area: columns from 75 % on; wrong classes everywhere else
    label[:, :x_test] = (label[:, :x_test] + 1) % 3
    # the map names its classes in another order than the field's sorted values: matched by name
    order = ["water", "building", "field"]
    remap = np.asarray([order.index(n) for n in VECTOR_NAMES], np.uint8)
    table = ClassTable([ClassInfo(i, n, (i * 50, 100, 100)) for i, n in enumerate(order)])
    tags = model_tags("nano", "x.safetensors", table)
    pred = write_geotiff(tmp_path / "map.tif", remap[label], transform=scene["transform"], crs="EPSG:2154", nodata=255)
    import rasterio

    with rasterio.open(pred, "r+") as dst:
        dst.update_tags(**tags)
    test_only = tmp_path / "test_area.gpkg"
    import geopandas as gpd

    areas = gpd.read_file(scene["areas"])
    areas[areas["split"] == "test"].to_file(test_only)
    result = evaluate_rasters(pred, scene["labels_4326"], vector=dict(field="kind", areas=test_only,
                                                                      background="field"))
    assert result.metrics["mIoU"] == 1.0 and result.metrics["OA"] == 1.0
    assert result.report["evaluated_pixels"] == 160 * (224 - x_test)
    # over every area the wrong classes count
    code, out, _ = run_cli(["eval", "--pred", pred, "--ref", scene["labels_4326"], "--class-field", "kind",
                            "--areas", scene["areas"], "--background", "field"], capsys)
    assert code == 0 and "mIoU 100.00" not in out
    # a reference value the map does not know is named, with its count
    code, _, err = run_cli(["eval", "--pred", pred, "--ref", scene["labels"], "--class-field", "kind",
                            "--classes", _classes(tmp_path, ["building", "field"])], capsys)
    assert code != 0 and "'water'" in err and "polygons" in err and "Traceback" not in err


def _classes(tmp_path, names):
    import json

    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": [{"id": i, "name": n, "color": [0, 0, 0]} for i, n in enumerate(names)]}))
    return path
