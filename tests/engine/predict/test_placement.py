"""predict maps the right pixels: an independent reference, built by hand (review item 11).

Every other predict test compares one mode (resume, shards, strips,
per-file, mosaic) with an uninterrupted predict; an error they share (a
one-pixel shift, a context window off by a block) would pass them all.
Here the model's inputs are rebuilt from the definition alone
(docs/ARCHITECTURE.md, "HR tile and LR context"), without caswit-geo's
geometry (no geo/context.py, geo/lowres.py, geo/grid.py nor geo/mosaic.py):

- the two input files are pasted onto a zero canvas of the mosaic by their
  pixel offsets (read from their geotransforms with rasterio);
- the HR tile of grid cell (r, c) is the T x T window at (r T, c T), the part
  outside the mosaic zero; its LR context the 2T x 2T window centred on it,
  zero outside, averaged over 2 x 2 blocks;
- both are normalised with the checkpoint's statistics, the model runs, and
  ``argmax`` is compared with predict's map pixel for pixel (255 where no
  input covers the pixel).

The mosaic is 330 x 190 px from two files, one offset by 40 rows, so its
grid of 128 px tiles has tiles across both files, tiles past the right and
bottom edges, and corners covered by neither file.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from tests.helpers import GSD, NANO_TILE, PREDICT_CLASSES, X0, Y0, run_predict, write_on_grid

T, K = NANO_TILE, 2
FILES = {"a.tif": (0, 0, 150, 200), "b.tif": (40, 200, 150, 130)}  # name: (row, col, height, width) on the grid
MOSAIC_H, MOSAIC_W = 190, 330

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Two textured RGB files and a caswit-nano whose fusion gates are open (the context matters)."""
    import caswit_geo
    from caswit_geo.core.spec import InputSpec

    folder = tmp_path_factory.mktemp("placement")
    rng = np.random.default_rng(7)
    for name, (row, col, h, w) in FILES.items():
        # smooth blobs plus noise: the untrained model's classes then vary across the tile
        coarse = rng.integers(0, 256, (3, h // 10 + 2, w // 10 + 2))
        image = np.kron(coarse, np.ones((10, 10)))[:, :h, :w] + rng.integers(-30, 30, (3, h, w))
        write_on_grid(folder / name, np.clip(image, 1, 255).astype(np.uint8), row=row, col=col)
    torch.manual_seed(3)
    model = caswit_geo.build_model("caswit-nano", num_classes=len(PREDICT_CLASSES))
    with torch.no_grad():
        for module in model.modules():  # a gate at 0 would hide the LR context from the output
            if isinstance(getattr(module, "gate", None), torch.nn.Parameter):
                module.gate.fill_(1.5)
    weights = caswit_geo.save_checkpoint(model, folder / "nano.safetensors", classes=PREDICT_CLASSES,
                                         input_spec=InputSpec(tile_size=T, gsd=GSD))
    return folder, weights


def mosaic_by_hand(folder) -> tuple[np.ndarray, np.ndarray]:
    """(3, H, W) uint8 canvas of both files at their pixel offsets, and where a file covers it."""
    canvas = np.zeros((3, MOSAIC_H, MOSAIC_W), np.uint8)
    covered = np.zeros((MOSAIC_H, MOSAIC_W), bool)
    for name in FILES:
        with rasterio.open(folder / name) as src:
            row = round((Y0 - src.transform.f) / GSD)
            col = round((src.transform.c - X0) / GSD)
            canvas[:, row : row + src.height, col : col + src.width] = src.read()
            covered[row : row + src.height, col : col + src.width] = True
    return canvas, covered


def cut(canvas: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """The size x size window of ``canvas`` at (row, col), zero where it lies outside."""
    out = np.zeros((canvas.shape[0], size, size), canvas.dtype)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + size, canvas.shape[1]), min(col + size, canvas.shape[2])
    if r1 > r0 and c1 > c0:
        out[:, r0 - row : r1 - row, c0 - col : c1 - col] = canvas[:, r0:r1, c0:c1]
    return out


def block_mean(x: np.ndarray, k: int) -> np.ndarray:
    c, h, w = x.shape
    return x.reshape(c, h // k, k, w // k, k).astype(np.float64).mean(axis=(2, 4)).astype(np.float32)


def model_inputs(canvas: np.ndarray, row: int, col: int, spec, hr_shift: int = 0, lr_shift: int = 0):
    """Normalised (HR, LR) of the tile at (row, col); the shifts move a window (to check the test's power)."""
    hr = cut(canvas, row, col + hr_shift, T).astype(np.float32)
    lr = block_mean(cut(canvas, row - (K - 1) * T // 2, col - (K - 1) * T // 2 + lr_shift, K * T), K)
    mean = np.array(spec.mean, np.float32)[:, None, None]
    std = np.array(spec.std, np.float32)[:, None, None]
    return [torch.from_numpy((x / np.float32(spec.scale) - mean) / std)[None] for x in (hr, lr)]


def reference_map(folder, weights) -> tuple[np.ndarray, dict]:
    """The class map by hand: 255 where no file covers a pixel, argmax of the model elsewhere."""
    from caswit_geo.model.checkpoint import load_checkpoint

    model, meta = load_checkpoint(weights)
    canvas, covered = mosaic_by_hand(folder)
    out = np.full((MOSAIC_H, MOSAIC_W), 255, np.uint8)
    tiles = {}
    with torch.no_grad():
        for row in range(0, MOSAIC_H, T):
            for col in range(0, MOSAIC_W, T):
                if not covered[row : row + T, col : col + T].any():
                    continue  # an all-nodata tile is skipped
                labels = model(*model_inputs(canvas, row, col, meta.input_spec))[0].argmax(0).numpy()
                h, w = min(T, MOSAIC_H - row), min(T, MOSAIC_W - col)
                out[row : row + h, col : col + w] = labels[:h, :w]
                tiles[(row, col)] = labels
    out[~covered] = 255
    return out, dict(model=model, spec=meta.input_spec, canvas=canvas, tiles=tiles)


@pytest.mark.parametrize("lr_prepass", [True, False], ids=["prepass", "direct"])
def test_predict_equals_the_hand_built_reference(scene, tmp_path, lr_prepass):
    folder, weights = scene
    expected, _ = reference_map(folder, weights)
    res = run_predict(weights, [folder / "a.tif", folder / "b.tif"], tmp_path / "map.tif", lr_prepass=lr_prepass,
                      device="cpu", precision="fp32")
    assert res.context == ("prepass" if lr_prepass else "direct")
    with rasterio.open(tmp_path / "map.tif") as src:
        assert (src.height, src.width) == (MOSAIC_H, MOSAIC_W)
        assert src.transform.almost_equals(rasterio.Affine(GSD, 0, X0, 0, -GSD, Y0))
        got = src.read(1)
    assert (got == 255).sum() == (expected == 255).sum() > 0  # both corners outside the files
    assert len(np.unique(expected[expected != 255])) >= 2  # the map is not one class
    mismatch = np.argwhere(got != expected)
    assert mismatch.size == 0, f"{len(mismatch)} pixels differ, first at (row, col) {tuple(mismatch[0])}"


def test_the_reference_sees_a_one_pixel_shift_and_a_context_off_by_a_block(scene):
    """The comparison has the power to catch what it is for: the tile across both files changes
    when its HR window moves by one pixel, or its context by one LR pixel (K px)."""
    folder, weights = scene
    _, ref = reference_map(folder, weights)
    row, col = 0, T  # the tile across both files
    base = ref["tiles"][(row, col)]
    with torch.no_grad():
        for shift in (dict(hr_shift=1), dict(lr_shift=K)):
            moved = ref["model"](*model_inputs(ref["canvas"], row, col, ref["spec"], **shift))[0].argmax(0).numpy()
            assert (moved != base).sum() > 0, shift
