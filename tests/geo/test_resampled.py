"""Reads at another pixel size (geo/resampled.py) against GDAL's warper, brute force and hand-computed kernels.

Reference: ``rasterio.warp.reproject`` (GDAL's warper, 'average' when
shrinking, 'bilinear' when enlarging) of the unsplit raster; the mosaic is
that raster cut into files whose edges fall between pixels of the output
grid. The last row and column of an average reach past the raster, where
GDAL's warper weighs the part inside differently: there the reference is
the exact area average of the part inside, by brute force in fractions.
"""

import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window

from caswit_geo.geo import resampled
from caswit_geo.geo.context import read_canvas
from caswit_geo.geo.mosaic import open_mosaic
from caswit_geo.geo.resampled import ResampledReader, axis_taps, native_window, read_parts
from tests.helpers import GSD, grid_transform, rgb_image, write_on_grid

H, W = 83, 97
CUT_ROW, CUT_COL = 41, 53  # at 0.26 m: 41 x 0.2 / 0.26 = 31.5 px, between pixels


def write_split(folder, data, nodata=None):
    """``data`` as one file and as four files cut at (CUT_ROW, CUT_COL); (whole path, file paths)."""
    whole = write_on_grid(folder / "whole.tif", data, nodata=nodata)
    parts = []
    for r0, r1 in ((0, CUT_ROW), (CUT_ROW, H)):
        for c0, c1 in ((0, CUT_COL), (CUT_COL, W)):
            parts.append(write_on_grid(folder / f"p{r0}_{c0}.tif", data[:, r0:r1, c0:c1], col=c0, row=r0,
                                       nodata=nodata))
    return whole, parts


@pytest.mark.parametrize("res, alg", [(0.26, Resampling.average), (0.5, Resampling.average),
                                      (0.15, Resampling.bilinear), (0.2 / 3, Resampling.bilinear)])
def test_mosaic_read_equals_gdal_warp_of_the_whole(tmp_path, res, alg):
    data = rgb_image(H, W, seed=3)
    whole, parts = write_split(tmp_path, data)
    mosaic = open_mosaic(parts, (1, 2, 3), target_res=res)
    assert mosaic.resampled and mosaic.native is not None
    with mosaic.open() as src:
        ours = src.read([1, 2, 3])
        assert src.read_masks(1).all()
    ref = np.zeros_like(ours)
    with rasterio.open(whole) as ws:
        reproject(rasterio.band(ws, [1, 2, 3]), ref, src_transform=ws.transform, src_crs=ws.crs,
                  dst_transform=mosaic.transform, dst_crs=ws.crs, resampling=alg)
    if alg == Resampling.average:  # the last row and column: the exact average of the part inside
        step = Fraction(res).limit_denominator(1000) / Fraction(GSD).limit_denominator(1000)
        h, w = ours.shape[1:]
        for r, c in [(r, w - 1) for r in range(h)] + [(h - 1, c) for c in range(w)]:
            ref[:, r, c] = exact_average(data, r, c, step)
    np.testing.assert_array_equal(ours, ref)


def exact_average(data, r, c, step):
    """(C,) area average of output pixel (r, c) over the native pixels inside ``data``, rounded half up."""
    def overlaps(i0, n):
        lo, hi = i0 * step, (i0 + 1) * step
        return [(i, min(Fraction(i + 1), hi) - max(Fraction(i), lo)) for i in range(int(lo), min(int(hi) + 1, n))]
    out = []
    for band in data.astype(int):
        total = area = Fraction(0)
        for i, wy in overlaps(r, data.shape[1]):
            for j, wx in overlaps(c, data.shape[2]):
                if wy > 0 and wx > 0:
                    total, area = total + wy * wx * int(band[i, j]), area + wy * wx
        out.append(int(total / area + Fraction(1, 2)))
    return out


def test_every_window_reads_the_same_pixels(tmp_path):
    """A tile read alone equals the same pixels cut from a larger read, across file edges and past the mosaic."""
    data = rgb_image(H, W, seed=5)
    data[:, 30:50, 40:60] = 0  # nodata across the cut
    _, parts = write_split(tmp_path, data, nodata=0)
    mosaic = open_mosaic(parts, (1, 2, 3), target_res=0.26)
    pad = 9
    with mosaic.open() as src:
        full, full_valid = read_canvas(src, Window(-pad, -pad, src.width + 2 * pad, src.height + 2 * pad),
                                       (1, 2, 3), with_mask=True)
        assert not full_valid[:pad].any() and not full[:, :pad].any()  # outside: 0 and invalid
        assert 0 < full_valid.mean() < 1
        rng = np.random.default_rng(0)
        for _ in range(40):
            w, h = (int(v) for v in rng.integers(1, 30, 2))
            c, r = (int(v) for v in rng.integers(-pad, [src.width + pad - w + 1, src.height + pad - h + 1]))
            part, valid = read_canvas(src, Window(c, r, w, h), (1, 2, 3), with_mask=True)
            cut = (slice(r + pad, r + pad + h), slice(c + pad, c + pad + w))
            np.testing.assert_array_equal(part, full[(slice(None), *cut)])
            np.testing.assert_array_equal(valid, full_valid[cut])


def test_axis_taps_by_hand():
    # 1.25 native pixels per output pixel: pixel 0 covers [0, 1.25), pixel 1 covers [1.25, 2.5)
    index, weights = axis_taps(0, 2, 0.0, 1.25)
    np.testing.assert_array_equal(index, [[0, 1], [1, 2], [2, 3]])
    np.testing.assert_allclose(weights, [[1.0, 0.75], [0.25, 0.5], [0.0, 0.0]])  # the length covered
    # half a native pixel per output pixel: centres at -0.25 and 0.25 of native pixel centres
    index, weights = axis_taps(0, 2, 0.0, 0.5)
    np.testing.assert_array_equal(index, [[-1, 0], [0, 1]])
    np.testing.assert_allclose(weights, [[0.25, 0.75], [0.75, 0.25]])
    # the taps of a window are those of the whole axis: a pixel's kernel depends on its position only
    whole_index, whole_weights = axis_taps(0, 50, 0.3, 1.3)
    index, weights = axis_taps(17, 9, 0.3, 1.3)
    np.testing.assert_array_equal(index, whole_index[:, 17:26])
    np.testing.assert_array_equal(weights, whole_weights[:, 17:26])
    assert native_window(Window(17, 0, 9, 1), (0.3, 0.0), (1.3, 1.3)).col_off == index.min()


def test_nodata_pixels_carry_no_weight(tmp_path):
    """2 x 2 native pixels per output pixel: the mean of the valid ones; valid where the centre's pixel is."""
    data = np.array([[[10, 21, 40, 40],
                      [30, 0, 40, 40],
                      [0, 50, 60, 60],
                      [70, 80, 60, 0]]], np.uint8)
    path = write_on_grid(tmp_path / "a.tif", data, nodata=0)
    with rasterio.open(path) as native:
        src = ResampledReader(native, 2, 2, grid_transform(res=2 * GSD))
        values, valid = src.read_valid([1], Window(0, 0, 2, 2))
    # (10 + 21 + 30) / 3 = 20.33; (50 + 70 + 80) / 3 = 66.67; (60 x 3) / 3; the centre of an output pixel is
    # the corner of 4 native pixels: floor() takes the lower right one
    np.testing.assert_array_equal(values[0], [[20, 40], [67, 60]])
    np.testing.assert_array_equal(valid, [[False, True], [True, False]])


@pytest.mark.parametrize("res, level", [(0.39, None), (0.4, 0), (0.5, 0), (0.9, 1), (1.7, 2)])
def test_one_file_is_shrunk_from_its_overviews_as_gdalwarp(tmp_path, res, level):
    """The coarsest overview whose pixels are not larger than the target's (gdalwarp's -ovr AUTO), then the
    same average: equal to GDAL's warper run on that overview, and to gdalwarp itself when installed."""
    n = 200
    path = write_on_grid(tmp_path / "a.tif", rgb_image(n, n, seed=7), tiled=True, blockxsize=64, blockysize=64)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4, 8], Resampling.average)
    mosaic = open_mosaic([path], (1, 2, 3), target_res=res)
    assert mosaic.native_overview == level and mosaic.native_factor == (1 if level is None else 2 ** (level + 1))
    with mosaic.open() as src:
        ours = src.read([1, 2, 3])
    h, w = ours.shape[1:]
    inner = (slice(None), slice(0, h - 1), slice(0, w - 1))  # the last row and column: see the module's doc
    ref = np.zeros_like(ours)
    with rasterio.open(path, **({} if level is None else {"overview_level": level})) as ovr:
        reproject(rasterio.band(ovr, [1, 2, 3]), ref, src_transform=ovr.transform, src_crs=ovr.crs,
                  dst_transform=mosaic.transform, dst_crs=ovr.crs, resampling=Resampling.average)
    np.testing.assert_array_equal(ours[inner], ref[inner])
    if shutil.which("gdalwarp"):
        left, top = mosaic.transform.c, mosaic.transform.f
        subprocess.run(["gdalwarp", "-q", "-r", "average", "-tr", str(res), str(res), "-te", str(left),
                        str(top - h * res), str(left + w * res), str(top), str(path), str(tmp_path / "w.tif")],
                       check=True)
        with rasterio.open(tmp_path / "w.tif") as warped:
            np.testing.assert_array_equal(ours[inner], warped.read()[inner])


def test_large_reads_are_cut_into_parts_with_the_same_pixels(tmp_path, monkeypatch):
    data = rgb_image(H, W, seed=9)
    data[:, 10:20, 30:45] = 0
    _, parts = write_split(tmp_path, data, nodata=0)
    mosaic = open_mosaic(parts, (1, 2, 3), target_res=0.26)
    with mosaic.open() as src:
        whole = src.read_valid((1, 2, 3), Window(0, 0, src.width, src.height))
        window = Window(3, 2, src.width - 5, src.height - 4)
        cut = read_parts(window, src.step, budget=150)
        covered = np.zeros((src.height, src.width), int)
        for p in cut:
            covered[int(p.row_off):int(p.row_off + p.height), int(p.col_off):int(p.col_off + p.width)] += 1
        assert len(cut) > 4 and covered[2:-2, 3:-2].min() == 1 and covered.sum() == window.width * window.height
        monkeypatch.setattr(resampled, "READ_PIXELS", 150)
        reads = []
        monkeypatch.setattr(resampled, "read_canvas", lambda *a, **k: reads.append(a[1]) or read_canvas(*a, **k))
        values, valid = src.read_valid((1, 2, 3), window)
        assert len(reads) == len(cut) and max(r.width * r.height for r in reads) < 400  # the parts, with margins
    np.testing.assert_array_equal(values, whole[0][:, 2:-2, 3:-2])
    np.testing.assert_array_equal(valid, whole[1][2:-2, 3:-2])


def test_mosaic_is_shrunk_from_its_files_overviews_when_they_form_one_grid(tmp_path):
    """Files cut on multiples of the overview factors: their overviews, read through our VRT, give the whole
    raster's overview read; cut elsewhere, the files are read at full resolution."""
    data = rgb_image(160, 200, seed=2)
    for cut, level in (((80, 100), 0), ((81, 100), None)):
        folder = tmp_path / f"cut{cut[0]}"
        folder.mkdir()
        whole = write_on_grid(folder / "whole.tif", data, tiled=True, blockxsize=64, blockysize=64)
        parts = []
        for r0, r1 in ((0, cut[0]), (cut[0], 160)):
            for c0, c1 in ((0, cut[1]), (cut[1], 200)):
                parts.append(write_on_grid(folder / f"p{r0}_{c0}.tif", data[:, r0:r1, c0:c1], col=c0, row=r0))
        for path in [whole, *parts]:
            with rasterio.open(path, "r+") as dst:
                dst.build_overviews([2, 4], Resampling.average)
        mosaic = open_mosaic(parts, (1, 2, 3), target_res=0.5)  # 2.5 px per pixel: the x2 overviews
        assert ("OVERVIEW_LEVEL" in mosaic.native) == (level is not None)
        assert mosaic.native_factor == (1 if level is None else 2) and mosaic.native_overview is None
        with mosaic.open() as src:
            ours = src.read([1, 2, 3])
        if level is None:  # full resolution: the warper's average of the whole
            ref = np.zeros_like(ours)
            with rasterio.open(whole) as ws:
                reproject(rasterio.band(ws, [1, 2, 3]), ref, src_transform=ws.transform, src_crs=ws.crs,
                          dst_transform=mosaic.transform, dst_crs=ws.crs, resampling=Resampling.average)
            np.testing.assert_array_equal(ours[:, :-1, :-1], ref[:, :-1, :-1])
        else:
            one = open_mosaic([whole], (1, 2, 3), target_res=0.5)
            assert one.native_overview == level
            with one.open() as src:
                np.testing.assert_array_equal(ours, src.read([1, 2, 3]))


@pytest.mark.parametrize("step", [1.3, 2.7, 0.7])
def test_all_valid_weights_equal_the_resampled_mask_bit_for_bit(step):
    """The divisor of a window without nodata is the resampled mask of ones of a window with some: the same
    bits, so a pixel's value never depends on nodata elsewhere in the window read."""
    ri, rw = axis_taps(3, 40, 0.37, step)
    ci, cw = axis_taps(5, 50, 0.11, step)
    ri, ci = ri - ri.min(), ci - ci.min()
    ones = np.ones((1, int(ri.max()) + 1, int(ci.max()) + 1), np.float32)
    rw, cw = rw.astype(np.float32), cw.astype(np.float32)
    shrink = step >= 1
    np.testing.assert_array_equal(resampled._unit_weights(rw, cw, shrink),
                                  resampled._separable(ones, (ri, rw), (ci, cw), shrink)[0])


def test_block_size_in_mosaic_pixels_is_scaled_to_the_pixel_size_read(tmp_path):
    """The widest and tallest blocks of the files, in pixels of the mosaic as read (here 0.25 m from 0.2 m)."""
    data = rgb_image(64, 96)
    paths = [write_on_grid(tmp_path / "a.tif", data, tiled=True, blockxsize=32, blockysize=16),
             write_on_grid(tmp_path / "b.tif", data, col=96, tiled=True, blockxsize=16, blockysize=32)]
    native = open_mosaic(paths, (1, 2, 3))
    assert (native.block_width, native.block_height) == (32, 32)
    coarse = open_mosaic(paths, (1, 2, 3), target_res=GSD * 1.25)
    assert (coarse.block_width, coarse.block_height) == pytest.approx((32 / 1.25, 32 / 1.25))
