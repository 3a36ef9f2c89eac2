"""Polygons burnt per window equal rasterio's rasterize of the reprojected layer, pixel for pixel."""

import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import box

from caswit_geo.geo.context import nearest_downsample
from caswit_geo.geo.grid import context_window
from caswit_geo.geo.polygon_raster import PolygonIndex, lowres_transform, window_transform
from caswit_geo.geo.vector_layers import read_polygons
from tests.helpers import VECTOR_NAMES, write_vector_scene

L93 = CRS.from_epsg(2154)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_vector_scene(tmp_path_factory.mktemp("scene"), size=(160, 224))


def test_burnt_windows_equal_rasterize_of_the_reprojected_layer(scene):
    # the layer in EPSG:4326, read back into Lambert-93: holes, overlaps (the later polygon wins)
    layer = read_polygons(scene["labels_4326"], "kind", L93)
    ids = np.asarray([VECTOR_NAMES.index(v) for v in layer.values], np.uint8)
    index = PolygonIndex(layer.geoms, ids)
    reference = gpd.read_file(scene["labels_4326"]).to_crs("EPSG:2154")  # an independent reprojection
    shapes = [(g, VECTOR_NAMES.index(v)) for g, v in zip(reference.geometry, reference["kind"])]
    transform = scene["transform"]
    whole = rasterize(shapes, out_shape=(160, 224), transform=transform, fill=255, dtype="uint8", all_touched=False)
    assert 1 < len(np.unique(whole)) and (whole != 255).sum() > 1000
    for col, row, size in ((0, 0, 64), (37, 21, 64), (150, 90, 64), (-20, -10, 48), (200, 140, 48)):
        window = Window(col, row, size, size)
        burnt = index.burn(window_transform(transform, window), size, size, 255)
        expected = np.full((size, size), 255, np.uint8)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + size, 160), min(col + size, 224)
        expected[r0 - row : r1 - row, c0 - col : c1 - col] = whole[r0:r1, c0:c1]
        outside = np.ones((size, size), bool)
        outside[r0 - row : r1 - row, c0 - col : c1 - col] = False
        assert np.array_equal(burnt[~outside], expected[~outside]), (col, row)


def test_the_hole_stays_unlabelled_and_the_later_polygon_wins():
    from shapely.geometry import Polygon

    ring = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(3, 3), (7, 3), (7, 7), (3, 7)]])
    later = box(8, 0, 10, 10)  # covers the ring's right edge
    index = PolygonIndex(np.asarray([ring, later], dtype=object), np.asarray([1, 2]))
    burnt = index.burn(from_origin(0, 10, 1, 1), 10, 10, 255)  # 1 m pixels, row 0 at the top
    assert (burnt[3:7, 3:7] == 255).all()  # the hole
    assert (burnt[:, 8:] == 2).all() and (burnt[0, :8] == 1).all()
    assert (burnt == 1).sum() == 100 - 16 - 20  # ring minus hole minus the part under the later polygon


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_lowres_grid_equals_nearest_of_the_context_canvas(factor):
    rng = np.random.default_rng(factor)
    geoms = [box(*(lambda x, y: (x, y, x + rng.uniform(0.5, 6), y + rng.uniform(0.5, 6)))(*rng.uniform(0, 20, 2)))
             for _ in range(40)]
    index = PolygonIndex(np.asarray(geoms, dtype=object), rng.integers(0, 5, 40))
    transform = from_origin(0, 24, 0.1, 0.1)
    tile = 48
    window = Window(60, 50, tile, tile)
    ctx = context_window(window, factor)
    canvas = index.burn(window_transform(transform, ctx), factor * tile, factor * tile, 255)
    direct = index.burn(lowres_transform(window_transform(transform, ctx), factor), tile, tile, 255)
    assert np.array_equal(direct, nearest_downsample(canvas, factor))


def test_overlapping_pairs_count_shared_interiors_not_shared_edges():
    geoms = np.asarray([box(0, 0, 2, 2), box(2, 0, 4, 2), box(1, 1, 3, 3), box(10, 10, 11, 11)], dtype=object)
    # 0-1 only touch; 0-2 and 1-2 overlap
    assert PolygonIndex(geoms, np.zeros(4)).overlapping_pairs() == 2
    assert shapely.area(geoms[0]) == 4


@pytest.mark.parametrize("seed", range(4))
def test_scanline_fill_equals_gdal_on_random_polygons_with_holes(seed):
    from affine import Affine

    from caswit_geo.geo.scanline import fill_polygons

    rng = np.random.default_rng(seed)
    geoms = []
    for _ in range(60):
        x, y = rng.uniform(0, 30, 2)
        outer = shapely.buffer(shapely.Point(x, y), rng.uniform(0.3, 6), quad_segs=int(rng.integers(1, 9)))
        if rng.random() < 0.4:  # a hole, or a part split off: polygons and multipolygons
            outer = outer.difference(shapely.buffer(shapely.Point(x + rng.uniform(-2, 2), y), rng.uniform(0.2, 2)))
        geoms.append(outer)
    geoms = np.asarray(geoms, dtype=object)
    geoms = geoms[~shapely.is_empty(geoms)]
    values = rng.integers(0, 250, len(geoms)).astype(np.uint8)
    transforms = [from_origin(-1.3, 31.7, 0.13, 0.11),
                  Affine.rotation(17) * Affine(0.12, 0, 2, 0, -0.12, 30)]  # rotated grids too
    for transform in transforms:
        expected = rasterize(zip(geoms, values.tolist()), out_shape=(250, 270), transform=transform, fill=255,
                             dtype="uint8", all_touched=False)
        got = fill_polygons(geoms, values, transform, np.full((250, 270), 255, np.uint8))
        assert (expected != 255).sum() > 5000
        assert np.array_equal(got, expected)


def test_a_coverage_and_a_coverage_with_overlaps_fill_as_gdal():
    from affine import Affine
    from rasterio.features import shapes

    from caswit_geo.geo.scanline import fill_polygons

    rng = np.random.default_rng(5)
    cells = rng.integers(0, 4, (12, 12))
    transform = from_origin(0, 12, 1, 1)
    polys = [(shapely.geometry.shape(g), int(v)) for g, v in shapes(cells.astype(np.uint8), transform=transform)]
    geoms = np.asarray([g for g, _ in polys], dtype=object)
    values = np.asarray([v for _, v in polys], np.uint8)
    assert PolygonIndex(geoms, values).overlapping_pairs() == 0  # touching is not overlapping
    grid = Affine(0.09, 0, -1.1, 0, -0.07, 13.1)  # past the coverage on every side
    # spans written as runs (the coverage), then over a canvas that is not blank, then with
    # later polygons overlapping some spans (ranked there, runs elsewhere)
    later = np.asarray([box(2.1, 3.3, 5.7, 4.9), box(4, 1, 4.5, 11), box(0.5, 0.5, 1, 1)], dtype=object)
    cases = [(geoms, values, 255), (geoms, values, 7),
             (np.concatenate([geoms, later]), np.concatenate([values, [10, 11, 12]]).astype(np.uint8), 255)]
    for g, v, fill in cases:
        canvas = np.full((200, 160), fill, np.uint8)
        canvas[:20, :30] = 9  # not blank
        expected = rasterize(zip(g, v.tolist()), out_shape=(200, 160), transform=grid, dtype="uint8", out=canvas.copy())
        got = fill_polygons(g, v, grid, canvas)
        assert np.array_equal(got, expected)
        assert len(np.unique(got)) >= 5


def test_edges_of_a_layer_with_empty_and_collection_geometries():
    from caswit_geo.geo.scanline import PolygonEdges

    ring = shapely.Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], [[(1, 1), (2, 1), (2, 2), (1, 2)]])
    mixed = shapely.GeometryCollection([box(10, 10, 11, 11), shapely.LineString([(0, 0), (1, 1)])])
    multi = shapely.MultiPolygon([box(5, 5, 6, 6), box(7, 7, 8, 8)])
    edges = PolygonEdges.from_geoms(np.asarray([ring, shapely.Polygon(), mixed, multi], dtype=object))
    # edges per geometry: 4 + 4 (outer ring and hole), none, the collection's square, two squares
    assert np.diff(edges.offsets).tolist() == [8, 0, 4, 8]
    edge, rank = edges.select(np.asarray([3, 0]))
    assert rank.tolist() == [0] * 8 + [1] * 8
    assert set(edges.x[edges.start[edge[:8]]]) == {5.0, 6.0, 7.0, 8.0}


def test_a_large_window_of_many_polygons_keys_crossings_in_64_bits():
    from caswit_geo.geo.scanline import fill_polygons

    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 200, (600, 2))
    geoms = np.asarray([box(x, y, x + w, y + h) for (x, y), (w, h) in zip(xy, rng.uniform(1, 9, (600, 2)))],
                       dtype=object)
    values = rng.integers(0, 250, 600).astype(np.uint8)
    transform = from_origin(0, 205, 0.1, 0.1)  # 600 x 2048 x 2049 keys: past 32 bits
    expected = rasterize(zip(geoms, values.tolist()), out_shape=(2048, 2048), transform=transform, fill=255,
                         dtype="uint8")
    got = fill_polygons(geoms, values, transform, np.full((2048, 2048), 255, np.uint8))
    assert np.array_equal(got, expected) and (expected != 255).mean() > 0.2
