"""The plan of a predict job without a model: units, their tiles, shares, job folder names, plan checks."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from affine import Affine
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError
from caswit_geo.core.spec import InputSpec, scale_warning
from caswit_geo.engine.predict.config import PredictConfig
from caswit_geo.engine.predict.plan import (
    MAX_UNITS,
    OutputRaster,
    PredictPlan,
    Unit,
    check_options,
    check_scaling,
    job_dir_for,
    plan_units,
    shard_units,
    unit_shape,
)
from caswit_geo.geo.grid import TileGrid, plan_tiles, split_span, touching


def raster(w, h, col=0, row=0):
    return OutputRaster(Path("out.tif"), None, Window(col, row, w, h), Affine.identity(), None, ())


@pytest.mark.parametrize("length, target, align, expected", [
    (5000, 4096, 512, [(0, 2560), (2560, 5000)]),  # two near-equal units, not 4096 + a 904 px sliver
    (8192, 1024, 128, [(i, i + 1024) for i in range(0, 8192, 1024)]),
    (100, 1024, 128, [(0, 100)]),  # smaller than a unit
    (1, 64, 64, [(0, 1)]),
    (300, 100, 128, [(0, 128), (128, 256), (256, 300)]),  # the target is below the alignment
])
def test_split_span_table(length, target, align, expected):
    assert split_span(length, target, align) == expected


@pytest.mark.parametrize("offsets, tile, start, stop", [
    ([0, 128, 256], 128, 0, 300), ([0, 128, 256], 128, 128, 129), ([0, 96, 192], 128, 100, 200),
    ([0, 96, 192], 128, 0, 1), ([0], 128, 5, 6), ([0, 96, 192], 128, 250, 320), ([0, 48, 96], 64, 200, 300),
])
def test_touching_equals_brute_force(offsets, tile, start, stop):
    brute = [i for i, o in enumerate(offsets) if o < stop and o + tile > start]
    assert list(touching(offsets, tile, start, stop)) == brute


@pytest.mark.parametrize("width, height, tile, overlap, strip, region", [
    (700, 500, 128, 0, 256, Window(256, 128, 300, 200)),
    (700, 500, 128, 32, 256, Window(100, 50, 400, 333)),
    (700, 500, 128, 64, None, Window(0, 0, 700, 500)),
    (90, 60, 128, 0, None, Window(0, 0, 90, 60)),
])
def test_region_plan_is_every_touching_tile_strip_by_strip(width, height, tile, overlap, strip, region):
    grid = TileGrid(width, height, tile, overlap)
    plan = plan_tiles(grid, strip, region)
    c0, r0 = int(region.col_off), int(region.row_off)
    w, h = int(region.width), int(region.height)
    strip_w = strip or w
    expected = []
    for s, x0 in enumerate(range(0, w, strip_w)):
        x1 = min(x0 + strip_w, w)
        for _, _, t in grid.windows():  # row-major already
            if (t.col_off < c0 + x1 and t.col_off + tile > c0 + x0 and t.row_off < r0 + h
                    and t.row_off + tile > r0):
                expected.append((s, t))
    assert plan == expected


@pytest.mark.parametrize("width, height, tile, block, unit_size, overlap", [
    (1000, 700, 128, 128, 256, 0),
    (1000, 700, 128, 128, 256, 32),
    (5000, 3000, 512, 512, 4096, 0),
    (130, 1, 128, 128, 128, 0),
])
def test_units_partition_the_raster_and_are_block_aligned(width, height, tile, block, unit_size, overlap):
    grid = TileGrid(width, height, tile, overlap)
    units = plan_units([raster(width, height)], grid, block, unit_size)
    cover = np.zeros((height, width), np.int32)
    align = math.lcm(block, tile)
    for u in units:
        w = u.window
        assert w.col_off % align == 0 and w.row_off % align == 0
        assert w.width <= max(unit_size, align) + align and w.height <= max(unit_size, align) + align
        cover[int(w.row_off) : int(w.row_off + w.height), int(w.col_off) : int(w.col_off + w.width)] += 1
    assert (cover == 1).all()  # every pixel in exactly one unit
    assert [u.id for u in units] == list(range(len(units)))


def _plan(width, height, tile, overlap, unit_size, strip=None, rasters=None):
    grid = TileGrid(width, height, tile, overlap)
    rasters = rasters or [raster(width, height)]
    units = plan_units(rasters, grid, tile, unit_size)
    return PredictPlan(
        inputs=[], weights=Path("w"), meta=None, mosaic=None, grid=grid, block=tile, strip_width=strip or 8192,
        unit_size=unit_size, context="prepass", per_file=False, rasters=rasters, units=units, vector=None,
        preview=None, format="cog", tags={}, warnings=[], cache_bytes=0, job_dir=Path("job"),
    )


def test_units_without_overlap_predict_each_tile_once():
    plan = _plan(1000, 700, 128, 0, 256)
    tiles = [t for u in plan.units for _, t in plan.tiles(u)]
    assert sorted((t.row_off, t.col_off) for t in tiles) == sorted((t.row_off, t.col_off) for *_, t in plan.grid.windows())
    assert all(plan.tile_count(u) == len(plan.tiles(u)) for u in plan.units)


def test_units_with_overlap_share_their_border_tiles():
    plan = _plan(1000, 700, 128, 32, 256)
    tiles = [(t.row_off, t.col_off) for u in plan.units for _, t in plan.tiles(u)]
    every = {(t.row_off, t.col_off) for *_, t in plan.grid.windows()}
    assert set(tiles) == every and len(tiles) > len(every)  # all covered; border tiles twice
    for u in plan.units:  # a unit lists every tile touching its pixels
        region = plan.region(u)
        mine = {(t.row_off, t.col_off) for _, t in plan.tiles(u)}
        for *_, t in plan.grid.windows():
            touches = (t.col_off < region.col_off + region.width and t.col_off + 128 > region.col_off
                       and t.row_off < region.row_off + region.height and t.row_off + 128 > region.row_off)
            assert ((t.row_off, t.col_off) in mine) == touches


def test_unit_weights_count_tiles_over_input_files():
    grid = TileGrid(1024, 512, 128)
    files = [Window(0, 0, 256, 256), Window(700, 300, 100, 100)]  # two files, gaps around them
    units = plan_units([raster(1024, 512)], grid, 128, 256, files)
    weights = {(int(u.window.col_off), int(u.window.row_off)): u.weight for u in units}
    assert weights[(0, 0)] == 4  # 2 x 2 tiles of the first file
    # the small file (rows 300..400, cols 700..800) meets tiles of rows 2-3, columns 5-6: two per unit
    assert weights[(512, 256)] == 2 and weights[(768, 256)] == 2
    assert sum(u.weight for u in units) == 4 + 4


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_contiguous_disjoint_covering_and_balanced(count):
    rng = np.random.default_rng(count)
    units = [Unit(i, 0, Window(0, 0, 1, 1), int(w)) for i, w in enumerate(rng.integers(0, 64, 50))]
    shares = [shard_units(units, i, count) for i in range(count)]
    ids = [u.id for s in shares for u in s]
    assert ids == list(range(50))  # disjoint, covering, in order: each share is a contiguous run
    total = sum(u.weight for u in units)
    for s in shares:
        assert abs(sum(u.weight for u in s) - total / count) <= 64  # within one unit of a fair share
    assert shard_units(units, 0, count) == shares[0]  # deterministic


def test_job_folder_beside_the_output_or_inside_the_folder(tmp_path):
    assert job_dir_for(tmp_path / "map.tif", False) == tmp_path / ".map.tif.caswit-job"
    a, b = tmp_path / "a_landcover.tif", tmp_path / "b_landcover.tif"
    job = job_dir_for(tmp_path, True, [a, b])
    assert job.parent == tmp_path and job.name.startswith(".caswit-job-")
    assert job_dir_for(tmp_path, True, [b, a]) == job  # a set of outputs: order does not matter
    assert job_dir_for(tmp_path, True, [a]) != job != job_dir_for(tmp_path, True, [b])  # other outputs, other job


def _brute_units(width, height, tile, block, unit_size, files):
    """Every lattice cell of split_span that meets a file, with the tiles touching it that meet a file."""
    align = math.lcm(block, tile)
    grid = TileGrid(width, height, tile)
    out = []
    for x0, x1 in split_span(width, unit_size, align):
        for y0, y1 in split_span(height, unit_size, align):
            meets = [f for f in files if f.col_off < x1 and f.col_off + f.width > x0
                     and f.row_off < y1 and f.row_off + f.height > y0]
            if not meets:
                continue
            weight = 0
            for _, _, t in grid.windows():
                in_unit = t.col_off < x1 and t.col_off + tile > x0 and t.row_off < y1 and t.row_off + tile > y0
                on_data = any(t.col_off < f.col_off + f.width and t.col_off + tile > f.col_off
                              and t.row_off < f.row_off + f.height and t.row_off + tile > f.row_off for f in files)
                weight += in_unit and on_data
            out.append(((x0, y0, x1 - x0, y1 - y0), weight))
    return sorted(out)


@pytest.mark.parametrize("width, height, unit_size, files", [
    (1024, 512, 256, [Window(0, 0, 256, 256), Window(700, 300, 100, 100)]),
    (3000, 2000, 512, [Window(0, 0, 10, 10), Window(2990, 1990, 10, 10)]),  # two specks at opposite corners
    (3000, 2000, 384, [Window(100, 100, 1200, 50), Window(900, 0, 40, 2000), Window(1000, 1000, 1, 1)]),
])
def test_units_are_only_where_data_is_with_brute_force_weights(width, height, unit_size, files):
    grid = TileGrid(width, height, 128)
    units = plan_units([raster(width, height)], grid, 128, unit_size, files)
    got = sorted(((int(u.window.col_off), int(u.window.row_off), int(u.window.width), int(u.window.height)), u.weight)
                 for u in units)
    assert got == _brute_units(width, height, 128, 128, unit_size, files)
    assert [u.id for u in units] == list(range(len(units)))


@pytest.mark.slow
def test_planning_a_declared_national_mosaic_is_bounded():
    """1e13 px of data (a 3.2 M px square) plans at most MAX_UNITS units, in bounded memory and time."""
    import time
    import tracemalloc

    side = 3_200_000
    grid = TileGrid(side, side, 512)
    rasters = [raster(side, side)]
    files = [Window(0, 0, side, side)]
    tracemalloc.start()
    t0 = time.perf_counter()
    size, width = unit_shape(rasters, grid, 512, 4096, 4096, files)
    units = plan_units(rasters, grid, 512, size, files, width)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(units) <= MAX_UNITS and size == width == 4096 * 4  # 16384 px units: 196**2 = 38,416 units
    assert sum(u.weight for u in units) == math.ceil(side / 512) ** 2  # every tile counted once
    assert peak < 64 << 20, peak
    assert seconds < 30
    with pytest.raises(ConfigError, match="more than 65,536 units"):
        plan_units(rasters, grid, 512, 4096, files, 4096)


@pytest.mark.parametrize("kwargs, message", [
    (dict(shard=(3, 3)), "--shard 3/3"),
    (dict(shard=(0, 0)), "--shard 0/0"),
    (dict(format="png"), "--format"),
    (dict(finalize_only=True, shard=(0, 2)), "--finalize"),
    (dict(finalize_only=True, defer_finalize=True), "--no-finalize"),
    (dict(stop_after=-1), "--stop-after"),
    (dict(unit_size=0), "--unit-size"),
    (dict(batch_size=0), "--batch-size"),
])
def test_option_values_are_checked_first(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_options(PredictConfig(inputs=["x.tif"], out="y.tif", **kwargs))


def test_a_scale_that_does_not_fit_is_noted_as_train_warns():
    # the mosaic's data type is all the check reads
    assert check_scaling(SimpleNamespace(dtype="int16"), InputSpec(scale=255.0)) == [scale_warning("int16", 255.0)]
    assert check_scaling(SimpleNamespace(dtype="uint16"), InputSpec(scale=65535.0)) == []


def test_a_missing_per_file_output_folder_is_named_with_the_command_that_makes_it(tmp_path):
    from caswit_geo.core.errors import OutputError
    from caswit_geo.engine.predict.plan import plan_outputs

    maps = tmp_path / "maps"
    config = PredictConfig(inputs=[str(tmp_path / "a.tif")], out=f"{maps}/")
    with pytest.raises(OutputError, match=rf"--out: folder {maps} does not exist; create it first \(mkdir -p {maps}\)"):
        plan_outputs(config, [tmp_path / "a.tif"])
    assert not maps.exists()  # planning writes nothing
