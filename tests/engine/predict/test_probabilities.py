"""predict --probabilities: one band per class, uint8 percent, the map's grid; its argmax is the map."""

from types import SimpleNamespace

import numpy as np
import pytest
import rasterio

from caswit_geo.core.errors import ConfigError, OutputError
from caswit_geo.engine.predict.plan import choose_strip_width
from tests.helpers import PREDICT_CLASSES, interrupt_forward_pass, rgb_image, run_predict, write_on_grid

pytestmark = pytest.mark.usefixtures("single_thread")


def read_all(path):
    """(bands, what the file says of itself)."""
    with rasterio.open(path) as src:
        return src.read(), SimpleNamespace(crs=src.crs, transform=src.transform, nodata=src.nodata,
                                           descriptions=src.descriptions, tags=src.tags())


def check_against_map(probs: np.ndarray, classes: np.ndarray, confidence: np.ndarray) -> None:
    """255 exactly where the map is nodata; elsewhere the map's class has the highest percent (ties
    aside: the argmax is the class wherever the highest percent is unique), the top percent is the confidence."""
    nodata = classes == 255
    assert (probs[:, nodata] == 255).all() and (probs[:, ~nodata] <= 100).all()
    valid = probs[:, ~nodata].astype(int)
    top = valid.max(0)
    at_class = np.take_along_axis(valid, classes[~nodata][None].astype(int), 0)[0]
    np.testing.assert_array_equal(at_class, top)
    unique = (valid == top).sum(0) == 1
    assert unique.mean() > 0.5
    np.testing.assert_array_equal(valid.argmax(0)[unique], classes[~nodata][unique])
    np.testing.assert_array_equal(top, confidence[~nodata])
    assert np.abs(valid.sum(0) - 100).max() <= len(probs) // 2 + 1  # rounded percentages of a distribution


@pytest.mark.parametrize("overlap", [0, 40])
def test_probabilities_match_the_map(tmp_path, weights, overlap):
    data = rgb_image(300, 420, seed=8)
    data[:, :60, :90] = 0
    write_on_grid(tmp_path / "in.tif", data, nodata=0)
    res = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "map.tif", confidence=tmp_path / "conf.tif",
                      probabilities=tmp_path / "prob.tif", overlap=overlap, unit_size=256)
    assert res.probability_outputs == [tmp_path / "prob.tif"]
    probs, src = read_all(tmp_path / "prob.tif")
    classes, m = read_all(tmp_path / "map.tif")
    confidence, _ = read_all(tmp_path / "conf.tif")
    assert probs.shape == (len(PREDICT_CLASSES), 300, 420) and probs.dtype == np.uint8
    assert src.descriptions == tuple(PREDICT_CLASSES.names)
    assert (src.crs, src.transform, src.nodata) == (m.crs, m.transform, 255)
    assert src.tags["CASWIT_MODEL"] == m.tags["CASWIT_MODEL"]
    check_against_map(probs, classes[0], confidence[0])


def test_cog_with_average_overviews(tmp_path, weights):
    write_on_grid(tmp_path / "in.tif", rgb_image(600, 520, seed=9))
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "map.tif", probabilities=tmp_path / "prob.tif")
    with rasterio.open(tmp_path / "map.tif") as m:
        levels = m.overviews(1)
    with rasterio.open(tmp_path / "prob.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.overviews(1) == levels and levels[0] == 2  # the map's levels
        full = src.read(2).astype(np.float64)
        half = src.read(2, out_shape=(300, 260))
        assert (src.width, src.height) == (520, 600)
    # the level is the 2 x 2 average (GDAL rounds to the nearest)
    brute = full.reshape(300, 2, 260, 2).mean(axis=(1, 3))
    assert np.abs(half - brute).max() <= 0.5 + 1e-9


def test_per_file_probabilities_and_folder_rule(tmp_path, weights):
    for i, name in enumerate("ab"):
        write_on_grid(tmp_path / "in" / f"{name}.tif", rgb_image(130, 140, seed=i), col=140 * i)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputError, match="--probabilities: must be a folder when --out is a folder"):
        run_predict(weights, [tmp_path / "in"], out, probabilities=tmp_path / "p.tif")
    run_predict(weights, [tmp_path / "in"], out, confidence=out, probabilities=out)
    for name in "ab":
        probs, src = read_all(out / f"{name}_probabilities.tif")
        classes, m = read_all(out / f"{name}_landcover.tif")
        assert src.transform == m.transform and probs.shape[1:] == classes.shape[1:] == (130, 140)
        check_against_map(probs, classes[0], read_all(out / f"{name}_confidence.tif")[0][0])
    assert (out / "a_probabilities.qml").exists()


def test_strip_memory_grows_with_the_bands_within_the_budget():
    tile, block = 512, 512
    assert choose_strip_width(100_000, tile, block, None, 256) == 8192  # classes and confidence only
    for k in (4, 19, 64):
        w = choose_strip_width(100_000, tile, block, None, 256, probability_bands=k)
        assert w % tile == 0 and (2 + k) * (tile + block) * w <= 256 * 2**20
    soft = choose_strip_width(100_000, tile, block, 19, 256, probability_bands=19)
    assert (20 * 4 + 19) * (tile + block) * soft <= 256 * 2**20


def test_resume_refuses_adding_probabilities_and_finishes_with_them(tmp_path, weights, monkeypatch):
    write_on_grid(tmp_path / "in.tif", rgb_image(256, 256, seed=2))
    kw = dict(unit_size=128, batch_size=1)
    run_predict(weights, [tmp_path / "in.tif"], tmp_path / "ref.tif", probabilities=tmp_path / "ref_p.tif", **kw)
    interrupt_forward_pass(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_predict(weights, [tmp_path / "in.tif"], tmp_path / "map.tif", probabilities=tmp_path / "p.tif", **kw)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="--probabilities"):
        run_predict(weights, [tmp_path / "in.tif"], tmp_path / "map.tif", resume=True, **kw)
    res = run_predict(weights, [tmp_path / "in.tif"], tmp_path / "map.tif", probabilities=tmp_path / "p.tif",
                      resume=True, **kw)
    assert res.units_before == 2
    np.testing.assert_array_equal(read_all(tmp_path / "p.tif")[0], read_all(tmp_path / "ref_p.tif")[0])
