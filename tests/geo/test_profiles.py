"""GeoTIFF/COG profiles: what a file written with a profile reads back as, and keywords laid over it."""

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.shutil import copy as gdal_copy

from caswit_geo.geo.profiles import (
    NODATA,
    class_raster_profile,
    cog_options,
    gtiff_options,
    laid_over,
    lowres_chunk_profile,
    overview_levels_profile,
    part_profile,
    sieve_profile,
)

TRANSFORM = Affine(0.2, 0, 650_000, 0, -0.2, 6_860_000)
CRS = "EPSG:2154"


def classes(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 6, (height // 8 + 1, width // 8 + 1)), np.ones((8, 8)))[:height, :width].astype(
        np.uint8)


def write(path, profile: dict, array: np.ndarray | None = None) -> None:
    with rasterio.open(path, "w", **profile) as dst:
        if array is not None:
            dst.write(array if array.ndim == 3 else array[None])


def structure(path) -> dict:
    """GDAL's IMAGE_STRUCTURE (compression, interleave, predictor, layout) with the block, nodata, count, type."""
    with rasterio.open(path) as src:
        found = {k.lower(): v for k, v in src.tags(ns="IMAGE_STRUCTURE").items()}
        return found | dict(block=src.block_shapes[0], nodata=src.nodata, count=src.count, dtype=src.dtypes[0])


def test_class_raster_reads_back_tiled_deflate_with_nodata(tmp_path):
    array = classes(300, 520)
    write(tmp_path / "c.tif", class_raster_profile(520, 300, CRS, TRANSFORM, block=128), array)
    s = structure(tmp_path / "c.tif")
    assert (s["block"], s["compression"], s["nodata"], s["count"], s["dtype"]) == ((128, 128), "DEFLATE", NODATA, 1,
                                                                                   "uint8")
    assert s["predictor"] == "2"
    with rasterio.open(tmp_path / "c.tif") as src:
        assert src.crs.to_epsg() == 2154 and src.transform == TRANSFORM
        np.testing.assert_array_equal(src.read(1), array)


def test_a_raster_under_16_px_is_in_strips():
    assert "tiled" not in class_raster_profile(15, 300, None, Affine.identity(), block=128)
    assert class_raster_profile(16, 16, None, Affine.identity(), block=16)["blockysize"] == 16
    assert "TILED" not in gtiff_options(300, 8, 256) and gtiff_options(300, 16, 256)["TILED"] == "YES"


def test_keywords_lay_over_the_defaults_and_the_tiling(tmp_path):
    profile = class_raster_profile(256, 256, CRS, TRANSFORM, block=128, compress="lzw", blockxsize=256, nodata=0)
    write(tmp_path / "o.tif", profile, classes(256, 256))
    s = structure(tmp_path / "o.tif")
    assert (s["compression"], s["block"], s["nodata"]) == ("LZW", (128, 256), 0)
    assert laid_over({"a": 1, "b": 2}, {"b": 3}, a=4) == {"a": 4, "b": 3}


def test_part_is_zstd_band_interleaved_in_the_output_blocks(tmp_path):
    pair = np.stack([classes(256, 384), classes(256, 384, seed=1)])
    write(tmp_path / "p.tif", part_profile(384, 256, CRS, TRANSFORM, block=128, count=2), pair)
    s = structure(tmp_path / "p.tif")
    assert (s["block"], s["compression"], s["interleave"], s["count"], s["nodata"]) == ((128, 128), "ZSTD", "BAND",
                                                                                       2, NODATA)
    levels = overview_levels_profile(300, 40, count=1)  # packed levels: strips, not georeferenced
    assert "tiled" not in levels and "crs" not in levels and levels["compress"] == "zstd"


@pytest.mark.parametrize("width, height, block", [(300, 40, (32, 256)), (1024, 1024, (256, 256)), (20, 17, (16, 16))])
def test_lowres_chunk_blocks_fit_the_chunk_and_an_unwritten_chunk_reads_black(tmp_path, width, height, block):
    path = tmp_path / "lr.tif"
    write(path, lowres_chunk_profile(width, height, 3, "uint16", CRS, TRANSFORM))
    s = structure(path)
    assert (s["block"], s["compression"], s["nodata"], s["dtype"]) == (block, "ZSTD", None, "uint16")
    with rasterio.open(path) as src:
        assert not src.read().any()


def test_sieve_raster_keeps_the_source_nodata(tmp_path):
    write(tmp_path / "s.tif", sieve_profile(40, 40, CRS, TRANSFORM, nodata=0), classes(40, 40))
    s = structure(tmp_path / "s.tif")
    assert (s["block"], s["compression"], s["nodata"]) == ((256, 256), "DEFLATE", 0)


def test_cog_copies_the_overviews_of_its_source_before_the_data(tmp_path):
    source = tmp_path / "src.tif"
    write(source, class_raster_profile(1024, 768, CRS, TRANSFORM, block=256), classes(768, 1024))
    with rasterio.open(source, "r+") as dst:
        dst.build_overviews([2, 4], rasterio.enums.Resampling.nearest)
    for existing, expected in ((True, [2, 4]), (False, [])):
        out = tmp_path / f"cog-{existing}.tif"
        with rasterio.open(source) as src:
            gdal_copy(src, out, **cog_options(256, existing_overviews=existing))
        s = structure(out)
        assert (s["layout"], s["block"], s["compression"], s["nodata"]) == ("COG", (256, 256), "DEFLATE", NODATA)
        with rasterio.open(out) as cog:
            assert cog.overviews(1) == expected


def test_gtiff_copy_is_tiled_deflate(tmp_path):
    source = tmp_path / "src.tif"
    write(source, class_raster_profile(300, 200, CRS, TRANSFORM, block=128), classes(200, 300))
    with rasterio.open(source) as src:
        gdal_copy(src, tmp_path / "g.tif", **gtiff_options(300, 200, 64))
    s = structure(tmp_path / "g.tif")
    assert (s["block"], s["compression"], s["predictor"]) == ((64, 64), "DEFLATE", "2")
