"""Assembling outputs from unit parts: the overview pyramid built piece by piece equals the whole one."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from caswit_geo.engine.predict.finalize import overview_levels
from caswit_geo.engine.predict.plan import OutputRaster, PredictPlan, plan_units
from caswit_geo.engine.predict.sink import UnitPyramid
from caswit_geo.geo.blend import RowBlock
from caswit_geo.geo.grid import TileGrid, strips
from caswit_geo.geo.pyramid import levels_for, pyramid


def smooth_classes(h, w, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 5, (h // 8 + 1, w // 8 + 1)).astype(np.uint8)
    out = np.kron(small, np.ones((8, 8), np.uint8))[:h, :w]
    out[rng.random((h, w)) < 0.05] = 255  # scattered nodata
    return out


@pytest.mark.parametrize("width, height, block, unit_size, strip, coarse", [
    (1000, 600, 16, 256, 64, [32, 64]),  # levels 2..16 from the units, 32 and 64 computed at assembly
    (333, 517, 32, 128, 96, []),  # odd sizes: the last level pixels cover cut blocks
])
def test_pyramids_of_units_assemble_into_the_pyramid_of_the_raster(tmp_path, width, height, block, unit_size, strip,
                                                                   coarse):
    classes = smooth_classes(height, width, seed=width)
    confidence = np.where(classes == 255, 255, (classes.astype(int) * 17 + 30) % 101).astype(np.uint8)
    transform = Affine(0.2, 0, 650_000, 0, -0.2, 6_860_000)
    raster = OutputRaster(Path("map.tif"), Path("conf.tif"), Window(0, 0, width, height), transform, None, ())
    grid = TileGrid(width, height, block)
    units = plan_units([raster], grid, block, unit_size)
    plan = PredictPlan(
        inputs=[], weights=Path("w"), meta=None, mosaic=SimpleNamespace(crs=None), grid=grid, block=block,
        strip_width=strip, unit_size=unit_size, context="none", per_file=False, rasters=[raster], units=units,
        vector=None, preview=None, format="cog", tags={}, warnings=[], cache_bytes=0, job_dir=tmp_path,
    )
    job = SimpleNamespace(pyramid_path=lambda i: tmp_path / f"u{i:06d}.ovr.tif")
    for u in units:  # what the writer does: blocks of rows, strip by strip, into the unit's pyramid
        c0, r0, w, h = (int(v) for v in (u.window.col_off, u.window.row_off, u.window.width, u.window.height))
        pyr = UnitPyramid(h, w, plan.unit_levels(u), True)
        for x0, x1 in strips(w, strip):
            for y0 in range(0, h, block):
                y1 = min(y0 + block, h)
                win = Window(x0, y0, x1 - x0, y1 - y0)
                pyr.add(RowBlock(win, classes[r0 + y0 : r0 + y1, c0 + x0 : c0 + x1],
                                 confidence[r0 + y0 : r0 + y1, c0 + x0 : c0 + x1]))
        pyr.write(job.pyramid_path(u.id), {"unit": u.id})
    factors = levels_for(width, height, block)
    assert [f for f in factors if f > block] == coarse
    for band, image, is_classes in ((1, classes, True), (2, confidence, False)):
        paths = overview_levels(plan, job, 0, band, tmp_path)
        assert len(paths) == len(factors)
        for path, want in zip(paths, pyramid(image, factors, is_classes)):
            with rasterio.open(path) as src:
                np.testing.assert_array_equal(src.read(1), want, err_msg=f"{path.name}")
