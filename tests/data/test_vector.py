"""The vector dataset: predict's LR context, labels from polygons inside areas, splits, bad input named."""

import json
import warnings

import geopandas as gpd
import numpy as np
import pytest
import rasterio.shutil
import shapely
import torch
from rasterio.windows import Window
from shapely.geometry import LineString, Point, Polygon, box

from caswit_geo.core.errors import InputError
from caswit_geo.core.spec import InputSpec
from caswit_geo.data.vector import VectorDataset, VectorSource, load_vector_data, summary_line
from caswit_geo.engine.predict.source import PredictTiles
from caswit_geo.geo.grid import context_window
from tests.helpers import GEOTIFF, GSD, VECTOR_NAMES, X0, Y0, stac_collection, stac_item, write_vector_scene
from tests.http_server import ServedFolder

TILE = 64
SPEC = InputSpec(tile_size=TILE)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_vector_scene(tmp_path_factory.mktemp("scene"), size=(192, 256))


def source(scene, **kw):
    settings = dict(images=(str(scene["images"]),), labels=scene["labels"], class_field="kind",
                    areas=scene["areas"], background="field")
    settings.update(kw)
    return VectorSource(**settings)


@pytest.fixture(scope="module")
def data(scene):
    return load_vector_data(source(scene), SPEC.bands, TILE, 2)


def test_context_equals_predicts_for_the_same_tile(data):
    train = VectorDataset(data, "train", SPEC)
    test = VectorDataset(data, "test", SPEC, grid=True)
    windows = [Window(int(c), int(r), TILE, TILE) for r, c in list(train.positions[::7]) + list(test.positions)]
    tiles = PredictTiles(data.mosaic.source, windows, SPEC, "direct")
    for i, window in enumerate(windows):
        hr, lr, _, _, _ = train.read_window(window)
        p_hr, p_lr, _ = tiles.read(i)
        assert np.array_equal(hr, p_hr) and np.array_equal(lr, p_lr), window
    # the mosaic spans two files: a tile at the seam has context from both, not black padding
    seam = Window(128 - TILE // 2, 64, TILE, TILE)
    _, lr, _, _, _ = train.read_window(seam)
    assert (lr > 0).all()


def test_labels_equal_the_label_raster_inside_the_split_and_255_outside(scene, data):
    truth = scene["label"]  # rasterised with "field" as background everywhere
    for split in ("train", "val", "test"):
        ds = VectorDataset(data, split, SPEC, grid=True)
        region = shapely.union_all(data.regions[split])
        for r, c in ds.positions:
            _, _, label, lr_label, _ = ds.read_window(Window(int(c), int(r), TILE, TILE))
            xs = X0 + (np.arange(c, c + TILE) + 0.5) * GSD
            ys = Y0 - (np.arange(r, r + TILE) + 0.5) * GSD
            inside = shapely.contains_xy(region, *np.meshgrid(xs, ys))
            on_image = np.zeros((TILE, TILE), bool)
            on_image[: max(0, min(TILE, 192 - r)), : max(0, min(TILE, 256 - c))] = True
            keep = inside & on_image
            window_truth = np.full((TILE, TILE), 255, np.uint8)
            h, w = min(TILE, 192 - r), min(TILE, 256 - c)
            window_truth[:h, :w] = truth[r : r + h, c : c + w]
            assert np.array_equal(label[keep], window_truth[keep])
            assert (label[~keep] == 255).all()
            # LR: the kT context of the truth, ignored outside the area and the imagery, nearest k x k,
            # and 255 unless the whole block is imagery (the tiles rule)
            ctx = context_window(Window(int(c), int(r), TILE, TILE), 2)
            r0, c0, side = int(ctx.row_off), int(ctx.col_off), int(ctx.height)
            canvas = np.full((side, side), 255, np.uint8)
            valid = np.zeros((side, side), bool)
            rr, cc = slice(max(r0, 0), min(r0 + side, 192)), slice(max(c0, 0), min(c0 + side, 256))
            dst = (slice(rr.start - r0, rr.stop - r0), slice(cc.start - c0, cc.stop - c0))
            canvas[dst] = truth[rr, cc]
            valid[dst] = True
            xs = X0 + (np.arange(c0, c0 + side) + 0.5) * GSD
            ys = Y0 - (np.arange(r0, r0 + side) + 0.5) * GSD
            canvas[~shapely.contains_xy(region, *np.meshgrid(xs, ys))] = 255
            expected = canvas[1::2, 1::2].copy()
            expected[~valid.reshape(TILE, 2, TILE, 2).all(axis=(1, 3))] = 255
            assert np.array_equal(lr_label, expected), (r, c)


def test_without_background_uncovered_area_pixels_are_ignored(scene):
    data = load_vector_data(source(scene, background=None), SPEC.bands, TILE, 2)
    assert data.classes.names == ["building", "water"]  # the field's values, sorted
    ds = VectorDataset(data, "test", SPEC, grid=True)
    labels = np.concatenate([ds.read_window(Window(int(c), int(r), TILE, TILE))[2].ravel() for r, c in ds.positions])
    covered = load_vector_data(source(scene), SPEC.bands, TILE, 2)
    full = VectorDataset(covered, "test", SPEC, grid=True)
    with_bg = np.concatenate([full.read_window(Window(int(c), int(r), TILE, TILE))[2].ravel() for r, c in full.positions])
    field = VECTOR_NAMES.index("field")
    assert ((labels == 255) == ((with_bg == 255) | (with_bg == field))).all()


def test_summary_counts_overlaps(data):
    assert data.summary["overlapping_pairs"] > 0 and data.summary["polygons"] == len(data.labels)
    assert "overlapping pairs" in summary_line(data)


def test_block_split_is_deterministic_and_training_contexts_stay_in_train_blocks(scene):
    a = load_vector_data(source(scene, areas=None), SPEC.bands, 32, 2)
    b = load_vector_data(source(scene, areas=None), SPEC.bands, 32, 2)
    assert [shapely.bounds(g).tolist() for g in a.regions["val"]] == [shapely.bounds(g).tolist() for g in b.regions["val"]]
    ds = VectorDataset(a, "train", InputSpec(tile_size=32), random_crops=True)
    val = shapely.union_all(a.regions["val"])
    for r, c in ds.positions:
        ctx = context_window(Window(int(c), int(r), 32, 32), 2)
        x0, y0 = X0 + ctx.col_off * GSD, Y0 - ctx.row_off * GSD
        footprint = box(x0, y0 - ctx.height * GSD, x0 + ctx.width * GSD, y0)
        assert shapely.area(shapely.intersection(footprint, val)) == 0


def test_integer_field_values_are_the_ids(scene, tmp_path):
    frame = gpd.read_file(scene["labels"])
    frame["code"] = [VECTOR_NAMES.index(k) * 2 for k in frame["kind"]]  # 0 and 4
    frame.to_file(tmp_path / "codes.gpkg")
    data = load_vector_data(source(scene, labels=tmp_path / "codes.gpkg", class_field="code", background=None),
                            SPEC.bands, TILE, 2)
    assert len(data.classes) == 5 and set(np.unique(data.labels.values)) == {0, 4}


def _write(path, geoms, crs="EPSG:2154", **fields):
    gpd.GeoDataFrame(fields, geometry=geoms, crs=crs).to_file(path)
    return path


def test_bad_input_is_one_line_naming_the_file(scene, tmp_path):
    inside = box(X0 + 2, Y0 - 10, X0 + 8, Y0 - 2)
    with pytest.raises(InputError, match=r"codes\.gpkg.*no field 'kind'"):
        load_vector_data(source(scene, labels=_write(tmp_path / "codes.gpkg", [inside], code=[1])), SPEC.bands, TILE, 2)
    table = tmp_path / "classes.json"
    table.write_text(json.dumps({"classes": [{"id": 0, "name": "building", "color": [1, 2, 3]},
                                             {"id": 1, "name": "field", "color": [1, 2, 3]}]}))
    with pytest.raises(InputError, match=r"labels\.gpkg.*'water' \([0-9]+ polygons\).*classes\.json"):
        load_vector_data(source(scene, classes=table), SPEC.bands, TILE, 2)
    mixed = _write(tmp_path / "mixed.gpkg", [inside, Point(X0 + 1, Y0 - 1), LineString([(X0, Y0 - 1), (X0 + 3, Y0 - 2)])],
                   kind=["water", "water", "water"])
    with pytest.raises(InputError, match=r"mixed\.gpkg.*2 features are not polygons.*--skip-non-polygons"):
        load_vector_data(source(scene, labels=mixed), SPEC.bands, TILE, 2)
    data = load_vector_data(source(scene, labels=mixed, skip_non_polygons=True), SPEC.bands, TILE, 2)
    assert data.summary["skipped_non_polygons"] == 2 and len(data.labels) == 1
    bowtie = Polygon([(X0 + 1, Y0 - 1), (X0 + 9, Y0 - 9), (X0 + 9, Y0 - 1), (X0 + 1, Y0 - 9)])
    data = load_vector_data(source(scene, labels=_write(tmp_path / "bowtie.gpkg", [bowtie, inside], kind=["water"] * 2)),
                            SPEC.bands, TILE, 2)
    assert data.summary["repaired"] == 1 and shapely.is_valid(data.labels.geoms).all()
    far = box(X0 + 10_000, Y0 - 10, X0 + 10_010, Y0)
    with pytest.raises(InputError, match=r"far\.gpkg: no area meets the imagery"):
        load_vector_data(source(scene, areas=_write(tmp_path / "far.gpkg", [far], split=["train"])), SPEC.bands, TILE, 2)
    with pytest.raises(InputError, match=r"odd\.gpkg, field 'split': value 'training' \(1 areas\) is not a split"):
        load_vector_data(source(scene, areas=_write(tmp_path / "odd.gpkg", [inside], split=["training"])), SPEC.bands, TILE, 2)
    only_train = load_vector_data(source(scene, areas=_write(tmp_path / "t.gpkg", [inside], split=["train"])),
                                  SPEC.bands, TILE, 2)
    with pytest.raises(InputError, match=r"t\.gpkg: no 'test' area on the imagery \(empty split\)"):
        VectorDataset(only_train, "test", SPEC, grid=True)
    nocrs = tmp_path / "nocrs.geojson"
    nocrs.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"kind": "water"}, "geometry": shapely.geometry.mapping(inside)}]}))
    no_crs_layer = tmp_path / "nocrs.gpkg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "'crs' was not provided": what this case wants
        gpd.read_file(nocrs).set_crs(None, allow_override=True).to_file(no_crs_layer)
    with pytest.raises(InputError, match=r"nocrs\.gpkg.*no CRS"):
        load_vector_data(source(scene, labels=no_crs_layer), SPEC.bands, TILE, 2)


def test_served_cogs_give_the_samples_of_the_local_files(tmp_path, scene):
    """--images as URLs (signed, read by forked DataLoader workers) or a STAC search: the samples of the same
    files read locally."""
    cogs = tmp_path / "cogs"
    cogs.mkdir()
    for name in ("west.tif", "east.tif"):
        rasterio.shutil.copy(scene["images"] / name, cogs / name, driver="COG", blocksize=128)
    local = load_vector_data(source(scene, images=(str(cogs),)), SPEC.bands, TILE, 2)
    secret = "s1gned-t0ken"
    with ServedFolder(cogs, token=secret) as server:
        urls = tuple(server.url(n, token=secret) for n in ("west.tif", "east.tif"))
        remote = load_vector_data(source(scene, images=urls), SPEC.bands, TILE, 2)
        assert remote.images == [f"/vsicurl/{u}" for u in urls]
        for split, grid in (("train", False), ("test", True)):
            ours = VectorDataset(remote, split, SPEC, grid=grid)
            assert secret not in str(ours.input_files()) and len(ours) >= 3
            served = list(torch.utils.data.DataLoader(ours, batch_size=4, num_workers=2))
            read = list(torch.utils.data.DataLoader(VectorDataset(local, split, SPEC, grid=grid), batch_size=4))
            assert len(served) == len(read)
            for a, b in zip(served, read):
                assert a["id"] == b["id"]
                for key in ("hr", "lr", "label", "lr_label"):
                    assert torch.equal(a[key], b[key]), (split, key, a["id"])
        # a STAC search saved as JSON, its assets behind the same URLs: the same mosaic, said in the summary
        assets = [stac_item(n, {"rgb": (u, GEOTIFF, ["visual"])}) for n, u in zip(("west", "east"), urls)]
        (tmp_path / "search.json").write_text(json.dumps(stac_collection(*assets)))
        stac = load_vector_data(source(scene, images=(str(tmp_path / "search.json"),)), SPEC.bands, TILE, 2)
        assert stac.images == remote.images
        assert "images: " in summary_line(stac) and "2 STAC items, asset 'rgb'" in summary_line(stac)
        # read by ranges, never a whole file
        gets = [r for r in server.requests if r.method == "GET"]
        assert gets and all(r.range for r in gets) and max(r.sent for r in gets) < (cogs / "west.tif").stat().st_size
