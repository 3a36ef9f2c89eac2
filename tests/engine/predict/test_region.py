"""predict --roi / --bbox: the whole map inside the region, nodata outside, only the tiles meeting it run;
--stats: class areas per feature and file against a brute-force count of the map.

Every reference is independent of the code under test: the region's pixels
are rasterio's ``rasterize`` of the polygons reprojected by geopandas, the
whole map is a run without a region. The runs use one tile a batch, so a
tile's forward pass is the same in a run over the region and over the whole
mosaic (which batch it shares is the only thing that differs).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import rasterize

from caswit_geo.core.errors import ConfigError, OutputError
from caswit_geo.engine.predict.config import PredictConfig
from caswit_geo.engine.predict.plan import plan_predict
from tests.helpers import (
    NANO_TILE,
    PREDICT_CLASSES,
    X0,
    Y0,
    grid_transform,
    interrupt_forward_pass,
    rgb_image,
    run_cli,
    run_predict,
    write_on_grid,
)

pytestmark = pytest.mark.usefixtures("single_thread")
W, H = 700, 600
A = shapely.Polygon([(X0 + 30, Y0 - 20), (X0 + 90, Y0 - 40), (X0 + 70, Y0 - 100), (X0 + 25, Y0 - 80)])
B = shapely.box(X0 + 60, Y0 - 70, X0 + 110, Y0 - 30).difference(shapely.box(X0 + 80, Y0 - 60, X0 + 90, Y0 - 50))


@pytest.fixture(scope="module")
def scene(tmp_path_factory, weights):
    """The mosaic, its whole map (classes, confidence, probabilities) and a two-feature ROI in EPSG:4326."""
    folder = tmp_path_factory.mktemp("region")
    image = write_on_grid(folder / "ortho.tif", rgb_image(H, W, seed=2), tiled=True, blockxsize=256, blockysize=256)
    whole = run_predict(weights, [image], folder / "whole.tif", confidence=folder / "whole_c.tif",
                        probabilities=folder / "whole_p.tif", batch_size=1)
    roi = folder / "roi.gpkg"
    gpd.GeoDataFrame({"name": ["a", "b"], "class": [3, 4]}, geometry=[A, B], crs="EPSG:2154").to_crs(
        "EPSG:4326").to_file(roi)
    maps = {}
    for name in ("whole.tif", "whole_c.tif", "whole_p.tif"):
        with rasterio.open(folder / name) as src:
            maps[name] = src.read()
    return dict(folder=folder, image=image, roi=roi, whole=whole, maps=maps)


def region_mask(roi) -> np.ndarray:
    """The mosaic's pixels whose centre lies in a feature: rasterio's rasterize of geopandas' reprojection."""
    geoms = gpd.read_file(roi).to_crs("EPSG:2154").geometry
    return rasterize([(g, 1) for g in geoms], out_shape=(H, W), transform=grid_transform(), fill=0,
                     dtype="uint8").astype(bool)


def offset(path) -> tuple[int, int, np.ndarray]:
    """(col, row) of the raster in the mosaic's pixels, and its pixels."""
    with rasterio.open(path) as src:
        col, row = ~grid_transform() * (src.transform.c, src.transform.f)
        assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6  # on the mosaic's pixel grid
        return int(round(col)), int(round(row)), src.read()


def tiles_meeting(mask: np.ndarray) -> int:
    """Tiles of the mosaic's grid (anchored at its corner) with a pixel of ``mask``."""
    return sum(mask[r : r + NANO_TILE, c : c + NANO_TILE].any()
               for r in range(0, H, NANO_TILE) for c in range(0, W, NANO_TILE))


def test_roi_in_4326_equals_the_whole_map_inside_and_is_nodata_outside(tmp_path, weights, scene):
    res = run_predict(weights, [scene["image"]], tmp_path / "map.tif", confidence=tmp_path / "c.tif",
                      probabilities=tmp_path / "p.tif", roi=scene["roi"], batch_size=1)
    mask = region_mask(scene["roi"])
    rows, cols = np.nonzero(mask)
    assert res.tiles_run == tiles_meeting(mask) < scene["whole"].tiles_run  # only the tiles meeting the region
    for name, whole in (("map.tif", "whole.tif"), ("c.tif", "whole_c.tif"), ("p.tif", "whole_p.tif")):
        c, r, got = offset(tmp_path / name)
        _, h, w = got.shape
        # the output covers the region's box, snapped to the pixel grid
        assert c <= cols.min() and r <= rows.min() and c + w >= cols.max() + 1 and r + h >= rows.max() + 1
        assert w <= cols.max() - cols.min() + 3 and h <= rows.max() - rows.min() + 3
        inside = mask[r : r + h, c : c + w]
        ref = scene["maps"][whole][:, r : r + h, c : c + w]
        np.testing.assert_array_equal(got[:, inside], ref[:, inside])  # the whole map, pixel for pixel
        assert (got[:, ~inside] == 255).all() and (~inside).sum() > 1000  # nodata outside the polygons
    assert res.region_km2 == pytest.approx(shapely.union_all([A, B]).area / 1e6, rel=1e-3)


@pytest.mark.parametrize("crs", [None, "EPSG:4326"])
def test_bbox_in_the_mosaic_crs_or_another(tmp_path, weights, scene, crs):
    box = (X0 + 33.33, Y0 - 81.13, X0 + 57.77, Y0 - 44.93)  # no pixel centre on an edge
    if crs is None:
        text = ",".join(map(str, box))
        reference = shapely.box(*box)
    else:
        reference = gpd.GeoSeries([shapely.box(*box)], crs="EPSG:2154").to_crs(crs)
        text = ",".join(f"{v:.9f}" for v in reference.total_bounds)  # the 4326 box around the L93 one
        reference = gpd.GeoSeries([shapely.box(*reference.total_bounds)], crs=crs).segmentize(1e-5).to_crs(
            "EPSG:2154")[0]
    res = run_predict(weights, [scene["image"]], tmp_path / "map.tif", bbox=text, bbox_crs=crs, batch_size=1)
    mask = rasterize([(reference, 1)], out_shape=(H, W), transform=grid_transform(), fill=0, dtype="uint8") > 0
    c, r, got = offset(tmp_path / "map.tif")
    _, h, w = got.shape
    inside = mask[r : r + h, c : c + w]
    assert inside.sum() == mask.sum() > 20000
    np.testing.assert_array_equal(got[0][inside], scene["maps"]["whole.tif"][0, r : r + h, c : c + w][inside])
    assert (got[0][~inside] == 255).all()
    assert res.tiles_run == tiles_meeting(mask)


def test_stats_per_feature_and_file_against_a_brute_force_count(tmp_path, weights, scene, capsys):
    out = tmp_path / "map.tif"
    code, _, err = run_cli(["predict", scene["image"], "--out", out, "--weights", weights, "--roi", scene["roi"],
                            "--stats", tmp_path / "stats.csv", "--workers", 0, "--batch-size", 1], capsys)
    assert code == 0, err
    whole = scene["maps"]["whole.tif"][0]
    with open(tmp_path / "stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["zone", "feature", "file", "name", "roi_class"]  # attributes kept, renamed if ours
    names = [*PREDICT_CLASSES.names, "nodata"]
    for i, (geom, name) in enumerate(zip(gpd.read_file(scene["roi"]).to_crs("EPSG:2154").geometry, "ab")):
        alone = rasterize([(geom, 1)], out_shape=(H, W), transform=grid_transform(), fill=0, dtype="uint8") > 0
        mine = [r for r in rows if r["zone"] == "feature" and r["feature"] == str(i)]
        assert {r["name"] for r in mine} == {name}
        counts = np.bincount(whole[alone], minlength=256)
        for r in mine:
            k = names.index(r["class"])
            assert int(r["pixels"]) == counts[k if k < len(PREDICT_CLASSES) else 255]
            assert float(r["area_m2"]) == pytest.approx(int(r["pixels"]) * 0.04, abs=1e-3)
        # the class areas add up to the feature's pixel area, the shares to 100 %
        assert sum(float(r["area_m2"]) for r in mine) == pytest.approx(alone.sum() * 0.04, abs=1e-2)
        assert sum(float(r["share_pct"]) for r in mine) == pytest.approx(100, abs=1e-2)
    union = region_mask(scene["roi"])
    for zone in ("file", "total"):
        mine = [r for r in rows if r["zone"] == zone]
        assert sum(int(r["pixels"]) for r in mine) == union.sum()
    assert {r["file"] for r in rows if r["zone"] == "file"} == {"ortho.tif"}
    assert "stats feature 0:" in err and "stats total map.tif:" in err  # the summary prints them
    # an existing file needs --overwrite, and nothing else is written then
    (tmp_path / "other.json").write_text("{}")
    code, _, err = run_cli(["predict", scene["image"], "--out", tmp_path / "again.tif", "--weights", weights,
                            "--roi", scene["roi"], "--stats", tmp_path / "other.json", "--workers", 0], capsys)
    assert code != 0 and "--stats" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "again.tif").exists()


def test_stats_json_without_region_has_a_zone_per_file_and_the_total(tmp_path, weights):
    data = rgb_image(256, 384, seed=1)
    write_on_grid(tmp_path / "in" / "left.tif", data[:, :, :256])
    write_on_grid(tmp_path / "in" / "right.tif", data[:, :, 256:], col=256)
    run_predict(weights, [tmp_path / "in"], tmp_path / "map.tif", stats=tmp_path / "s.json")
    zones = json.loads((tmp_path / "s.json").read_text())
    assert [(z["zone"], z["file"]) for z in zones] == [("file", "left.tif"), ("file", "right.tif"),
                                                       ("total", "map.tif")]
    with rasterio.open(tmp_path / "map.tif") as src:
        m = src.read(1)
    for z, part in zip(zones, (m[:, :256], m[:, 256:], m)):
        counts = np.bincount(part.ravel(), minlength=256)
        got = {c["class_id"]: c["pixels"] for c in z["classes"]}
        assert all(got.get(k, 0) == counts[k] for k in (*range(len(PREDICT_CLASSES)), 255))


def test_errors_are_one_line_and_write_nothing(tmp_path, weights, scene, capsys):
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[shapely.box(X0 + 900, Y0 - 900, X0 + 950, Y0 - 850)], crs="EPSG:2154").to_file(far)
    lines = tmp_path / "lines.gpkg"
    gpd.GeoDataFrame(geometry=[A, shapely.LineString([(X0, Y0), (X0 + 9, Y0 - 9)])], crs="EPSG:2154").to_file(lines)
    cases = [(["--roi", far], "outside the imagery"), (["--roi", lines], "points or lines"),
             (["--roi", tmp_path / "missing.gpkg"], "file not found"),
             (["--bbox", "1,2,3"], "XMIN,YMIN,XMAX,YMAX"), (["--roi", far, "--bbox", "1,2,3,4"], "choose one"),
             (["--bbox", f"{X0 + 10},{Y0 - 30},{X0 + 20},{Y0 - 20}", "--stats", tmp_path / "s.txt"], ".csv or .json")]
    for extra, message in cases:
        code, _, err = run_cli(["predict", scene["image"], "--out", tmp_path / "map.tif", "--weights", weights,
                                *extra], capsys)
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["far.geojson", "lines.gpkg"]


def test_resume_with_another_region_is_refused(tmp_path, weights, scene, monkeypatch):
    box = f"{X0 + 10},{Y0 - 110},{X0 + 120},{Y0 - 20}"
    interrupt_forward_pass(monkeypatch, 7)  # units of 4 tiles: the first is done
    with pytest.raises(KeyboardInterrupt):
        run_predict(weights, [scene["image"]], tmp_path / "map.tif", bbox=box, unit_size=NANO_TILE, batch_size=1)
    assert (tmp_path / ".map.tif.caswit-job").is_dir()
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"--resume: the region \(--roi, --bbox.* but the interrupted job used"):
        run_predict(weights, [scene["image"]], tmp_path / "map.tif", roi=scene["roi"], unit_size=NANO_TILE,
                    batch_size=1, resume=True)
    res = run_predict(weights, [scene["image"]], tmp_path / "map.tif", bbox=box, unit_size=NANO_TILE, batch_size=1,
                      resume=True)
    assert res.complete and res.units_before > 0
    c, r, got = offset(tmp_path / "map.tif")
    np.testing.assert_array_equal(got[0], scene["maps"]["whole.tif"][0, r : r + got.shape[1], c : c + got.shape[2]])


def test_shards_of_a_region_equal_one_run(tmp_path, weights, scene):
    kw = dict(roi=scene["roi"], unit_size=NANO_TILE, batch_size=1)
    one = run_predict(weights, [scene["image"]], tmp_path / "one.tif", **kw)
    for shard in ((1, 3), (0, 3), (2, 3)):
        run_predict(weights, [scene["image"]], tmp_path / "sharded.tif", shard=shard, **kw)
    assert one.units >= 3
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "sharded.tif") as b:
        assert a.transform == b.transform
        np.testing.assert_array_equal(a.read(), b.read())


def test_per_file_outputs_are_cut_to_the_region_and_files_outside_it_skipped(tmp_path, weights):
    data = rgb_image(256, 768, seed=1)
    for i, name in enumerate(("a", "b", "c")):
        write_on_grid(tmp_path / "in" / f"{name}.tif", data[:, :, 256 * i : 256 * (i + 1)], col=256 * i)
    (tmp_path / "out").mkdir()
    box = f"{X0 + 40},{Y0 - 40},{X0 + 70},{Y0 - 10}"  # over a.tif (0..51.2 m) and b.tif (51.2..102.4 m)
    res = run_predict(weights, [tmp_path / "in"], tmp_path / "out/", bbox=box)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".tif") == [
        "a_landcover.tif", "b_landcover.tif"]
    assert any("1 of 3 input files do not meet the region" in w for w in res.warnings)
    with rasterio.open(tmp_path / "out/a_landcover.tif") as a, rasterio.open(tmp_path / "out/b_landcover.tif") as b:
        assert (a.bounds.left, a.bounds.top, a.bounds.right) == pytest.approx((X0 + 40, Y0 - 10, X0 + 51.2))
        assert (b.bounds.left, b.bounds.right, b.bounds.bottom) == pytest.approx((X0 + 51.2, X0 + 70, Y0 - 40))
        assert (a.read(1) != 255).all() and (b.read(1) != 255).all()


def test_dry_run_gives_the_region_area_and_tiles(tmp_path, weights, scene, capsys):
    code, out, err = run_cli(["predict", scene["image"], "--out", tmp_path / "map.tif", "--weights", weights,
                              "--roi", scene["roi"], "--dry-run"], capsys)
    assert code == 0, err
    mask = region_mask(scene["roi"])
    area = shapely.union_all([A, B]).area / 1e6
    assert f"({tiles_meeting(mask):,} meeting the region)" in out and f"{area:,.4f} km2" in out
    assert list(tmp_path.iterdir()) == []


def test_vector_polygons_stay_in_the_region(tmp_path, weights, scene):
    run_predict(weights, [scene["image"]], tmp_path / "map.tif", roi=scene["roi"], vector=tmp_path / "v.gpkg",
                preview=tmp_path / "p.png", batch_size=1)
    assert (tmp_path / "p.png").stat().st_size > 1000  # the input under the region beside its map
    polygons = gpd.read_file(tmp_path / "v.gpkg", layer="v")
    region = shapely.union_all(gpd.read_file(scene["roi"]).to_crs("EPSG:2154").geometry)
    # pixel-edged polygons of the pixels whose centre is in the region: within half a pixel of it
    assert len(polygons) > 0 and region.buffer(0.1 * 1.5).contains(shapely.union_all(polygons.geometry))


def test_a_plan_records_the_region(tmp_path, weights, scene):
    config = PredictConfig(inputs=[str(scene["image"])], out=str(tmp_path / "m.tif"), weights=str(weights),
                           roi=str(scene["roi"]))
    plan = plan_predict(config)
    other = plan_predict(PredictConfig(inputs=[str(scene["image"])], out=str(tmp_path / "m.tif"), weights=str(weights),
                                       bbox=f"{X0 + 10},{Y0 - 30},{X0 + 20},{Y0 - 20}"))
    assert plan.options["region"] and plan.options["region"] != other.options["region"]
    assert plan_predict(config).options["region"] == plan.options["region"]  # the same region, the same record
    with pytest.raises(OutputError):
        plan_predict(PredictConfig(inputs=[str(scene["image"])], out=str(tmp_path / "m.tif"), weights=str(weights),
                                   roi=str(scene["roi"]), stats=str(tmp_path / "m.tif")))


@pytest.mark.slow
def test_torchrun_two_cpu_processes_of_a_region_equal_one(tmp_path, weights, scene):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]), OMP_NUM_THREADS="1")
    run_predict(weights, [scene["image"]], tmp_path / "one.tif", roi=scene["roi"], unit_size=NANO_TILE,
                stats=tmp_path / "one.csv")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "caswit_geo",
           "predict", str(scene["image"]), "--out", str(tmp_path / "ddp.tif"), "--roi", str(scene["roi"]),
           "--stats", str(tmp_path / "ddp.csv"), "--weights", str(weights), "--unit-size", str(NANO_TILE),
           "--workers", "0", "--quiet"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "ddp.tif") as b:
        assert a.transform == b.transform
        np.testing.assert_array_equal(a.read(), b.read())
    # the same counts (the total rows name their own output)
    assert (tmp_path / "one.csv").read_text().replace("one.tif", "ddp.tif") == (tmp_path / "ddp.csv").read_text()


def test_with_overlap_the_blended_map_equals_the_whole_one_inside(tmp_path, weights):
    image = write_on_grid(tmp_path / "in.tif", rgb_image(300, 350, seed=3))
    run_predict(weights, [image], tmp_path / "whole.tif", overlap=48, probabilities=tmp_path / "whole_p.tif",
                batch_size=1)
    box = (X0 + 20.33, Y0 - 41.13, X0 + 47.77, Y0 - 12.91)
    run_predict(weights, [image], tmp_path / "box.tif", overlap=48, probabilities=tmp_path / "box_p.tif",
                bbox=",".join(map(str, box)), batch_size=1)
    c, r, got = offset(tmp_path / "box_p.tif")
    with rasterio.open(tmp_path / "whole_p.tif") as src:
        whole = src.read()[:, r : r + got.shape[1], c : c + got.shape[2]]
    inside = rasterize([(shapely.box(*box), 1)], out_shape=got.shape[1:],
                       transform=grid_transform(c, r), fill=0, dtype="uint8") > 0
    assert inside.sum() > 10000
    np.testing.assert_array_equal(got[:, inside], whole[:, inside])
    assert (got[:, ~inside] == 255).all()
