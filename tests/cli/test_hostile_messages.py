"""Messages mended (review item 10 of "Nothing trusted, round 3"): each names the file or option and says
what to do. Rows are :class:`hostile.Case`; one test after the table checks that what was refused before
(two inputs of one name, one output) now runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.helpers import (
    PREDICT_CLASSES,
    module_checkpoint,
    rgb_image,
    run_predict,
    write_on_grid,
)
from tests.hostile import Case, run_case

SHARED: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def shared(tmp_path_factory):
    yield from module_checkpoint(SHARED, tmp_path_factory, PREDICT_CLASSES)


def two_tiles_one_stem(folder: Path) -> dict:
    write_on_grid(folder / "tile.tif", rgb_image(64, 64))
    write_on_grid(folder / "tile.jp2", rgb_image(64, 64), col=64, driver="JP2OpenJPEG")
    (folder / "maps").mkdir()
    return {"ckpt": str(SHARED["ckpt"])}


def one_name_two_folders(folder: Path) -> dict:
    for i, sub in enumerate(("a", "b")):
        (folder / sub).mkdir()
        write_on_grid(folder / sub / "tile.tif", rgb_image(64, 64), col=64 * i)
    (folder / "maps").mkdir()
    return {"ckpt": str(SHARED["ckpt"])}


def image(folder: Path) -> dict:
    write_on_grid(folder / "ortho.tif", rgb_image(64, 64))
    return {"ckpt": str(SHARED["ckpt"]), "long": "m" * 236 + ".tif"}


def classes_as_list(folder: Path) -> dict:
    (folder / "data" / "images").mkdir(parents=True)
    (folder / "data" / "classes.json").write_text(json.dumps([{"id": 0, "name": "a", "color": [0, 0, 0]}]))
    return {}


def bands_without_statistics(folder: Path) -> dict:
    root = folder / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_on_grid(root / "images" / "a.tif", np.zeros((5, 64, 64), np.uint8))
    write_on_grid(root / "labels" / "a.tif", np.zeros((1, 64, 64), np.uint8))
    (root / "classes.json").write_text(json.dumps({"classes": [{"id": 0, "name": "a", "color": [0, 0, 0]}],
                                                   "bands": [5], "scale": 255}))
    return {}


CASES = [
    Case("10-same-stem-per-file", ["predict", "tile.tif", "tile.jp2", "--out", "maps/", "--weights", "{ckpt}"],
         setup=two_tiles_one_stem, expect=("--out maps", "tile.tif and tile.jp2 would both write tile_landcover.tif")),
    Case("10-same-name-two-folders-per-file", ["predict", "a/tile.tif", "b/tile.tif", "--out", "maps/",
                                                "--weights", "{ckpt}"],
         setup=one_name_two_folders, expect=("a/tile.tif and b/tile.tif would both write tile_landcover.tif",)),
    Case("10-explain-x-1e300", ["explain", "ortho.tif", "--out", "e.png", "--weights", "{ckpt}", "--x", "1e300",
                                "--y", "0"], setup=image, expect=("--x 1e+300 --y 0: outside ortho.tif", "x 650000..")),
    Case("10-out-240-characters", ["predict", "ortho.tif", "--out", "{long}", "--weights", "{ckpt}"], setup=image,
         expect=("a file name of 240 bytes is too long here", "use at most")),
    Case("10-classes-json-a-list", ["train", "-d", "tiles", "--root", "data", "--model", "caswit-nano",
                                    "--out", "run"], setup=classes_as_list,
         expect=("classes.json", 'expected an object {"classes"', "got list")),
    Case("10-bands-without-mean-std", ["train", "-d", "tiles", "--root", "data", "--model", "caswit-nano",
                                       "--out", "run"], setup=bands_without_statistics,
         expect=("classes.json: bands [5]: give --mean and --std",)),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_hostile_messages(case, tmp_path, capsys):
    run_case(case, tmp_path, capsys)


def test_one_name_in_two_folders_makes_one_mosaic(tmp_path):
    """Two files named alike in two folders are one mosaic when there is one output."""
    one_name_two_folders(tmp_path)
    res = run_predict(SHARED["ckpt"], [tmp_path / "a" / "tile.tif", tmp_path / "b" / "tile.tif"], tmp_path / "m.tif")
    with rasterio.open(tmp_path / "m.tif") as src:
        assert (src.width, src.height) == (128, 64) and (src.read(1) != 255).all()
    assert res.width == 128
