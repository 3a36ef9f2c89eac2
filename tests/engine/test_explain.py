"""`caswit-geo explain`: attention maps of one pixel, drawn over the LR context."""

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

import caswit_geo
from caswit_geo.cli import main
from caswit_geo.engine.explain import ExplainConfig, explain
from caswit_geo.core.spec import InputSpec


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(0)
    img = (rng.random((3, 300, 260)) * 255).astype("uint8")
    with rasterio.open(d / "ortho.tif", "w", driver="GTiff", width=260, height=300, count=3, dtype="uint8",
                       crs="EPSG:2154", transform=from_origin(600000, 6800000, 0.5, 0.5)) as dst:
        dst.write(img)
    spec = InputSpec(tile_size=128, gsd=0.5)
    caswit_geo.save_checkpoint(caswit_geo.build_model("caswit-nano", 4), d / "all.safetensors", input_spec=spec)
    caswit_geo.save_checkpoint(caswit_geo.build_model("caswit-nano", 4, fusion_stages="4"), d / "s4.safetensors",
                               input_spec=spec)
    caswit_geo.save_checkpoint(caswit_geo.build_model("swin-nano-upernet", 4), d / "single.safetensors",
                               input_spec=spec)
    return d


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
