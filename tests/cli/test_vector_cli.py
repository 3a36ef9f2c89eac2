"""train and eval --dataset vector from the command line: one-line errors, reports on the test area."""

import json

import geopandas as gpd
from shapely.geometry import Point

from caswit_geo.core.spec import ClassInfo, ClassTable
from tests.helpers import VECTOR_NAMES, run_cli, save_nano_checkpoint, write_vector_scene


def test_bad_labels_stop_train_with_one_line_and_no_run_folder(tmp_path, capsys):
    scene = write_vector_scene(tmp_path / "scene", size=(192, 256))
    base = ["train", "--dataset", "vector", "--images", scene["images"], "--labels", scene["labels"],
            "--areas", scene["areas"], "--model", "caswit-nano", "--workers", "0", "--out", tmp_path / "run"]
    code, _, err = run_cli(base + ["--class-field", "nature"], capsys)
    assert code != 0 and "labels.gpkg" in err and "no field 'nature'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    points = tmp_path / "points.gpkg"
    gpd.GeoDataFrame({"kind": ["water"]}, geometry=[Point(650_001, 6_859_999)], crs="EPSG:2154").to_file(points)
    code, _, err = run_cli(base[:6] + [points] + base[7:] + ["--class-field", "kind"], capsys)
    assert code != 0 and "points.gpkg" in err and "not polygons" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_eval_vector_scores_the_test_area_and_writes_the_report(tmp_path, capsys):
    scene = write_vector_scene(tmp_path / "scene", size=(192, 256))
    classes = ClassTable([ClassInfo(i, n, (40 * i, 90, 90)) for i, n in enumerate(VECTOR_NAMES)])
    weights = save_nano_checkpoint(tmp_path / "nano.safetensors", classes)
    code, out, err = run_cli(["eval", "--dataset", "vector", "--images", scene["images"], "--labels", scene["labels"],
                              "--class-field", "kind", "--areas", scene["areas"], "--background", "field",
                              "--split", "test", "-w", weights, "--workers", "0", "-o", tmp_path / "ev",
                              "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    test_columns = 256 - int(0.75 * 256)
    assert report["evaluated_pixels"] == 192 * test_columns  # the test area whole, nothing else
    assert report["dataset"] == "vector" and report["split"] == "test"
