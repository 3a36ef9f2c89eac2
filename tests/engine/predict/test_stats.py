"""Zone counts of --stats against a brute-force count: pixels per class, and areas pixel by pixel on the ellipsoid."""

import numpy as np
import pytest
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.windows import Window

from caswit_geo.core.spec import ClassInfo, ClassTable
from caswit_geo.engine.predict.stats import Zone, attribute_columns, count, stats_text


def test_counts_and_geographic_areas_equal_a_pixel_by_pixel_sum():
    rng = np.random.default_rng(0)
    classes = rng.choice([0, 1, 2, 255], size=(50, 40)).astype(np.uint8)
    transform = Affine(0.001, 0, 2.0, 0, -0.001, 60.0)  # degrees, at 60 N: areas shrink northwards
    keep = rng.random((50, 40)) > 0.3
    window = Window(5, 7, 30, 40)

    def read(w):
        return classes[int(w.row_off) : int(w.row_off + w.height), int(w.col_off) : int(w.col_off + w.width)]

    def mask(w):  # mosaic pixels: the raster sits at (100, 200) in the mosaic
        c, r = int(w.col_off) - 100, int(w.row_off) - 200
        return keep[r : r + int(w.height), c : c + int(w.width)]

    pixels, areas = count(read, window, CRS.from_epsg(4326), transform, mask, (100, 200))
    geod = Geod(ellps="WGS84")
    expected_px, expected_area = np.zeros(256, int), np.zeros(256)
    for r in range(7, 47):
        for c in range(5, 35):
            if keep[r, c]:
                x0, y0 = transform * (c, r)
                x1, y1 = transform * (c + 1, r + 1)
                expected_px[classes[r, c]] += 1
                expected_area[classes[r, c]] += abs(geod.polygon_area_perimeter([x0, x1, x1, x0], [y0, y0, y1, y1])[0])
    np.testing.assert_array_equal(pixels, expected_px)
    np.testing.assert_allclose(areas, expected_area, rtol=1e-9)


def test_a_zone_adds_up_and_attributes_named_like_our_columns_are_renamed():
    classes = ClassTable([ClassInfo(0, "a", (0, 0, 0)), ClassInfo(1, "b", (9, 9, 9))])
    pixels = np.zeros(256, np.int64)
    pixels[[0, 1, 255]] = 3, 5, 2
    attributes = attribute_columns({"name": "x", "class": 7})
    assert attributes == {"name": "x", "roi_class": 7}
    zone = Zone("feature", 4, "", attributes, pixels, pixels * 0.04)
    rows = zone.rows(classes)
    assert [r["class"] for r in rows] == ["a", "b", "nodata"]
    assert sum(r["area_m2"] for r in rows) == pytest.approx(10 * 0.04)
    assert sum(r["share_pct"] for r in rows) == pytest.approx(100)
    text = stats_text([zone], classes, "csv")
    assert text.splitlines()[0] == "zone,feature,file,name,roi_class,class_id,class,pixels,area_m2,share_pct"
    assert text.splitlines()[3] == "feature,4,,x,7,255,nodata,2,0.08,20.0"
