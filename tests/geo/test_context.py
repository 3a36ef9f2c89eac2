"""HR tile + LR context construction (docs/ARCHITECTURE.md, "HR tile and LR context") against independent references.

References: a brute-force construction on an in-memory array (zero-padded
canvas, k x k mean), and GDAL's own average resampling of the same window
(rasterio ``out_shape`` + ``Resampling.average``) on a zero-padded float
copy of the raster. The LR pre-pass must equal the per-tile construction
bit for bit.
"""

import threading
import time

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

import caswit_geo.geo.lowres as lowres_module
from caswit_geo.geo.context import area_downsample, read_canvas, read_label_and_context, read_tile_and_context
from caswit_geo.geo.grid import TileGrid, context_window
from caswit_geo.geo.lowres import (
    ChunkReader,
    LowResBuilder,
    block_sums,
    build_lowres,
    chunk_groups,
    chunk_order,
    decoding_threads,
    plan_lowres,
    prepass_supported,
    sum_dtype,
)
from tests.helpers import write_geotiff

RES = 0.2
ORIGIN = (600_000.0, 6_800_000.0)


def write_raster(path, data, nodata=None):
    """``data`` on this module's grid: Lambert-93, RES m pixels from ORIGIN."""
    return write_geotiff(path, data, crs="EPSG:2154", transform=Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1]),
                         nodata=nodata)


def brute_force(data, valid, window, factor):
    """HR tile, LR context and HR validity straight from the definition, on arrays."""
    c, h, w = data.shape
    ctx = context_window(window, factor)
    pad = int(max(ctx.width, ctx.height)) + 1
    canvas = np.zeros((c, h + 2 * pad, w + 2 * pad), np.float64)
    canvas[:, pad : pad + h, pad : pad + w] = np.where(valid, data, 0)
    vcanvas = np.zeros((h + 2 * pad, w + 2 * pad), bool)
    vcanvas[pad : pad + h, pad : pad + w] = valid
    r0, c0 = int(ctx.row_off) + pad, int(ctx.col_off) + pad
    big = canvas[:, r0 : r0 + int(ctx.height), c0 : c0 + int(ctx.width)]
    t = int(window.width)
    lr = np.zeros((c, t, t))
    for i in range(t):
        for j in range(t):
            lr[:, i, j] = big[:, i * factor : (i + 1) * factor, j * factor : (j + 1) * factor].mean(axis=(1, 2))
    tr, tc = int(window.row_off) + pad, int(window.col_off) + pad
    hr = canvas[:, tr : tr + t, tc : tc + t]
    return hr, lr.astype(np.float32), vcanvas[tr : tr + t, tc : tc + t]


SIZES = [(1, 1), (1, 70), (70, 1), (20, 33), (70, 45), (97, 130)]  # (height, width): smaller than a tile,
# not a multiple of it, 1-pixel-wide edges


@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("factor", [2, 3])
def test_tile_and_context_match_brute_force(tmp_path, height, width, factor):
    tile = 32
    rng = np.random.default_rng(height * 1000 + width)
    data = rng.integers(1, 256, (3, height, width)).astype(np.uint8)
    data[:, : height // 3, : width // 4] = 0  # a nodata corner
    path = write_raster(tmp_path / "a.tif", data, nodata=0)
    valid = (data != 0).any(axis=0)
    grid = TileGrid(width, height, tile)
    with rasterio.open(path) as src:
        for _, _, window in grid.windows():
            hr, lr, hr_valid = read_tile_and_context(src, window, [1, 2, 3], factor)
            ref_hr, ref_lr, ref_valid = brute_force(data, valid, window, factor)
            assert hr.shape == lr.shape == (3, tile, tile)
            np.testing.assert_array_equal(hr, ref_hr)
            np.testing.assert_array_equal(hr_valid, ref_valid)
            np.testing.assert_allclose(lr, ref_lr, rtol=0, atol=1e-4)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_lr_context_equals_gdal_average(tmp_path, factor):
    """Our canvas + k x k mean against GDAL's average resampling of the same window."""
    height, width, tile = 75, 61, 32
    rng = np.random.default_rng(factor)
    data = rng.integers(0, 256, (3, height, width)).astype(np.uint8)
    path = write_raster(tmp_path / "a.tif", data)
    # independent path: a float copy padded with black, read by GDAL with out_shape + average
    pad = factor * tile
    padded = np.zeros((3, height + 2 * pad, width + 2 * pad), np.float32)
    padded[:, pad : pad + height, pad : pad + width] = data
    write_geotiff(tmp_path / "padded.tif", padded, crs="EPSG:2154",
                  transform=Affine(RES, 0, ORIGIN[0] - pad * RES, 0, -RES, ORIGIN[1] + pad * RES))
    with rasterio.open(path) as src, rasterio.open(tmp_path / "padded.tif") as ref:
        for _, _, window in TileGrid(width, height, tile).windows():
            _, lr, _ = read_tile_and_context(src, window, [1, 2, 3], factor)
            ctx = context_window(window, factor)
            gdal = ref.read(
                [1, 2, 3],
                window=Window(ctx.col_off + pad, ctx.row_off + pad, ctx.width, ctx.height),
                out_shape=(3, tile, tile),
                resampling=Resampling.average,
            )
            np.testing.assert_allclose(lr, gdal, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "height, width, tile, overlap, factor, dtype, nodata",
    [
        (1, 1, 32, 0, 2, "uint8", None),
        (70, 1, 32, 0, 2, "uint8", 0),
        (97, 130, 32, 0, 2, "uint8", 0),
        (97, 130, 32, 8, 2, "uint16", None),
        (80, 70, 48, 0, 3, "uint16", 0),
        (64, 100, 32, 0, 4, "uint8", None),
    ],
)
def test_prepass_equals_per_tile_context(tmp_path, height, width, tile, overlap, factor, dtype, nodata):
    rng = np.random.default_rng(7)
    vmax = 256 if dtype == "uint8" else 65536
    data = rng.integers(0, vmax, (3, height, width)).astype(dtype)
    data[:, : height // 2, : width // 3] = 0
    path = write_raster(tmp_path / "a.tif", data, nodata=nodata)
    grid = TileGrid(width, height, tile, overlap)
    assert prepass_supported(tile, grid.stride, factor)
    reader = ChunkReader()
    with rasterio.open(path) as src:
        # small chunks: tiles read across chunk borders
        lowres = build_lowres(src, [1, 2, 3], grid, factor, tmp_path / "lr", chunk=(16, 32))
        assert lowres.dtype == sum_dtype(dtype, factor).name
        for _, _, window in grid.windows():
            _, expected, _ = read_tile_and_context(src, window, [1, 2, 3], factor)
            got = lowres.read(reader, window)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected)
    reader.close()


def test_prepass_grid_origin_is_context_origin_of_first_tile(tmp_path):
    data = np.ones((1, 40, 40), np.uint8)
    path = write_raster(tmp_path / "a.tif", data)
    with rasterio.open(path) as src:
        lowres = build_lowres(src, [1], TileGrid(40, 40, 32), 2, tmp_path / "lr")
    assert lowres.chunk_grid == (1, 1)
    with rasterio.open(lowres.chunk_path(0, 0)) as lsrc:
        # origin shifted by -(k-1)T/2 = -16 px, pixels k times larger
        assert lsrc.transform.c == pytest.approx(ORIGIN[0] - 16 * RES)
        assert lsrc.transform.f == pytest.approx(ORIGIN[1] + 16 * RES)
        assert lsrc.transform.a == pytest.approx(2 * RES)
        sums = lsrc.read(1)
    # LR pixel i covers source pixels [-16 + 2i, -16 + 2i + 2): raster pixels 0..39 are LR pixels 8..27
    assert sums[8, 8] == 4 and sums[27, 27] == 4  # inside: 2x2 sums of ones
    assert sums[7, 8] == 0 and sums[8, 7] == 0 and sums[28, 27] == 0 and sums[0, 0] == 0  # outside: black


def test_prepass_not_supported_when_stride_not_multiple_of_factor():
    assert not prepass_supported(48, 48, 5)
    assert not prepass_supported(32, 31, 2)
    assert prepass_supported(48, 48, 3)
    with pytest.raises(ValueError, match="stride 31 / tile 32 cannot use the x2 pre-pass"):
        plan_lowres(_FakeSrc(), [1], TileGrid(100, 100, 32, 1), 2, "unused")


class _FakeSrc:
    dtypes = ("uint8",)
    transform = Affine.identity()
    crs = None


def test_background_builder_feeds_waiting_readers(tmp_path):
    """Chunks come from a thread in plan order; a reader blocks until its chunks exist."""
    data = np.random.default_rng(3).integers(0, 256, (3, 90, 200)).astype(np.uint8)
    path = write_raster(tmp_path / "a.tif", data)
    grid = TileGrid(200, 90, 32)
    with rasterio.open(path) as src:
        lowres = plan_lowres(src, [1, 2, 3], grid, 2, tmp_path / "lr", chunk=(16, 32))
        windows = [w for _, _, w in grid.windows()]
        order = chunk_order(lowres, windows)
        assert set(order) == {(i, j) for i in range(lowres.chunk_grid[0]) for j in range(lowres.chunk_grid[1])}
        assert order[: len(lowres.chunks_for(windows[0]))] == lowres.chunks_for(windows[0])
        builder = LowResBuilder(str(path), [1, 2, 3], lowres, order)
        reader = ChunkReader()
        builder.start()
        for w in windows:
            _, expected, _ = read_tile_and_context(src, w, [1, 2, 3], 2)
            np.testing.assert_array_equal(lowres.read(reader, w), expected)
        builder.join()
        reader.close()
    assert builder.error is None
    assert not list((tmp_path / "lr").glob(".*"))  # chunks appear only complete (renamed)


@pytest.mark.parametrize("cores, groups, blocks, expected", [
    (1, 4, 3, (1, 1)),  # one core: one thread, decoding on its own
    (2, 4, 3, (1, 2)),  # reads meet 3 blocks: GDAL decodes them on both cores, one thread takes every group
    (2, 4, 1, (2, 1)),  # one block a read: two threads, a group each
    (2, 1, 1, (1, 2)),  # one group: its thread decodes on both cores
    (16, 40, 3, (6, 3)),
    (16, 2, 3, (2, 8)),  # no more threads than groups
])
def test_decoding_threads_are_as_few_as_keep_the_cores_busy(cores, groups, blocks, expected):
    assert decoding_threads(cores, groups, blocks) == expected


@pytest.mark.parametrize("block, width, expected", [
    (1024, 10_000, 3),  # chunk (0, 1) reads source columns 1792-3839: blocks 1-3
    (512, 10_000, 5),  # 3-7
    (4096, 10_000, 2),  # chunk (0, 2), columns 3840-5887: blocks 0-1
    (1000, 1000, 2),  # one chunk, columns -256-1279: blocks 0 (from column 0) and 1
])
def test_blocks_per_read_counts_the_source_blocks_a_chunk_meets_across(block, width, expected):
    lowres = plan_lowres(_FakeSrc(), [1], TileGrid(width, 512, 512), 2, "unused", chunk=(256, 1024))
    assert lowres.blocks_per_read(block) == expected


def test_builder_decodes_in_one_thread_when_its_reads_meet_enough_blocks(tmp_path, monkeypatch):
    """Groups of chunks in one thread, with GDAL's decoding threads, rather than threads of their own that
    would decode the blocks on their edges twice; the same chunks either way."""
    data = np.random.default_rng(5).integers(0, 256, (3, 96, 160)).astype(np.uint8)
    path = write_raster(tmp_path / "a.tif", data)
    grid = TileGrid(160, 96, 32)
    windows = [w for _, _, w in grid.windows()]
    seen = []
    real = lowres_module.decode_chunk

    def spy(*args, **kwargs):
        seen.append((threading.current_thread().name, rasterio.env.get_gdal_config("GDAL_NUM_THREADS")))
        time.sleep(0.02)  # time for a second thread to take a group
        return real(*args, **kwargs)

    monkeypatch.setattr(lowres_module, "decode_chunk", spy)
    chunks = {}
    for blocks in (1, 4):
        seen.clear()
        with rasterio.open(path) as src:
            lowres = plan_lowres(src, [1, 2, 3], grid, 2, tmp_path / f"lr{blocks}", chunk=(16, 32))
        groups = chunk_groups(lowres, [windows[i : i + 5] for i in range(0, len(windows), 5)])
        builder = LowResBuilder(str(path), [1, 2, 3], lowres, groups, threads=2, blocks_per_read=blocks)
        builder.start()
        builder.join()
        assert builder.error is None and len(groups) >= 2
        names = {name for name, _ in seen}
        assert {str(n) for _, n in seen} == {"1" if blocks == 1 else "2"}
        assert len(names) == (2 if blocks == 1 else 1)
        chunks[blocks] = {p.name: rasterio.open(p).read() for p in (tmp_path / f"lr{blocks}").glob("lr_*.tif")}
    assert chunks[1].keys() == chunks[4].keys()
    for name, sums in chunks[1].items():
        np.testing.assert_array_equal(sums, chunks[4][name])


def _two_thread_prepass(tmp_path, seed: int):
    """(source, lowres, groups) of a pre-pass its builder runs in two decoding threads (blocks_per_read=1)."""
    data = np.random.default_rng(seed).integers(0, 256, (3, 96, 160)).astype(np.uint8)
    path = write_raster(tmp_path / "a.tif", data)
    grid = TileGrid(160, 96, 32)
    windows = [w for _, _, w in grid.windows()]
    with rasterio.open(path) as src:
        lowres = plan_lowres(src, [1, 2, 3], grid, 2, tmp_path / "lr", chunk=(8, 16))
    return path, lowres, chunk_groups(lowres, [windows[i : i + 3] for i in range(0, len(windows), 3)])


def test_a_failed_chunk_write_stops_every_thread_of_the_builder(tmp_path, monkeypatch):
    """Two decoding and two finishing threads: the first failure stops them all, none waits forever."""
    path, lowres, groups = _two_thread_prepass(tmp_path, 6)
    calls = []
    real = lowres_module.publish_chunk

    def publish(*args):
        calls.append(args[1:3])
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(lowres_module, "publish_chunk", publish)
    builder = LowResBuilder(str(path), [1, 2, 3], lowres, groups, threads=2, blocks_per_read=1)
    assert builder.threads == 2
    builder.start()
    builder.join(timeout=30)
    assert not builder.is_alive()
    assert isinstance(builder.error, OSError) and builder.failed.exists()
    assert len(calls) < sum(len(g) for g in groups)  # stopped early
    assert not any(t.name.startswith("caswit-lowres") for t in threading.enumerate())


def test_every_thread_of_the_builder_is_one_forks_wait_for(tmp_path, monkeypatch):
    """Its threads read and write with GDAL: a fork right after join() must wait until they are gone
    (geo/forks.py), so each one is tracked."""
    path, lowres, groups = _two_thread_prepass(tmp_path, 7)
    tracked = []
    monkeypatch.setattr(lowres_module, "track", lambda t: tracked.append(t.name))
    builder = LowResBuilder(str(path), [1, 2, 3], lowres, groups, threads=2, blocks_per_read=1)
    builder.start()
    builder.join(timeout=30)
    assert builder.error is None
    assert sorted(tracked) == ["caswit-lowres", "caswit-lowres-1", "caswit-lowres-finish-0", "caswit-lowres-finish-1"]


def test_unpublished_builder_holds_back_until_released_or_awaited(tmp_path):
    """publish=False: no chunk file; the builder stops past its budget of pinned chunks and goes on when
    one is released or when the reader waits for the next; cancel() stops it without an error."""
    data = np.random.default_rng(4).integers(0, 256, (3, 128, 128)).astype(np.uint8)
    path = write_raster(tmp_path / "a.tif", data)
    grid = TileGrid(128, 128, 32)
    with rasterio.open(path) as src:
        lowres = plan_lowres(src, [1, 2, 3], grid, 2, tmp_path / "lr", chunk=(16, 16))
    order = chunk_order(lowres, [w for _, _, w in grid.windows()])
    assert len(order) == 25
    reader = ChunkReader()
    one = 3 * 16 * 16 * 2  # bytes of a chunk's sums
    builder = LowResBuilder(str(path), [1, 2, 3], lowres, order, memory=reader, publish=False, pinned_bytes=2 * one)
    builder.start()

    def settled(n: int) -> None:  # the builder has computed n chunks and holds back
        for _ in range(200):
            if builder.written == n:
                break
            time.sleep(0.01)
        time.sleep(0.2)
        assert builder.written == n and builder.is_alive()

    settled(3)  # over the budget of two after the third
    reader.release(lowres, *order[0])
    settled(4)  # one released, one more computed
    # a reader waiting for the next chunk lets the builder compute it
    with rasterio.open(path) as src:
        _, expected, _ = read_tile_and_context(src, Window(32, 0, 32, 32), [1, 2, 3], 2)
    needs = lowres.chunks_for(Window(32, 0, 32, 32))
    assert max(order.index(c) for c in needs) >= 4
    np.testing.assert_array_equal(lowres.read(reader, Window(32, 0, 32, 32)), expected)
    assert builder.written == max(order.index(c) for c in needs) + 1
    assert not list((tmp_path / "lr").glob("lr_*.tif"))
    builder.cancel()
    assert not builder.is_alive() and builder.error is None and not builder.failed.exists()
    builder.close()
    reader.close()


def test_failed_builder_stops_waiting_readers(tmp_path):
    data = np.zeros((3, 40, 40), np.uint8)
    path = write_raster(tmp_path / "a.tif", data)
    with rasterio.open(path) as src:
        lowres = plan_lowres(src, [1, 2, 3], TileGrid(40, 40, 32), 2, tmp_path / "lr")
    builder = LowResBuilder(str(tmp_path / "missing.tif"), [1, 2, 3], lowres, [(0, 0)])
    builder.start()
    builder.join()
    assert builder.error is not None
    with pytest.raises(RuntimeError, match="pre-pass failed"):
        lowres.read(ChunkReader(failed=builder.failed), Window(0, 0, 32, 32))


def test_read_canvas_pastes_inside_part_on_constant_canvas(tmp_path):
    data = np.arange(1, 13, dtype=np.uint8).reshape(1, 3, 4)
    path = write_raster(tmp_path / "a.tif", data, nodata=5)
    with rasterio.open(path) as src:
        out, valid = read_canvas(src, Window(-1, -2, 6, 6), [1], fill=9, with_mask=True)
    expected = np.full((6, 6), 9, np.uint8)
    expected[2:5, 1:5] = data[0]
    np.testing.assert_array_equal(out[0], expected)
    assert valid.sum() == 11 and not valid[2 + 1, 1 + 0]  # value 5 (row 1, col 0) is nodata


def test_area_downsample_is_block_mean():
    x = np.arange(2 * 6 * 4, dtype=np.uint8).reshape(2, 6, 4)
    got = area_downsample(x, 2)
    ref = np.array([[[x[c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean() for j in range(2)] for i in range(3)]
                    for c in range(2)])
    np.testing.assert_allclose(got, ref)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_block_sums_equal_brute_force_at_the_largest_values(k, dtype):
    rng = np.random.default_rng(k)
    vmax = int(np.iinfo(dtype).max)
    x = rng.integers(vmax - 3, vmax + 1, (2, 3 * k, 5 * k)).astype(dtype)  # near the top: overflow would show
    out_dtype = sum_dtype(dtype, k)
    got = block_sums(x, k, out_dtype)
    ref = np.array([[[int(x[c, k * i : k * i + k, k * j : k * j + k].astype(np.int64).sum()) for j in range(5)]
                     for i in range(3)] for c in range(2)])
    assert got.dtype == out_dtype
    np.testing.assert_array_equal(got, ref)


def test_label_context_is_nearest_and_ignore_outside(tmp_path):
    labels = np.random.default_rng(0).integers(0, 5, (1, 50, 45)).astype(np.uint8)
    path = write_raster(tmp_path / "y.tif", labels)
    with rasterio.open(path) as src:
        window = Window(32, 32, 32, 32)
        hr, lr = read_label_and_context(src, window, 2)
    np.testing.assert_array_equal(hr[:18, :13], labels[0, 32:50, 32:45])
    assert (hr[18:] == 255).all() and (hr[:, 13:] == 255).all()
    # LR pixel (i, j) is the label under the centre of the 2x2 block: source (16 + 2i + 1, 16 + 2j + 1)
    for i, j in [(0, 0), (5, 7), (16, 13)]:
        r, c = 16 + 2 * i + 1, 16 + 2 * j + 1
        expected = labels[0, r, c] if r < 50 and c < 45 else 255
        assert lr[i, j] == expected
