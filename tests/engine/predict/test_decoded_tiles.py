"""Tiles copied from the pixels the LR pre-pass decoded (geo/lowres.py DecodedChunks) against per-tile reads.

Reference: geo/context.py's direct construction, each tile's kT window read
from the mosaic on its own. Inputs: multi-file mosaics with a missing file
(a gap), partial edge tiles and nodata, as GeoTIFF and JPEG 2000, and read
at another pixel size (--resample).
"""

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from caswit_geo.core.spec import InputSpec
from caswit_geo.engine.predict.source import PredictTiles, model_inputs
from caswit_geo.engine.predict.units import lr_release_order, release_order, releasing
from caswit_geo.geo.context import read_tile_and_context
from caswit_geo.geo.grid import TileGrid
from caswit_geo.geo.lowres import DecodedChunks, LowResBuilder, chunk_groups, chunk_order, plan_lowres
from caswit_geo.geo.masks import mask_rule
from caswit_geo.geo.mosaic import open_mosaic
from tests.helpers import grid_transform, rgb_image, write_geotiff

TILE, K = 32, 2
# (row, col) of each file on the mosaic grid and its size: (1, 1) is missing, sizes not multiples of the tile
FILES = {(0, 0): (70, 90), (0, 90): (70, 50), (70, 0): (45, 90)}


def write_mosaic(folder, fmt: str) -> list:
    paths = []
    for i, ((row, col), (h, w)) in enumerate(FILES.items()):
        data = rgb_image(h, w, seed=i)
        data[:, : h // 3, : w // 4] = 0  # nodata in a corner of each file
        transform = grid_transform(col, row)
        if fmt == "gtiff":
            path = write_geotiff(folder / f"f{i}.tif", data, transform=transform, crs="EPSG:2154", nodata=0,
                                 tiled=True, blockxsize=16, blockysize=16)
        else:
            path = folder / f"f{i}.jp2"
            with rasterio.open(path, "w", driver="JP2OpenJPEG", width=w, height=h, count=3, dtype="uint8",
                               crs="EPSG:2154", transform=transform, QUALITY=25, REVERSIBLE="NO", RESOLUTIONS=2,
                               BLOCKXSIZE=32, BLOCKYSIZE=32) as dst:
                dst.write(data)
        paths.append(path)
    return paths


@pytest.mark.parametrize("fmt", ["gtiff", "jp2", "gtiff-resampled"])
@pytest.mark.parametrize("overlap, budget, threads, memory, publish",
                         [(0, 1 << 30, 1, 0, True), (8, 1 << 30, 3, 0, True), (0, 60_000, 1, 0, True),
                          (0, 1 << 30, 2, 30_000, True), (8, 1 << 30, 1, 30_000, False)])
def test_tiles_from_decoded_prepass_equal_per_tile_reads(tmp_path, monkeypatch, fmt, overlap, budget, threads,
                                                         memory, publish):
    paths = write_mosaic(tmp_path, fmt.removesuffix("-resampled"))
    # resampled: read at 0.26 m from 0.2 m files, whose edges then fall between pixels
    mosaic = open_mosaic(paths, (1, 2, 3), nodata="0", target_res=0.26 if fmt.endswith("resampled") else None)
    assert mosaic.resampled == fmt.endswith("resampled")
    spec = InputSpec(tile_size=TILE, context_factor=K)
    grid = TileGrid(mosaic.width, mosaic.height, TILE, overlap)
    windows = [w for _, _, w in grid.windows()]
    with mosaic.open() as src:
        lowres = plan_lowres(src, spec.bands, grid, K, tmp_path / "lr", chunk=(16, 32))  # tiles cross chunks
    releases = release_order(lowres, windows)
    decoded = DecodedChunks(lowres, budget, needed=[c for _, c in releases], memory=memory)
    # chunks in groups of a few tiles (as units), several threads taking the next group
    groups = chunk_groups(lowres, [windows[i : i + 5] for i in range(0, len(windows), 5)])
    assert sorted(c for g in groups for c in g) == sorted(chunk_order(lowres, windows, complete=False))
    tiles = PredictTiles(mosaic.reader, windows, spec, "prepass", lowres, decoded=decoded)
    # with ``memory``, read in this process as with no reader process: chunks and pixels handed over in memory;
    # not published: no chunk file, at most two chunks held ahead of the reader
    chunk_bytes = 3 * 16 * 32 * 2
    builder = LowResBuilder(mosaic.reader, spec.bands, lowres, groups, decoded, threads=threads,
                            memory=tiles.chunks if memory else None, publish=publish, pinned_bytes=2 * chunk_bytes)
    frees = [(decoded.release, releases)]
    if not publish:
        frees.append((lambda bi, bj: tiles.chunks.release(lowres, bi, bj), lr_release_order(lowres, windows)))
    pinned = []
    real_keep = tiles.chunks.keep

    def keep(*args, **kwargs):
        real_keep(*args, **kwargs)
        pinned.append(tiles.chunks._pinned_bytes)

    tiles.chunks.keep = keep
    copied = []
    real_read = DecodedChunks.read

    def spy(self, window, count, dtype):
        out = real_read(self, window, count, dtype)
        copied.append(out is not None)
        return out

    monkeypatch.setattr(DecodedChunks, "read", spy)
    builder.start()
    if budget < 1 << 30:  # the pre-pass done first: the budget holds the first chunks only
        builder.join()
    items = []

    # no memory: read as a reader process does, through a copy that sees the files alone
    reader = tiles if memory else pickle.loads(pickle.dumps(tiles))

    def batches():  # read as a DataLoader does, before the batch reaches the model loop
        for s in range(0, len(windows), 3):
            run = list(range(s, min(s + 3, len(windows))))
            items.extend(reader.__getitems__(run))
            yield SimpleNamespace(index=torch.tensor(run))  # releasing() only looks at the positions

    for _ in releasing(batches(), frees):
        pass
    builder.join()
    assert builder.error is None
    with mosaic.open() as src:
        rule = mask_rule(src, spec.bands)
        for i, x_hr, x_lr, valid in items:
            hr, lr, hr_valid = read_tile_and_context(src, windows[i], spec.bands, K, mask=rule)
            if not hr_valid.any():
                assert x_hr is None
                continue
            np.testing.assert_array_equal(valid.numpy(), hr_valid)
            m_hr, m_lr = model_inputs(tiles.collate([(i, x_hr, x_lr, valid)]), spec, torch.device("cpu"))
            np.testing.assert_array_equal(m_hr[0].numpy(), spec.normalize(hr))
            np.testing.assert_array_equal(m_lr[0].numpy(), spec.normalize(lr))
    assert len(items) == len(windows)
    if budget >= 1 << 30:
        assert all(copied)  # every tile came from the decoded pixels, none from a second decode
    else:
        assert any(copied) and not all(copied)  # over the budget: read from the source, same values
    assert decoded.held == 0 and not decoded._arrays  # every file released once its last tile was read
    files = list((tmp_path / "lr").glob("lr_*.tif"))
    if publish:
        assert len(files) == builder.written
    else:
        assert not files and builder.written == len(chunk_order(lowres, windows, complete=False))
        assert tiles.chunks._pinned_bytes == 0  # each chunk released after its last tile
        # held back: never more than the budget plus the chunks the reader was waiting for (one tile row's)
        assert max(pinned) <= 2 * chunk_bytes + 3 * 4 * chunk_bytes
    reader.close()
    tiles.close()
    builder.close()
    assert not decoded.folder.exists()


def test_decoded_chunks_cover_exactly_the_tiles_pixels(tmp_path):
    """source_chunks: the chunks whose source window meets a window, by brute force over the chunk grid."""
    grid = TileGrid(300, 200, 32)
    path = write_geotiff(tmp_path / "a.tif", np.zeros((1, 200, 300), np.uint8))
    with rasterio.open(path) as src:
        lowres = plan_lowres(src, [1], grid, K, tmp_path / "lr", chunk=(16, 32))
    rows, cols = lowres.chunk_grid
    for w in [Window(0, 0, 32, 32), Window(64, 96, 96, 32), Window(288, 192, 32, 32)]:
        expected = []
        for bi in range(rows):
            for bj in range(cols):
                cw = lowres.source_window(bi, bj)
                if (cw.col_off < w.col_off + w.width and w.col_off < cw.col_off + cw.width
                        and cw.row_off < w.row_off + w.height and w.row_off < cw.row_off + cw.height):
                    expected.append((bi, bj))
        assert sorted(lowres.source_chunks(w)) == expected
