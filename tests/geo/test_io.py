"""Input validation, dataset masks, the mosaic VRT (geo/mosaic.py, masks.py) and the class-raster writer."""

import os
from functools import partial

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from caswit_geo.core.errors import InputError, OutputError
from caswit_geo.core.spec import ClassInfo, ClassTable
from caswit_geo.geo.class_raster import AtomicRasterWriter, class_description, overview_factors, read_pam_categories
from caswit_geo.geo.masks import valid_mask, zero_invalid
from caswit_geo.geo.mosaic import describe_raster, expand_inputs, open_mosaic
from caswit_geo.safeio.outputs import OutputSet
from tests.helpers import write_on_grid

RES = 0.5
X0, Y0 = 700_000.0, 6_600_000.0


# rasters on this module's grid: RES m pixels from (X0, Y0); col and row count pixels of the raster's own res
write = partial(write_on_grid, res=RES, x0=X0, y0=Y0)


def rgb(h, w, seed=0, low=1):
    return np.random.default_rng(seed).integers(low, 256, (3, h, w)).astype(np.uint8)


# -- inputs -------------------------------------------------------------------------


def test_expand_inputs_folder_glob_and_list(tmp_path):
    for name in ("b.tif", "a.tif", "c.TIFF"):
        write(tmp_path / name, rgb(4, 4))
    (tmp_path / "notes.txt").write_text("x")
    got = expand_inputs([tmp_path])
    assert [p.name for p in got] == ["a.tif", "b.tif", "c.TIFF"]
    assert [p.name for p in expand_inputs([str(tmp_path / "[ab].tif")])] == ["a.tif", "b.tif"]
    assert [p.name for p in expand_inputs([tmp_path / "b.tif", tmp_path / "b.tif", tmp_path / "a.tif"])] == [
        "b.tif", "a.tif"]


@pytest.mark.parametrize("items, message", [
    ([], "no input"),
    (["missing.tif"], "missing.tif: no such file"),
    (["*.nothing"], "matches no file"),
])
def test_expand_inputs_errors(tmp_path, items, message):
    with pytest.raises(InputError, match=message):
        expand_inputs([str(tmp_path / i) if i != "*.nothing" else str(tmp_path / i) for i in items])


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(InputError, match="holds no raster"):
        expand_inputs([tmp_path])


def test_non_raster_is_an_input_error(tmp_path):
    (tmp_path / "fake.tif").write_text("not a tiff")
    with pytest.raises(InputError, match="not a raster GDAL can read"):
        describe_raster(tmp_path / "fake.tif")


def test_band_count_and_dtype_checked(tmp_path):
    write(tmp_path / "rgb.tif", rgb(8, 8))
    with pytest.raises(InputError, match=r"has 3 band\(s\) but the checkpoint reads bands 1,2,3,4"):
        open_mosaic([tmp_path / "rgb.tif"], [1, 2, 3, 4])
    write(tmp_path / "f.tif", rgb(8, 8).astype(np.float32))
    with pytest.raises(InputError, match="data type float32 is not supported"):
        open_mosaic([tmp_path / "f.tif"], [1, 2, 3])
    write(tmp_path / "u16.tif", rgb(8, 8).astype(np.uint16))
    assert open_mosaic([tmp_path / "u16.tif"], [1, 2, 3]).dtype == "uint16"


# -- dataset masks --------------------------------------------------------------------


def test_valid_mask_matches_gdal_dataset_mask(tmp_path):
    data = rgb(20, 30)
    data[:, :5, :5] = 0
    data[1, 2, 2] = 9  # one band valid: the pixel is valid (GDAL's dataset mask)
    write(tmp_path / "nd.tif", data, nodata=0)
    m = np.ones((20, 30), bool)
    m[10:, 10:] = False
    write(tmp_path / "im.tif", rgb(20, 30), mask=m)
    a = np.concatenate([rgb(20, 30), np.full((1, 20, 30), 255, np.uint8)])
    a[3, :4, :] = 0
    write(tmp_path / "alpha.tif", a, alpha=True)
    win = Window(0, 0, 30, 20)
    for name in ("nd.tif", "im.tif", "alpha.tif"):
        with rasterio.open(tmp_path / name) as src:
            ours = valid_mask(src, win, [1, 2, 3])
            np.testing.assert_array_equal(ours, src.dataset_mask(window=win) > 0, err_msg=name)
    with rasterio.open(tmp_path / "nd.tif") as src:
        assert valid_mask(src, win, [1, 2, 3])[2, 2] and not valid_mask(src, win, [1, 2, 3])[1, 1]


def test_alpha_band_read_as_data_is_not_a_mask(tmp_path):
    a = np.concatenate([rgb(10, 10), np.zeros((1, 10, 10), np.uint8)])  # NIR = 0 tagged alpha
    write(tmp_path / "rgbi.tif", a, alpha=True)
    with rasterio.open(tmp_path / "rgbi.tif") as src:
        assert valid_mask(src, Window(0, 0, 10, 10), [1, 2, 3, 4]).all()  # NIR kept as data
        assert not valid_mask(src, Window(0, 0, 10, 10), [1, 2, 3]).any()  # RGB model: alpha is a mask
    mosaic = open_mosaic([tmp_path / "rgbi.tif"], [1, 2, 3, 4])
    assert any("tagged alpha" in w for w in mosaic.warnings)


# -- mosaic ------------------------------------------------------------------------------


def test_mosaic_of_files_reads_like_the_files(tmp_path):
    """2 x 2 grid of files (one missing): data as in the files, masks: nodata, internal mask, gap."""
    big = rgb(60, 80, seed=3)
    a = big[:, :30, :40].copy()
    a[:, :4, :4] = 0
    write(tmp_path / "a.tif", a, nodata=0)
    m = np.ones((30, 40), bool)
    m[-3:, -3:] = False
    write(tmp_path / "b.tif", big[:, :30, 40:], col=40, mask=m)
    write(tmp_path / "c.tif", big[:, 30:, :40], row=30)
    mosaic = open_mosaic([tmp_path / n for n in ("a.tif", "b.tif", "c.tif")], [1, 2, 3])
    assert mosaic.is_vrt and (mosaic.width, mosaic.height) == (80, 60)
    assert mosaic.transform == Affine(RES, 0, X0, 0, -RES, Y0)
    with mosaic.open() as src:
        win = Window(0, 0, 80, 60)
        data = src.read([1, 2, 3], window=win)
        valid = valid_mask(src, win, [1, 2, 3])
    np.testing.assert_array_equal(data[:, :30, 40:], big[:, :30, 40:])
    np.testing.assert_array_equal(data[:, 30:, :40], big[:, 30:, :40])
    expected = np.ones((60, 80), bool)
    expected[:4, :4] = False  # a.tif nodata
    expected[27:30, 77:80] = False  # b.tif internal mask
    expected[30:, 40:] = False  # no file there
    np.testing.assert_array_equal(valid, expected)
    assert mosaic.file_window(mosaic.files[1]) == Window(40, 0, 40, 30)


def test_overlapping_files_composite_through_masks(tmp_path):
    a = np.full((3, 10, 10), 50, np.uint8)
    a[:, :, 5:] = 0  # right half nodata
    b = np.full((3, 10, 10), 80, np.uint8)
    write(tmp_path / "b.tif", b, col=5, nodata=0)
    write(tmp_path / "a.tif", a, nodata=0)  # listed last: its nodata must not hide b
    mosaic = open_mosaic([tmp_path / "b.tif", tmp_path / "a.tif"], [1, 2, 3])
    with mosaic.open() as src:
        data = src.read(1)
    assert (data[:, :5] == 50).all() and (data[:, 5:] == 80).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(crs="EPSG:32631", col=10), "differ in CRS"),
    (dict(res=0.25, col=20), "differ in pixel size"),  # b.tif starts 5 m east, where a.tif ends
])
def test_mosaic_rejects_mixed_crs_or_resolution(tmp_path, kwargs, message):
    write(tmp_path / "a.tif", rgb(10, 10))
    write(tmp_path / "b.tif", rgb(10, 10), **kwargs)
    with pytest.raises(InputError, match=message):
        open_mosaic([tmp_path / "a.tif", tmp_path / "b.tif"], [1, 2, 3])


def test_resampled_read_matches_gdal_average(tmp_path):
    data = rgb(40, 60, seed=5)
    write(tmp_path / "a.tif", data, res=0.25)
    mosaic = open_mosaic([tmp_path / "a.tif"], [1, 2, 3], target_res=0.5)
    assert mosaic.resampled and (mosaic.width, mosaic.height) == (30, 20)
    assert mosaic.transform.a == 0.5 and mosaic.transform.c == X0
    with mosaic.open() as src, rasterio.open(tmp_path / "a.tif") as ref:
        ours = src.read([1, 2, 3])
        gdal = ref.read([1, 2, 3], out_shape=(3, 20, 30), resampling=Resampling.average)
        assert valid_mask(src, Window(0, 0, 30, 20), [1, 2, 3]).all()
    np.testing.assert_array_equal(ours, gdal)


# -- outputs -------------------------------------------------------------------------------


CLASSES = ClassTable([ClassInfo(0, "water", (0, 0, 255)), ClassInfo(1, "forest", (0, 128, 0)),
                      ClassInfo(2, "urban", (200, 0, 0))])


def test_writer_writes_georeferenced_class_raster_with_legend(tmp_path):
    out = tmp_path / "classes.tif"
    transform = Affine(RES, 0, X0, 0, -RES, Y0)
    arr = np.random.default_rng(0).integers(0, 3, (300, 520)).astype(np.uint8)
    arr[:10] = 255
    with AtomicRasterWriter(out, width=520, height=300, crs="EPSG:2154", transform=transform, block=128,
                            classes=CLASSES, description=class_description(CLASSES), tags={"CASWIT_MODEL": "m"}) as w:
        for r in range(0, 300, 128):
            for c in range(0, 520, 128):
                win = Window(c, r, min(128, 520 - c), min(128, 300 - r))
                w.write(win, arr[r : r + int(win.height), c : c + int(win.width)])
        assert not out.exists()  # nothing at the destination before the commit
        w.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "classes.tif.aux.xml"]
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 2154 and src.transform == transform
        assert (src.width, src.height, src.count, src.dtypes[0], src.nodata) == (520, 300, 1, "uint8", 255)
        assert src.block_shapes[0] == (128, 128) and src.compression is not None
        assert src.overviews(1) == [2, 4]
        np.testing.assert_array_equal(src.read(1), arr)
        cmap = src.colormap(1)
        assert cmap[1] == (0, 128, 0, 255) and cmap[255][3] == 0
        assert "1 forest" in src.descriptions[0]
        assert src.tags()["CASWIT_MODEL"] == "m"
    assert read_pam_categories(out) == ["water", "forest", "urban"]
    rat = (tmp_path / "classes.tif.aux.xml").read_text()
    assert "GDALRasterAttributeTable" in rat and "<F>urban</F>" in rat
    assert oct(os.stat(out).st_mode & 0o777) != oct(0o600)


def test_writer_abort_leaves_nothing(tmp_path):
    out = tmp_path / "classes.tif"
    out.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="killed"):
        with AtomicRasterWriter(out, width=32, height=32, crs=None, transform=Affine.identity(),
                                classes=CLASSES) as w:
            w.write(Window(0, 0, 32, 32), np.zeros((32, 32), np.uint8))
            raise RuntimeError("killed")
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["classes.tif"]


def test_output_checks(tmp_path):
    existing = tmp_path / "x.tif"
    existing.write_text("x")
    with pytest.raises(OutputError, match="exists \\(pass --overwrite"):
        OutputSet().check(existing)
    assert OutputSet(overwrite=True).check(existing) == existing
    with pytest.raises(OutputError, match="does not exist"):
        OutputSet().check(tmp_path / "missing" / "x.tif")
    with pytest.raises(OutputError, match="is not a folder"):
        OutputSet().check(existing / "y.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]  # checking writes nothing


@pytest.mark.parametrize("w, h, expected", [(100, 100, []), (300, 200, [2]), (2000, 600, [2, 4, 8])])
def test_overview_factors(w, h, expected):
    assert overview_factors(w, h) == expected


def test_pam_categories_absent(tmp_path):
    assert read_pam_categories(tmp_path / "none.tif") == []


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_zero_invalid_equals_boolean_index_assignment(dtype):
    rng = np.random.default_rng(3)
    pixels = rng.integers(1, 200, (3, 40, 70)).astype(dtype)
    if dtype == "float32":
        pixels[0, 5, :] = np.nan  # nodata as NaN: set to 0 too, not left NaN as a multiplication would
    valid = rng.random((40, 70)) > 0.3
    valid[5, :] = False
    expected = pixels.copy()
    expected[:, ~valid] = 0
    zero_invalid(pixels, valid)
    np.testing.assert_array_equal(pixels, expected)
