"""`caswit-geo explain`: attention maps of one pixel, drawn over the LR context."""

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

import caswit_geo
from caswit_geo.cli import main
from caswit_geo.core.spec import InputSpec
from caswit_geo.engine.explain import ExplainConfig, explain
from caswit_geo.geo.context import read_tile_and_context
from tests.helpers import write_geotiff


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(0)
    img = (rng.random((3, 300, 260)) * 255).astype("uint8")
    write_geotiff(d / "ortho.tif", img, crs="EPSG:2154", transform=from_origin(600000, 6800000, 0.5, 0.5))
    spec = InputSpec(tile_size=128, gsd=0.5)
    caswit_geo.save_checkpoint(caswit_geo.build_model("caswit-nano", 4), d / "all.safetensors", input_spec=spec)
    caswit_geo.save_checkpoint(caswit_geo.build_model("caswit-nano", 4, fusion_stages="4"), d / "s4.safetensors",
                               input_spec=spec)
    caswit_geo.save_checkpoint(caswit_geo.build_model("swin-nano-upernet", 4), d / "single.safetensors",
                               input_spec=spec)
    return d


def attention_of_pixel(weights, image, tile, r_in, c_in) -> dict[int, np.ndarray]:
    """Reference for explain: each fusion block's softmax(q k^T / sqrt(d)) for the HR token holding pixel
    (r_in, c_in) of ``tile``, mean over heads, as an (h, w) map over the LR tokens.

    The query token is picked by (row, col) from the (1, H, W, C) HR features, the keys keep their
    (h, w) layout: no flat index that a swapped row and column could still satisfy.
    """
    model, meta = caswit_geo.load_checkpoint(weights)
    spec, T = meta.input_spec, meta.input_spec.tile_size
    with rasterio.open(image) as src:
        hr_raw, lr_raw, _ = read_tile_and_context(src, tile, spec.bands, spec.context_factor)
    hr, lr = torch.from_numpy(spec.normalize(hr_raw))[None], torch.from_numpy(spec.normalize(lr_raw))[None]
    features = {}
    hooks = [block.register_forward_hook(lambda m, a, o, s=int(s): features.__setitem__(s, a))
             for s, block in model.backbone.fusion.items()]
    with torch.no_grad():
        model(hr, lr)
        for h in hooks:
            h.remove()
        maps = {}
        for s, (x_hr, x_lr) in features.items():
            block = model.backbone.fusion[str(s)]
            _, H, W, C = x_hr.shape
            heads, d = block.num_heads, C // block.num_heads
            token = x_hr[0, r_in * H // T, c_in * W // T]  # (C,)
            q = block.q(block.norm_q(token)).reshape(heads, d)
            k = block.kv(block.norm_kv(x_lr[0]))[..., :C].reshape(x_lr.shape[1], x_lr.shape[2], heads, d)
            scores = torch.einsum("nd,hwnd->nhw", q, k) * d**-0.5
            maps[s] = torch.softmax(scores.flatten(1), dim=1).reshape(scores.shape).mean(0).numpy()
    return maps


def test_explain_draws_one_panel_per_fused_stage(scene):
    out = scene / "att.png"
    res = explain(ExplainConfig(image=scene / "ortho.tif", out=out, weights=scene / "all.safetensors",
                                row=200, col=30, overwrite=True))
    assert res.pixel == (200, 30) and (res.tile.row_off, res.tile.col_off) == (128, 0)
    assert sorted(res.attention) == [1, 2, 3, 4]
    for s, att in res.attention.items():
        side = 128 // 4 // 2 ** (s - 1)  # LR token grid of stage s
        assert att.shape == (side, side)
        assert att.sum() == pytest.approx(1.0, abs=1e-5) and (att >= 0).all()
    # the maps are those of the pixel's token: (72, 30) in the tile, a different token at every
    # stage from (30, 72), whose maps differ, so a row/column swap anywhere fails here
    expected = attention_of_pixel(scene / "all.safetensors", scene / "ortho.tif", res.tile, 72, 30)
    swapped = attention_of_pixel(scene / "all.safetensors", scene / "ortho.tif", res.tile, 30, 72)
    for s, att in res.attention.items():
        np.testing.assert_allclose(att, expected[s], rtol=0, atol=1e-6, err_msg=f"stage {s}")
        assert np.abs(expected[s] - swapped[s]).max() > 1e-4, f"stage {s}: the swapped pixel's map is the same"
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape == (360, 320 * 6, 3)  # 2 image panels + 4 stages at 100 dpi
    assert png.std() > 20  # not blank
    assert res.precision.startswith("fp32 (auto: ") and Image.open(out).info["Precision"] == res.precision
    res4 = explain(ExplainConfig(image=scene / "ortho.tif", out=scene / "s4.png", weights=scene / "s4.safetensors"))
    assert list(res4.attention) == [4] and res4.pixel == (150, 130)  # default: raster centre
    assert np.asarray(Image.open(scene / "s4.png")).shape[1] == 320 * 3


def test_explain_point_in_crs_coordinates(scene):
    # x, y of the centre of pixel (row 10, col 20)
    res = explain(ExplainConfig(image=scene / "ortho.tif", out=scene / "xy.png", weights=scene / "all.safetensors",
                                x=600000 + 20.25 * 0.5, y=6800000 - 10.25 * 0.5, overwrite=True))
    assert res.pixel == (10, 20)


def test_explain_errors(scene, capsys):
    out = scene / "exists.png"
    out.write_bytes(b"keep")
    for argv, needle in [
        (["explain", str(scene / "ortho.tif"), "--out", str(out), "--weights", str(scene / "all.safetensors")],
         "exists"),
        (["explain", str(scene / "ortho.tif"), "--out", str(scene / "n.png"), "--weights",
          str(scene / "single.safetensors")], "single-stream"),
        (["explain", str(scene / "ortho.tif"), "--out", str(scene / "n.png"), "--weights",
          str(scene / "all.safetensors"), "--row", "999", "--col", "1"], "outside"),
        (["explain", str(scene / "missing.tif"), "--out", str(scene / "n.png"), "--weights",
          str(scene / "all.safetensors")], "missing.tif"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 1 and needle in err and err.strip().count("\n") == 0
    assert out.read_bytes() == b"keep" and not (scene / "n.png").exists()
