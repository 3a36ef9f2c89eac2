"""The region on the mosaic's grid: its mask equals rasterio's rasterize, its tiles are those with a pixel in it."""

import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.geo.region import parse_bbox, region_on_grid, region_polygons
from tests.helpers import X0, Y0, grid_transform

L93 = CRS.from_epsg(2154)
W, H = 700, 600  # the grid's size, px (0.2 m)


def roi_4326(path, polygons, **columns):
    """``polygons`` (Lambert-93) written in EPSG:4326 to a GeoPackage with ``columns``."""
    gpd.GeoDataFrame(columns, geometry=polygons, crs="EPSG:2154").to_crs("EPSG:4326").to_file(path)
    return path


def test_mask_equals_rasterize_of_the_reprojected_polygons(tmp_path):
    a = shapely.Polygon([(X0 + 30, Y0 - 20), (X0 + 90, Y0 - 40), (X0 + 70, Y0 - 100), (X0 + 25, Y0 - 80)])
    b = shapely.box(X0 + 60, Y0 - 70, X0 + 110, Y0 - 30).difference(shapely.box(X0 + 80, Y0 - 60, X0 + 90, Y0 - 50))
    path = roi_4326(tmp_path / "roi.gpkg", [a, b], name=["a", "b"], code=[1, 2])
    polygons = region_polygons(path, None, None, None, L93)
    assert polygons.attributes == [{"name": "a", "code": 1}, {"name": "b", "code": 2}]
    region = region_on_grid(polygons, grid_transform(), W, H)
    reference = gpd.read_file(path).to_crs("EPSG:2154").geometry  # an independent reprojection
    whole = rasterize([(g, 1) for g in reference], out_shape=(H, W), transform=grid_transform(), fill=0,
                      dtype="uint8").astype(bool)
    rows, cols = np.nonzero(whole)
    w = region.window  # the box of the polygons, snapped outward to whole pixels
    assert w.col_off <= cols.min() and w.row_off <= rows.min()
    assert w.col_off + w.width >= cols.max() + 1 and w.row_off + w.height >= rows.max() + 1
    assert w.width <= cols.max() - cols.min() + 3 and w.height <= rows.max() - rows.min() + 3
    for window in (region.window, Window(0, 0, 256, 256), Window(140, 110, 128, 128), Window(500, 300, 64, 64)):
        c, r = int(window.col_off), int(window.row_off)
        expected = whole[r : r + int(window.height), c : c + int(window.width)]
        np.testing.assert_array_equal(region.mask(window), expected)
    # a tile meets the region when one of its pixel centres lies in it
    for r in range(0, H, 64):
        for c in range(0, W, 64):
            assert region.meets(Window(c, r, 64, 64)) == whole[r : r + 64, c : c + 64].any()
    # each feature alone (they overlap: each counts its own pixels)
    for i, g in enumerate(reference):
        alone = rasterize([(g, 1)], out_shape=(H, W), transform=grid_transform(), fill=0, dtype="uint8").astype(bool)
        np.testing.assert_array_equal(region.feature_mask(i, Window(0, 0, W, H)), alone)


def test_bbox_in_another_crs_is_reprojected_with_curved_sides():
    polygons = region_polygons(None, None, "2.30,48.80,2.31,48.81", "EPSG:4326", L93)
    geom = polygons.geoms[0]
    assert len(shapely.get_coordinates(geom)) > 100  # densified before reprojection
    reference = gpd.GeoSeries([shapely.box(2.30, 48.80, 2.31, 48.81)], crs="EPSG:4326").to_crs("EPSG:2154")[0]
    assert abs(geom.area / reference.area - 1) < 1e-4
    mine = region_polygons(None, None, "1,2,3,4", None, L93).geoms[0]
    assert mine.equals(shapely.box(1, 2, 3, 4))


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,x", "3,2,1,4", "1,4,3,2", "nan,1,2,3"])
def test_bad_bbox_is_one_line(text):
    with pytest.raises(ConfigError, match="--bbox") as e:
        parse_bbox(text)
    assert "\n" not in str(e.value)


def test_region_outside_the_imagery(tmp_path):
    far = shapely.box(X0 + 5000, Y0 - 5000, X0 + 5100, Y0 - 4900)
    polygons = region_polygons(roi_4326(tmp_path / "far.gpkg", [far]), None, None, None, L93)
    with pytest.raises(InputError, match="outside the imagery"):
        region_on_grid(polygons, grid_transform(), W, H)


def test_layer_problems_are_one_line(tmp_path):
    empty = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame({"a": []}, geometry=[], crs="EPSG:2154").to_file(empty)
    with pytest.raises(InputError, match="--roi .*empty.gpkg.*no polygon"):
        region_polygons(empty, None, None, None, L93)
    mixed = tmp_path / "mixed.gpkg"
    gpd.GeoDataFrame({"a": [1, 2]}, geometry=[shapely.box(X0, Y0 - 10, X0 + 10, Y0), shapely.Point(X0, Y0)],
                     crs="EPSG:2154").to_file(mixed)
    with pytest.raises(InputError, match="1 features are points or lines"):
        region_polygons(mixed, None, None, None, L93)
    bowtie = tmp_path / "bowtie.gpkg"
    tie = shapely.Polygon([(X0, Y0), (X0 + 20, Y0 - 20), (X0 + 20, Y0), (X0, Y0 - 20)])
    assert not tie.is_valid
    gpd.GeoDataFrame({"a": [1]}, geometry=[tie], crs="EPSG:2154").to_file(bowtie)
    polygons = region_polygons(bowtie, None, None, None, L93)
    assert polygons.repaired == 1 and polygons.geoms[0].is_valid
    with pytest.raises(ConfigError, match="choose one"):
        region_polygons(bowtie, None, "1,2,3,4", None, L93)
    with pytest.raises(ConfigError, match="--bbox-crs EPSG:99999: not a CRS"):
        region_polygons(None, None, "1,2,3,4", "EPSG:99999", L93)


def test_roi_layer_picks_a_layer_and_a_missing_one_is_named(tmp_path):
    path = tmp_path / "two.gpkg"
    gpd.GeoDataFrame({"n": [1]}, geometry=[shapely.box(X0, Y0 - 10, X0 + 10, Y0)], crs="EPSG:2154").to_file(
        path, layer="first")
    gpd.GeoDataFrame({"n": [2, 3]}, geometry=[shapely.box(X0 + 20, Y0 - 30, X0 + 30, Y0 - 20)] * 2,
                     crs="EPSG:2154").to_file(path, layer="second")
    assert [a["n"] for a in region_polygons(path, None, None, None, L93).attributes] == [1]
    assert [a["n"] for a in region_polygons(path, "second", None, None, L93).attributes] == [2, 3]
    with pytest.raises(InputError, match="--roi .*two.gpkg \\(layer 'third'\\)") as e:
        region_polygons(path, "third", None, None, L93)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="--roi-layer names a layer of --roi"):
        region_polygons(None, "second", "1,2,3,4", None, L93)


@pytest.mark.parametrize("suffix", [".shp", ".fgb", ".geojson", ".parquet"])
def test_every_format_gives_the_same_region(tmp_path, suffix):
    # no pixel centre on an edge: a reprojection's last bits do not move a pixel in or out
    a = shapely.Polygon([(X0 + 30.03, Y0 - 20.07), (X0 + 90.11, Y0 - 40.13), (X0 + 70.05, Y0 - 100.17),
                         (X0 + 25.09, Y0 - 80.01)])
    frame = gpd.GeoDataFrame({"name": ["a"], "code": [5]}, geometry=[a], crs="EPSG:2154").to_crs("EPSG:3857")
    path = tmp_path / f"roi{suffix}"
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_file(path)
    polygons = region_polygons(path, None, None, None, L93)
    assert polygons.attributes == [{"name": "a", "code": 5}]
    region = region_on_grid(polygons, grid_transform(), W, H)
    expected = rasterize([(a, 1)], out_shape=(H, W), transform=grid_transform(), fill=0, dtype="uint8") > 0
    np.testing.assert_array_equal(region.mask(Window(0, 0, W, H)), expected)
