"""Planning is bounded by where the inputs' data is, not by their declared extent (review item 4).

The figure: planning a sparse input (a VRT declaring 1e7 x 1e7 px around one
small source, two 256 px files 100 km apart) allocates less than
``PLAN_MEMORY`` of Python memory and writes a plan.json of a few KB; a dense
national mosaic (1e13 px) is held to ``MAX_UNITS`` units (about 26 MiB to
plan, 1.3 MiB of plan.json; ``test_predict_plan.py``).
"""

import json
import time
import tracemalloc

import pytest
from affine import Affine

from caswit_geo.engine.predict import PredictConfig
from caswit_geo.engine.predict.dryrun import dry_run
from caswit_geo.engine.predict.job import make_manifest
from caswit_geo.geo.mosaic import build_vrt_xml, describe_raster
from tests.helpers import GSD, predict_inputs, rgb_image, write_on_grid

PLAN_MEMORY = 16 << 20  # bytes of Python allocations while planning a sparse input, whatever its extent


def _declared_vrt(folder, side: int):
    """``big.vrt``: ``side`` x ``side`` px declared, its only source ``in.tif`` (256 x 384 px) in the middle."""
    info = describe_raster(folder / "in.tif")
    t = info.transform
    transform = Affine(t.a, 0, t.c - side // 2 * t.a, 0, t.e, t.f - side // 2 * t.e)
    (folder / "big.vrt").write_text(build_vrt_xml([info], transform, side, side, (1, 2, 3), info.crs))
    return folder / "big.vrt", (side // 2, side // 2)


def _plan_measured(folder, inputs, name):
    config = PredictConfig(inputs=[str(p) for p in inputs], out=str(folder / f"{name}.tif"),
                           weights=str(folder / "nano.safetensors"), shard=(0, 2), workers=0, progress=False)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        report = dry_run(config, calibrate=0)
        manifest = json.dumps(make_manifest(report.plan, 2), separators=(",", ":"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return report, manifest, peak, time.perf_counter() - t0


@pytest.mark.slow
def test_a_declared_huge_vrt_and_a_sparse_mosaic_plan_in_bounded_memory(tmp_path):
    predict_inputs(tmp_path)
    vrt, (c0, r0) = _declared_vrt(tmp_path, 10_000_000)
    report, manifest, peak, seconds = _plan_measured(tmp_path, [vrt], "vrt")
    plan = report.plan
    assert (plan.mosaic.width, plan.mosaic.height) == (10_000_000, 10_000_000)
    # units only around the source's 384 x 256 px: at most 2 x 2 lattice cells, all of them meeting it
    assert 1 <= len(plan.units) <= 4
    for u in plan.units:
        w = plan.region(u)
        assert w.col_off < c0 + 384 and w.col_off + w.width > c0 and w.row_off < r0 + 256 and w.row_off + w.height > r0
    # 384 x 256 px starting 64 px into a 128 px tile (5e6 = 39062.5 tiles): 4 x 3 tiles
    assert c0 % 128 == r0 % 128 == 64 and report.tiles_with_data == 4 * 3
    assert report.area_km2 == pytest.approx(384 * 256 * GSD * GSD / 1e6)  # the data's area, not the declared one
    assert peak < PLAN_MEMORY, peak
    assert len(manifest) < 8192 and seconds < 60

    # two 256 px files 100 km apart: a 500k px mosaic, two units
    write_on_grid(tmp_path / "a.tif", rgb_image(256, 256, seed=1))
    write_on_grid(tmp_path / "b.tif", rgb_image(256, 256, seed=2), col=500_000, row=500_000)
    report, manifest, peak, seconds = _plan_measured(tmp_path, [tmp_path / "a.tif", tmp_path / "b.tif"], "sparse")
    plan = report.plan
    assert plan.mosaic.width == plan.mosaic.height == 500_256
    assert sorted((int(plan.region(u).col_off), int(plan.region(u).row_off)) for u in plan.units) == [
        (0, 0), (500_000 // 1024 * 1024, 500_000 // 1024 * 1024)]
    assert report.tiles_with_data == 4 + 9  # b starts 32 px into a tile (500000 = 3906.25 tiles): 3 x 3
    assert peak < PLAN_MEMORY, peak
    assert len(manifest) < 8192 and seconds < 60
