"""Geography and real imagery (review items 8 and 9 of "Nothing trusted, round 3").

Rasters whose georeferencing the map cannot follow are refused in one line
that says what to do; imagery traits that would silently change the map
(an RGBI band 4 tagged alpha, nodata at the brightest value) are handled and
said. Each hostile row is a :class:`hostile.Case`; the tests after the table
check the pixels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import from_origin

from caswit_geo.geo.mosaic import describe_raster, open_mosaic
from tests.helpers import (
    PREDICT_CLASSES,
    module_checkpoint,
    rgb_image,
    run_predict,
    write_on_grid,
)
from tests.hostile import Case, run_case

SHARED = {}


@pytest.fixture(scope="module", autouse=True)
def shared(tmp_path_factory):
    yield from module_checkpoint(SHARED, tmp_path_factory, PREDICT_CLASSES)


def raster(transform=None, crs=None, gcps=None):
    def setup(folder):
        profile = dict(driver="GTiff", width=64, height=64, count=3, dtype="uint8")
        if crs is not None:
            profile["crs"] = crs
        if transform is not None:
            profile["transform"] = transform
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(folder / "in.tif", "w", **profile) as dst:
                dst.write(rgb_image(64, 64))
                if gcps:
                    dst.gcps = (gcps, CRS.from_epsg(2154))
        return {"ckpt": str(SHARED["ckpt"])}
    return setup


PREDICT = ["predict", "in.tif", "--out", "map.tif", "--weights", "{ckpt}"]
GCPS = [GroundControlPoint(0, 0, 650_000, 6_860_000), GroundControlPoint(64, 0, 650_012.8, 6_860_000),
        GroundControlPoint(0, 64, 650_000, 6_859_987.2)]

CASES = [
    Case("8-crs-without-geotransform", PREDICT, setup=raster(crs="EPSG:2154"),
         expect=("in.tif", "has a CRS but no geotransform", "gdal_edit.py")),
    Case("8-gcps", PREDICT, setup=raster(gcps=GCPS), expect=("in.tif", "3 ground control points", "gdalwarp")),
    Case("8-south-up", PREDICT, setup=raster(Affine(0.2, 0, 650_000, 0, 0.2, 6_860_000), "EPSG:2154"),
         expect=("in.tif", "south-up", "gdalwarp in.tif north-up.tif")),
    Case("8-latitude-past-the-pole", PREDICT, setup=raster(from_origin(10, 95, 1e-4, 1e-4), "EPSG:4326"),
         expect=("in.tif", "latitude 95", "past the pole")),
    Case("8-longitude-past-180", PREDICT, setup=raster(from_origin(179.999, 45, 1e-4, 1e-4), "EPSG:4326"),
         expect=("in.tif", "longitude 180.005", "antimeridian", "gdalwarp -t_srs")),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_hostile_imagery(case, tmp_path, capsys):
    run_case(case, tmp_path, capsys)


def test_band_4_tagged_alpha_that_holds_nir_is_not_a_mask(tmp_path):
    image = np.concatenate([rgb_image(128, 128), np.full((1, 128, 128), 90, np.uint8)])
    image[3, :, :64] = 0  # NIR 0 on the left half: as a mask it would blank it
    write_on_grid(tmp_path / "rgbi.tif", image, alpha=True)
    assert describe_raster(tmp_path / "rgbi.tif").alpha_is_data
    mosaic = open_mosaic([tmp_path / "rgbi.tif"], (1, 2, 3))
    assert any("band 4 is tagged alpha but holds more than a mask's 0 and 255" in n for n in mosaic.warnings)
    with pytest.warns(UserWarning, match="rgbi.tif: band 4 is tagged alpha but holds more"):
        res = run_predict(SHARED["ckpt"], [tmp_path / "rgbi.tif"], tmp_path / "map.tif")
    with rasterio.open(tmp_path / "map.tif") as src:
        assert (src.read(1) != 255).all()  # every pixel mapped, NIR = 0 or not
    assert res.nodata_pixels == 0
    # told that it is a mask after all (--alpha-mask), the band masks where it is 0
    mosaic = open_mosaic([tmp_path / "rgbi.tif"], (1, 2, 3), alpha_mask=True)
    assert not any("band 4 is tagged alpha" in n for n in mosaic.warnings)
    res = run_predict(SHARED["ckpt"], [tmp_path / "rgbi.tif"], tmp_path / "masked.tif", alpha_mask=True)
    with rasterio.open(tmp_path / "masked.tif") as src:
        got = src.read(1)
    assert (got[:, :64] == 255).all() and (got[:, 64:] != 255).all() and res.nodata_pixels == 128 * 64


def test_a_real_alpha_mask_still_masks(tmp_path):
    image = np.concatenate([rgb_image(128, 128), np.full((1, 128, 128), 255, np.uint8)])
    image[3, :, :64] = 0
    write_on_grid(tmp_path / "rgba.tif", image, alpha=True)
    assert not describe_raster(tmp_path / "rgba.tif").alpha_is_data
    run_predict(SHARED["ckpt"], [tmp_path / "rgba.tif"], tmp_path / "map.tif")
    with rasterio.open(tmp_path / "map.tif") as src:
        got = src.read(1)
    assert (got[:, :64] == 255).all() and (got[:, 64:] != 255).all()


def test_nodata_at_the_brightest_value_is_warned_and_its_share_reported(tmp_path, capsys):
    from tests.helpers import run_cli

    image = rgb_image(128, 128)
    image[:, :16, :] = 255  # saturated white: 16 rows x 128 columns
    write_on_grid(tmp_path / "neon.tif", image, nodata=255)
    mosaic = open_mosaic([tmp_path / "neon.tif"], (1, 2, 3))
    assert any("neon.tif: nodata is 255, the brightest value" in n and "--nodata none" in n for n in mosaic.warnings)
    code, out, err = run_cli(["predict", str(tmp_path / "neon.tif"), "--out", str(tmp_path / "map.tif"), "--weights",
                              str(SHARED["ckpt"])], capsys)
    assert code == 0, err
    assert "nodata is 255" in err
    assert f"nodata: {16 * 128:,} px (12.50 % of the map)" in out + err


def test_png_and_jpeg_are_not_called_striped_tiffs(tmp_path):
    from PIL import Image

    from caswit_geo.engine.predict.dryrun import preflight_warnings

    Image.fromarray(np.zeros((8, 1100, 3), np.uint8)).save(tmp_path / "wide.png")
    notes = preflight_warnings(open_mosaic([tmp_path / "wide.png"], (1, 2, 3)))
    assert any(n.startswith("wide.png: not tiled (PNG, JPEG") for n in notes), notes
    assert not any("striped TIFF" in n for n in notes)


def test_jpeg_predict_shows_no_raw_rasterio_warning(tmp_path, capsys):
    from PIL import Image

    from tests.helpers import run_cli

    Image.fromarray(rgb_image(64, 64).transpose(1, 2, 0)).save(tmp_path / "photo.jpg")
    code, out, err = run_cli(["predict", str(tmp_path / "photo.jpg"), "--out", str(tmp_path / "map.tif"),
                              "--weights", str(SHARED["ckpt"])], capsys)
    assert code == 0, err
    assert "no CRS; working in pixel coordinates" in err
    assert "geotransform" not in err + out  # rasterio's own "Dataset has no geotransform, gcps, or rpcs"


def test_vrt_counts_its_sources_bytes_and_overviews(tmp_path):
    write_on_grid(tmp_path / "a.tif", rgb_image(512, 512))
    with rasterio.open(tmp_path / "a.tif", "r+") as dst:
        dst.build_overviews([2, 4])
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">a.tif'
        f'</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>' for b in (1, 2, 3))
    (tmp_path / "m.vrt").write_text(f'<VRTDataset rasterXSize="512" rasterYSize="512">{bands}</VRTDataset>')
    info = describe_raster(tmp_path / "m.vrt")
    assert info.overviews == 2
    assert info.files_bytes == (tmp_path / "m.vrt").stat().st_size + (tmp_path / "a.tif").stat().st_size


def test_the_whole_globe_is_a_valid_geographic_extent():
    from caswit_geo.geo.georef import check_geographic_extent

    check_geographic_extent(from_origin(-180, 90, 1, 1), 360, 180, "world.tif")  # corners exactly on the limits


def test_resample_says_which_grid_the_map_is_on(tmp_path):
    from caswit_geo.core.spec import InputSpec
    from caswit_geo.engine.predict.plan import check_resolution

    write_on_grid(tmp_path / "fine.tif", rgb_image(64, 64), res=0.2)
    mosaic = open_mosaic([tmp_path / "fine.tif"], (1, 2, 3))
    target, notes = check_resolution(mosaic, InputSpec(tile_size=128, gsd=0.5), resample=True)
    assert target == pytest.approx(0.5)
    assert notes == ["--resample: the map is on the model's 0.5 m grid, not the input's 0.2 m grid; "
                     "gdalwarp -tr 0.2 0.2 -r near brings it onto the input's pixel size"]
    _, same = check_resolution(mosaic, InputSpec(tile_size=128, gsd=0.2), resample=True)
    assert same == []  # nothing to say when the grids are one


@pytest.mark.parametrize("option, file_nodata, masked", [
    ("none", 255, 0),  # the file's 255 no longer masks its white
    ("255", None, 16 * 128),  # a file without nodata gets one
    (None, 255, 16 * 128),  # the file's own
    ("7", 255, 0),  # another value replaces the file's
])
def test_nodata_option_replaces_the_files_value(tmp_path, option, file_nodata, masked):
    image = rgb_image(128, 128)
    image[image == 255] = 254
    image[:, :16, :] = 255
    write_on_grid(tmp_path / "neon.tif", image, nodata=file_nodata)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_predict(SHARED["ckpt"], [tmp_path / "neon.tif"], tmp_path / "map.tif", nodata=option)
    warned = any("nodata is 255, the brightest value" in str(w.message) for w in caught)
    assert warned == (option is None)  # a value the user gave is not questioned
    with rasterio.open(tmp_path / "map.tif") as src:
        got = src.read(1)
    assert res.nodata_pixels == masked == int((got == 255).sum())
    if masked:
        assert (got[:16] == 255).all()


def test_nodata_option_must_be_a_pixel_value(tmp_path, capsys):
    from tests.helpers import run_cli

    write_on_grid(tmp_path / "a.tif", rgb_image(64, 64))
    code, _, err = run_cli(["predict", str(tmp_path / "a.tif"), "--out", str(tmp_path / "m.tif"), "--weights",
                            str(SHARED["ckpt"]), "--nodata", "1e400"], capsys)
    assert code == 1 and "--nodata 1e400: expected none or a pixel value 0..65535" in err
    assert not (tmp_path / "m.tif").exists()
