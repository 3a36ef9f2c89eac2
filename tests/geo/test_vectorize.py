"""Class raster -> polygons: areas, topology after simplification, sieve, formats."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize

from caswit_geo.core.errors import OutputError
from caswit_geo.core.spec import ClassInfo, ClassTable
from caswit_geo.geo.vectorize import polygonize, sieve_raster, vector_format, vectorize
from tests.helpers import write_geotiff

RES = 0.5
TRANSFORM = Affine(RES, 0, 700_000.0, 0, -RES, 6_600_000.0)
CLASSES = ClassTable([ClassInfo(0, "water", (0, 0, 255)), ClassInfo(1, "forest", (0, 128, 0)),
                      ClassInfo(2, "urban", (200, 0, 0)), ClassInfo(3, "crops", (250, 250, 0))])


def _box_blur(x, r):
    """Mean over a (2r+1) square along the last two axes (edge-padded), twice: smooth blobs."""
    for _ in range(2):
        for axis in (-2, -1):
            pad = [(0, 0)] * x.ndim
            pad[axis] = (r + 1, r)
            c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis)
            n = x.shape[axis]
            x = (np.take(c, range(2 * r + 1, 2 * r + 1 + n), axis=axis) - np.take(c, range(n), axis=axis)) / (2 * r + 1)
    return x


def class_raster(path, h=120, w=150, seed=0, nodata_corner=True, crs="EPSG:2154"):
    """Blobby land cover (smoothed noise, argmax) with a nodata corner and a few 1-pixel specks."""
    rng = np.random.default_rng(seed)
    noise = _box_blur(rng.normal(size=(4, h, w)), 6)
    arr = noise.argmax(axis=0).astype(np.uint8)
    arr[rng.integers(0, h, 30), rng.integers(0, w, 30)] = 3
    if nodata_corner:
        arr[: h // 4, : w // 5] = 255
    write_geotiff(path, arr, crs=crs, transform=TRANSFORM, nodata=255, tiled=True, blockxsize=64, blockysize=64)
    return arr


def test_areas_per_class_equal_pixel_counts(tmp_path):
    arr = class_raster(tmp_path / "c.tif")
    result = vectorize(tmp_path / "c.tif", tmp_path / "v.gpkg", CLASSES)
    gdf = gpd.read_file(tmp_path / "v.gpkg", layer="v")
    assert result.features == len(gdf) > 10
    assert list(gdf.columns[:3]) == ["class_id", "class_name", "area_m2"]
    assert gdf.crs.to_epsg() == 2154
    assert 255 not in set(gdf.class_id)
    for cid, name in enumerate(CLASSES.names):
        expected = (arr == cid).sum() * RES * RES
        assert gdf.loc[gdf.class_id == cid, "area_m2"].sum() == pytest.approx(expected, rel=1e-9)
        assert (gdf.loc[gdf.class_id == cid, "class_name"] == name).all()
        assert result.class_areas_m2[name] == pytest.approx(expected, rel=1e-9)
    # independent check: burning the polygons back gives the raster
    burnt = rasterize(((g, v) for g, v in zip(gdf.geometry, gdf.class_id)), out_shape=arr.shape,
                      transform=TRANSFORM, fill=255, dtype="uint8")
    np.testing.assert_array_equal(burnt, arr)


def test_simplified_polygons_keep_a_coverage(tmp_path):
    arr = class_raster(tmp_path / "c.tif", seed=1)
    gdf = polygonize(tmp_path / "c.tif", CLASSES, simplify=1.5)
    raw = polygonize(tmp_path / "c.tif", CLASSES)
    assert shapely.get_num_coordinates(gdf.geometry.values).sum() < shapely.get_num_coordinates(
        raw.geometry.values).sum()
    geoms = gdf.geometry.values
    assert shapely.is_valid(geoms).all()
    # no overlaps: every pair of touching polygons shares at most a border
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    pairs = left < right
    overlap = shapely.area(shapely.intersection(geoms[left[pairs]], geoms[right[pairs]]))
    assert overlap.max(initial=0) < 1e-6
    # no gaps: the union covers the valid area (simplification moves borders, not the total)
    valid_area = (arr != 255).sum() * RES * RES
    union = shapely.union_all(geoms)
    assert union.area == pytest.approx(valid_area, rel=0.01)
    assert gdf.area_m2.sum() == pytest.approx(union.area, rel=1e-9)


def test_min_area_sieve_streaming_equals_in_memory(tmp_path):
    class_raster(tmp_path / "c.tif", seed=2)
    sieve_raster(tmp_path / "c.tif", tmp_path / "s1.tif", 10)
    sieve_raster(tmp_path / "c.tif", tmp_path / "s2.tif", 10, streaming=False)
    with rasterio.open(tmp_path / "s1.tif") as a, rasterio.open(tmp_path / "s2.tif") as b, rasterio.open(
            tmp_path / "c.tif") as c:
        s1, s2, orig = a.read(1), b.read(1), c.read(1)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(s1 == 255, orig == 255)  # nodata neither grows nor shrinks
    assert (s1 != orig).sum() >= 20  # the specks are gone


def test_min_area_removes_small_polygons(tmp_path):
    class_raster(tmp_path / "c.tif", seed=3, nodata_corner=False)
    min_area = 10.0  # m2 = 40 pixels of 0.25 m2
    vectorize(tmp_path / "c.tif", tmp_path / "v.gpkg", CLASSES, min_area=min_area)
    gdf = gpd.read_file(tmp_path / "v.gpkg", layer="v")
    assert gdf.area_m2.min() >= min_area
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # sieve temporaries removed


@pytest.mark.parametrize("suffix", [".gpkg", ".parquet", ".geojson", ".fgb"])
def test_formats_from_extension(tmp_path, suffix):
    class_raster(tmp_path / "c.tif", h=40, w=40)
    out = tmp_path / f"v{suffix}"
    res = vectorize(tmp_path / "c.tif", out, CLASSES)
    gdf = gpd.read_parquet(out) if suffix == ".parquet" else gpd.read_file(out, layer="v")
    assert len(gdf) == res.features and set(gdf.columns) >= {"class_id", "class_name", "area_m2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.tif", out.name])


def test_unsupported_extension():
    with pytest.raises(OutputError, match="unsupported extension .shp"):
        vector_format("out.shp")


def test_no_crs_gives_empty_areas(tmp_path):
    class_raster(tmp_path / "c.tif", h=30, w=30, crs=None)
    with pytest.warns(UserWarning, match="no CRS"):
        gdf = polygonize(tmp_path / "c.tif", CLASSES)
    assert gdf.area_m2.isna().all()


def test_geographic_crs_areas_in_square_metres(tmp_path):
    arr = np.zeros((10, 10), np.uint8)
    arr[:, 5:] = 1
    t = Affine(0.001, 0, 2.0, 0, -0.001, 45.0)
    write_geotiff(tmp_path / "g.tif", arr, crs="EPSG:4326", transform=t, nodata=255)
    gdf = polygonize(tmp_path / "g.tif", CLASSES)
    # 0.005 deg x 0.01 deg at 45 N: about 394 m x 1112 m
    assert gdf.area_m2.sum() == pytest.approx(2 * 0.005 * 0.01 * 111_320 * np.cos(np.radians(45)) * 111_132,
                                              rel=0.01)
