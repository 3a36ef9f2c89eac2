"""eval --pred/--ref against the legend our maps carry (review item 7 of "Nothing trusted, round 3")."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.core.spec import ClassInfo, ClassTable
from caswit_geo.engine.evaluate.evaluation import evaluate_rasters
from caswit_geo.geo.class_raster import model_tags
from tests.helpers import run_cli, write_geotiff

LEGEND = ClassTable([ClassInfo(0, "ground", (0, 0, 0)), ClassInfo(1, "roof", (255, 0, 0)),
                     ClassInfo(2, "tree", (0, 255, 0))])
CRS_, T = CRS.from_epsg(2154), from_origin(650_000, 6_860_000, 0.2, 0.2)


def a_map(path, data: np.ndarray, legend: ClassTable | None = LEGEND):
    write_geotiff(path, data[None].astype(np.uint8), crs=CRS_, transform=T, nodata=255)
    if legend is not None:
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(**model_tags("caswit-nano", "m.safetensors", legend))
    return path


def test_reference_value_outside_the_maps_legend_is_named_with_its_count(tmp_path, capsys):
    pred = np.zeros((8, 8), int)
    pred[:4] = 1
    ref = pred.copy()
    ref[0, :3] = 200  # not a class of the map
    ref[7, 7] = 3  # the first id past the legend
    a_map(tmp_path / "map.tif", pred)
    write_geotiff(tmp_path / "ref.tif", ref[None].astype(np.uint8), crs=CRS_, transform=T)
    with pytest.raises(InputError, match=r"ref\.tif: value 200 on 3 px is not a class of the legend of .*map\.tif "
                                         r"\(ids 0\.\.2, 255 = no data\); 1 other stray value"):
        evaluate_rasters(tmp_path / "map.tif", tmp_path / "ref.tif", tile_size=4)
    code, _, err = run_cli(["eval", "--pred", str(tmp_path / "map.tif"), "--ref", str(tmp_path / "ref.tif"),
                            "--no-progress"], capsys)
    assert code == 1 and "value 200 on 3 px" in err and len(err.strip().splitlines()) == 1


def test_scores_use_the_maps_class_names_and_all_its_classes(tmp_path):
    pred = np.zeros((6, 6), int)
    pred[:3] = 1
    ref = pred.copy()
    ref[0, 0] = 0  # one roof pixel is ground in the reference
    a_map(tmp_path / "map.tif", pred)
    write_geotiff(tmp_path / "ref.tif", ref[None].astype(np.uint8), crs=CRS_, transform=T)
    res = evaluate_rasters(tmp_path / "map.tif", tmp_path / "ref.tif", tile_size=6)
    assert [r["name"] for r in res.per_class] == ["ground", "roof", "tree"]
    assert res.confusion.shape == (3, 3)  # tree is in the legend though neither raster holds it
    # by hand: ground TP 18, FP 1 -> IoU 18/19; roof TP 17, FN 1 -> 17/18; tree absent: not scored
    assert res.per_class[0]["iou"] == pytest.approx(18 / 19) and res.per_class[1]["iou"] == pytest.approx(17 / 18)
    assert res.per_class[2]["iou"] is None
    assert res.metrics["mIoU"] == pytest.approx((18 / 19 + 17 / 18) / 2)


def test_a_map_without_legend_keeps_numbered_classes(tmp_path):
    data = np.array([[0, 1], [2, 1]])
    a_map(tmp_path / "map.tif", data, legend=None)
    write_geotiff(tmp_path / "ref.tif", data[None].astype(np.uint8), crs=CRS_, transform=T)
    res = evaluate_rasters(tmp_path / "map.tif", tmp_path / "ref.tif", tile_size=2)
    assert [r["name"] for r in res.per_class] == ["class_0", "class_1", "class_2"]


def test_tiny_tile_size_on_a_large_map_is_bounded(tmp_path):
    data = np.zeros((1000, 1000), np.uint8)
    a_map(tmp_path / "map.tif", data)
    write_geotiff(tmp_path / "ref.tif", data[None], crs=CRS_, transform=T)
    with pytest.raises(ConfigError, match=r"--tile-size 1: 1,000,000 windows over the 1000x1000 px of .*ref\.tif, "
                                          r"more than 200,000; use --tile-size 3 or more"):
        evaluate_rasters(tmp_path / "map.tif", tmp_path / "ref.tif", tile_size=1)
