"""predict --tta: the map of a turned mosaic is the turned map; recorded in tags and in the job."""

import numpy as np
import pytest
import rasterio

from caswit_geo.core.errors import ConfigError
from caswit_geo.engine.predict.config import PredictConfig
from caswit_geo.engine.predict.plan import plan_predict
from tests.helpers import NANO_TILE, interrupt_forward_pass, rgb_image, run_cli, run_predict, write_on_grid

pytestmark = pytest.mark.usefixtures("single_thread")


def read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.read(2) if src.count > 1 else None, src.tags()


@pytest.mark.parametrize("mode, turns, flip", [("dihedral", 1, False), ("dihedral", 3, True), ("flips", 2, False)])
def test_map_of_a_turned_mosaic_is_the_turned_map(tmp_path, weights, mode, turns, flip):
    # 2 x 3 tiles: the tile grid of the turned mosaic is the turned grid, so each tile and its
    # context are turned copies of the original ones (black context outside the mosaic included)
    image = rgb_image(2 * NANO_TILE, 3 * NANO_TILE, seed=3)
    turned = np.rot90(image[:, :, ::-1] if flip else image, turns, axes=(1, 2)).copy()
    write_on_grid(tmp_path / "a.tif", image)
    write_on_grid(tmp_path / "b.tif", turned)
    run_predict(weights, [tmp_path / "a.tif"], tmp_path / "a_map.tif", tta=mode, confidence=tmp_path / "a_conf.tif")
    run_predict(weights, [tmp_path / "b.tif"], tmp_path / "b_map.tif", tta=mode, confidence=tmp_path / "b_conf.tif")
    a, b = read(tmp_path / "a_map.tif")[0], read(tmp_path / "b_map.tif")[0]
    expected = np.rot90(a[:, ::-1] if flip else a, turns)
    assert b.shape == expected.shape
    assert len(np.unique(a)) > 1  # a map with structure, not one class
    np.testing.assert_array_equal(b, expected)
    ca, cb = read(tmp_path / "a_conf.tif")[0], read(tmp_path / "b_conf.tif")[0]
    np.testing.assert_array_equal(cb, np.rot90(ca[:, ::-1] if flip else ca, turns))


def test_without_tta_the_untrained_model_is_not_symmetric(tmp_path, weights):
    """The property above comes from the augmentation, not from the model."""
    image = rgb_image(NANO_TILE, NANO_TILE, seed=3)
    write_on_grid(tmp_path / "a.tif", image)
    write_on_grid(tmp_path / "b.tif", np.rot90(image, 1, axes=(1, 2)).copy())
    run_predict(weights, [tmp_path / "a.tif"], tmp_path / "a_map.tif")
    run_predict(weights, [tmp_path / "b.tif"], tmp_path / "b_map.tif")
    assert not np.array_equal(read(tmp_path / "b_map.tif")[0], np.rot90(read(tmp_path / "a_map.tif")[0], 1))


def test_tta_is_recorded_in_tags_and_in_the_job(tmp_path, weights, monkeypatch):
    write_on_grid(tmp_path / "a.tif", rgb_image(NANO_TILE, 2 * NANO_TILE))
    result = run_predict(weights, [tmp_path / "a.tif"], tmp_path / "map.tif", tta="flips")
    assert result.tta == "flips"
    assert read(tmp_path / "map.tif")[2]["CASWIT_TTA"] == "flips"
    plan = plan_predict(PredictConfig(inputs=[str(tmp_path / "a.tif")], out=str(tmp_path / "m2.tif"),
                                      weights=str(weights), tta="dihedral"))
    assert plan.options["tta"] == "dihedral"
    # an interrupted job with --tta-flips is not continued with --tta
    interrupt_forward_pass(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_predict(weights, [tmp_path / "a.tif"], tmp_path / "m3.tif", tta="flips", unit_size=NANO_TILE)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="test-time augmentation"):
        run_predict(weights, [tmp_path / "a.tif"], tmp_path / "m3.tif", tta="dihedral", resume=True)
    run_predict(weights, [tmp_path / "a.tif"], tmp_path / "m3.tif", tta="flips", resume=True)
    assert np.array_equal(read(tmp_path / "m3.tif")[0], read(tmp_path / "map.tif")[0])


def test_tta_counts_its_forward_passes(tmp_path, weights, monkeypatch):
    from caswit_geo.model import tta as tta_module

    write_on_grid(tmp_path / "a.tif", rgb_image(NANO_TILE, NANO_TILE))
    calls = []
    real = tta_module.apply
    monkeypatch.setattr(tta_module, "apply", lambda x, t: (calls.append(t), real(x, t))[1])
    run_predict(weights, [tmp_path / "a.tif"], tmp_path / "map.tif", tta="dihedral")
    assert len(set(calls)) == 8 and len(calls) == 16  # HR and LR, 8 transforms


def test_cli_flags_dry_run_and_summary(tmp_path, weights, capsys):
    write_on_grid(tmp_path / "a.tif", rgb_image(NANO_TILE, NANO_TILE))
    base = ["predict", tmp_path / "a.tif", "--out", tmp_path / "map.tif", "--weights", weights, "--workers", "0"]
    code, out, err = run_cli(base + ["--tta", "--tta-flips"], capsys)
    assert code != 0 and "--tta and --tta-flips" in err and "Traceback" not in err
    code, out, err = run_cli(base + ["--tta", "--dry-run"], capsys)
    assert code == 0 and "test-time augmentation dihedral, 8 passes a tile" in out
    assert not (tmp_path / "map.tif").exists()
    code, out, err = run_cli(base + ["--tta-flips"], capsys)
    assert code == 0 and "test-time augmentation flips, 4 passes a tile" in err
    with rasterio.open(tmp_path / "map.tif") as src:
        assert src.tags()["CASWIT_TTA"] == "flips"
