"""train -> eval -> predict with the miniature model on the CPU, on generated data sets."""

import json

import numpy as np
import pytest
import rasterio

import caswit_geo
from caswit_geo.synthetic import SyntheticConfig, generate_dataset
from tests.helpers import FLAIRHUB_PATCH, cli_exit_code, make_flairhub_tree, write_flairhub_split_gpkg


@pytest.fixture(scope="module")
def tiles_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e") / "data"
    generate_dataset(SyntheticConfig(seed=3, size=256, train=2, val=1, test=1), root)
    return root


def test_train_eval_predict_agree(tiles_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_exit_code("train", "--dataset", "tiles", "--root", tiles_root, "--model", "caswit-nano", "--epochs", 1,
                         "--batch-size", 2, "--lr", 1e-3, "--workers", 0, "--out", run, "--no-progress") == 0
    best = run / "best.safetensors"
    model, meta = caswit_geo.load_checkpoint(best)
    assert meta.classes.names[6:] == ["park", "meadow"] and meta.input_spec.gsd == 0.5

    ev = tmp_path / "eval"
    assert cli_exit_code("eval", "--dataset", "tiles", "--root", tiles_root, "--weights", best, "--split", "test",
                         "--workers", 0, "--out-dir", ev, "--save-predictions", tmp_path / "pred", "--no-progress") == 0
    report = json.loads((ev / "report.json").read_text())
    assert 0.0 <= report["metrics"]["mIoU"] <= 1.0
    name = (tiles_root / "splits" / "test.txt").read_text().split()[0]

    # predict on the same image: same grid, same context, same model -> the same classes as eval saved
    out = tmp_path / "lc.tif"
    assert cli_exit_code("predict", tiles_root / "images" / f"{name}.tif", "--out", out, "--weights", best,
                         "--workers", 0, "--quiet") == 0
    with rasterio.open(out) as a, rasterio.open(tmp_path / "pred" / f"{name}.tif") as b:
        assert a.transform == b.transform and a.crs == b.crs
        assert np.array_equal(a.read(1), b.read(1))

    # and eval --pred/--ref on predict's output gives eval's own figures for that single image
    assert cli_exit_code("eval", "--pred", out, "--ref", tiles_root / "labels" / f"{name}.tif", "--classes",
                         tiles_root / "classes.json", "--tile-size", 128, "--out-dir", tmp_path / "pr") == 0
    pr = json.loads((tmp_path / "pr" / "report.json").read_text())
    assert pr["metrics"]["mIoU"] == pytest.approx(report["metrics"]["mIoU"], abs=1e-9)
    assert pr["metrics"]["OA"] == pytest.approx(report["metrics"]["OA"], abs=1e-9)


def test_flairhub_train_and_eval(tmp_path):
    make_flairhub_tree(tmp_path)
    write_flairhub_split_gpkg(tmp_path, ["split_flairhub"])
    run = tmp_path / "run"
    assert cli_exit_code("train", "--dataset", "flairhub", "--root", tmp_path, "--model", "caswit-nano",
                         "--tile-size", FLAIRHUB_PATCH, "--epochs", 1, "--batch-size", 2, "--workers", 0, "--out", run,
                         "--no-progress") == 0
    model, meta = caswit_geo.load_checkpoint(run / "best.safetensors")
    assert len(meta.classes) == 19 and meta.classes.weights[15:] == [0.0] * 4
    assert meta.input_spec.bands == (1, 2, 3) and meta.input_spec.tile_size == FLAIRHUB_PATCH
    assert cli_exit_code("eval", "--dataset", "flairhub", "--root", tmp_path, "--weights", run / "best.safetensors",
                         "--workers", 0, "--out-dir", tmp_path / "ev", "--no-progress") == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["protocol"] == "flairhub" and len(report["classes"]) == 15
