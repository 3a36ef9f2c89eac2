"""FLAIR-HUB loader on a small generated tree with the real names and Lambert-93 georeferencing."""

import json
import os
import time

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError, DatasetError
from caswit_geo.core.spec import InputSpec
from caswit_geo.data import build_dataset, flairhub_index
from caswit_geo.data.flairhub_index import build_index, parse_patch_name
from tests.helpers import FLAIRHUB_PATCH as P  # patch size (px)
from tests.helpers import FLAIRHUB_PATCHES as PATCHES  # (zone, roi, row, col) of every patch of the tree
from tests.helpers import FLAIRHUB_X0 as X0
from tests.helpers import FLAIRHUB_Y0 as Y0
from tests.helpers import GSD, LAMBERT93
from tests.helpers import flairhub_patch_id as pid
from tests.helpers import make_flairhub_tree, write_flairhub_split_gpkg, write_geotiff


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("flairhub")
    mosaics = make_flairhub_tree(root)
    rows = write_flairhub_split_gpkg(root, ["split_1", "split_flairhub"])
    return root, mosaics, rows


def spec(**kw):
    return InputSpec(tile_size=P, **kw)


def test_parse_names():
    n = parse_patch_name("D024047-2021_AERIAL_RGBI_AA-S1-V18_5-10", "AERIAL_RGBI")
    assert (n.patch_id, n.zone, n.roi, n.cell) == ("D024047-2021_AA-S1-V18_5-10", "D024047-2021", "AA-S1-V18", "5-10")
    n = parse_patch_name("D012-195X_AERIAL_LABEL-COSIA_AF-S1-27_5-10", "AERIAL_LABEL-COSIA")
    assert n.patch_id == "D012-195X_AF-S1-27_5-10" and n.zone == "D012-195X"
    assert parse_patch_name("D012-2019_SPOT_RGBI_AF-S1-27_5-10", "AERIAL_RGBI") is None


def test_neighbours_from_transforms(tree):
    root, _, _ = tree
    index = build_index(root)
    at = lambda zone, roi, r, c: index.by_id[pid(zone, roi, r, c)]
    z = "D024047-2021"
    centre = at(z, "AA-S1-V18", 1, 1)  # its own corner is 0.04 m off: still matched
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if (dr, dc) != (0, 0):
                roi = "AA-S1-V18"
                assert index.neighbour(centre, dr, dc) == at(z, roi, 1 + dr, 1 + dc)
    # ROI edge: east neighbours are in the next ROI; north is the hole
    edge = at(z, "AA-S1-V18", 1, 3)
    assert index.neighbour(edge, 0, 1) == at(z, "AB-S2-7", 1, 4)
    assert index.neighbour(edge, -1, 1) == at(z, "AB-S2-7", 0, 4)
    assert index.neighbour(edge, -1, 0) is None
    # dataset edge: nothing west or north of (0, 0)
    corner = at(z, "AA-S1-V18", 0, 0)
    assert index.neighbour(corner, 0, -1) is None and index.neighbour(corner, -1, -1) is None
    assert index.neighbour(corner, 1, 1) == centre
    # same place, other domain-year: only its own patches
    other = at("D012-2019", "AF-S1-27", 0, 0)
    assert index.neighbour(other, 0, 1) == at("D012-2019", "AF-S1-27", 0, 1)
    assert index.neighbour(other, 0, 2) is None


def gdal_reference(root, mosaic, label_mosaic, zone, r, c, bands=(1, 2, 3)):
    """LR context of patch (r, c) resampled by GDAL from the zone mosaic (average / nearest)."""
    transform = from_origin(X0 - P * GSD, Y0 + P * GSD, GSD, GSD)
    path = root.parent / f"mosaic-{root.name}-{zone}.tif"
    if not path.exists():
        write_geotiff(path, np.concatenate([mosaic, label_mosaic[None]]), transform=transform, crs=LAMBERT93)
    # the patch starts at (r + 1) * P in the mosaic; its context half a patch earlier
    win = Window((c + 1) * P - P // 2, (r + 1) * P - P // 2, 2 * P, 2 * P)
    with rasterio.open(path) as src:
        lr = src.read(list(bands), window=win, out_shape=(len(bands), P, P), resampling=Resampling.average, out_dtype="float32")
        lr_lab = src.read(5, window=win, out_shape=(P, P), resampling=Resampling.nearest)
    return lr, lr_lab


@pytest.mark.parametrize(
    "zone, roi, r, c",
    [
        ("D024047-2021", "AA-S1-V18", 1, 1),  # interior
        ("D024047-2021", "AA-S1-V18", 1, 3),  # ROI edge with a missing north neighbour
        ("D024047-2021", "AB-S2-7", 2, 5),  # dataset corner
        ("D012-2019", "AF-S1-27", 0, 1),
    ],
)
def test_context_matches_mosaic(tree, zone, r, roi, c):
    root, mosaics, _ = tree
    ds = build_dataset("flairhub", root, "all", spec())
    i = ds.selection.index(ds.index.by_id[pid(zone, roi, r, c)])
    hr, lr, label, lr_label, sample_id = ds.read(i)
    img, lab = mosaics[zone]
    assert sample_id == pid(zone, roi, r, c)
    np.testing.assert_array_equal(hr, img[:3, (r + 1) * P : (r + 2) * P, (c + 1) * P : (c + 2) * P])
    np.testing.assert_array_equal(label, lab[(r + 1) * P : (r + 2) * P, (c + 1) * P : (c + 2) * P])
    ref_lr, ref_lab = gdal_reference(root, img, lab, zone, r, c)
    np.testing.assert_allclose(lr, ref_lr, atol=0.51)
    np.testing.assert_array_equal(lr_label, ref_lab)


def test_sample_contract_and_bands(tree):
    root, mosaics, _ = tree
    s = spec(bands=(4, 1, 2))
    ds = build_dataset("flairhub", root, "all", s)
    sample = ds[0]
    p = ds.patch(0)
    assert sample["hr"].dtype == sample["lr"].dtype == torch.float32
    assert tuple(sample["hr"].shape) == tuple(sample["lr"].shape) == (3, P, P)
    assert sample["label"].dtype == sample["lr_label"].dtype == torch.int64
    with rasterio.open(p.image) as src:
        raw = src.read([4, 1, 2])
    np.testing.assert_allclose(sample["hr"].numpy(), s.normalize(raw), rtol=1e-6)
    geo = ds.georef(0)
    assert geo.image_id == p.patch_id and geo.transform == p.transform and (geo.width, geo.height) == (P, P)
    assert len(ds.classes) == 19 and ds.classes.weights[15:] == [0, 0, 0, 0]


def test_unlabelled(tree):
    root, _, _ = tree
    ds = build_dataset("flairhub", root, "all", spec(), labels=False)
    sample = ds[3]
    assert (sample["label"] == 255).all() and (sample["lr_label"] == 255).all()


def test_split_gpkg(tree):
    root, _, rows = tree
    ds = build_dataset("flairhub", root, "test", spec())
    expect = sorted(r["patch_id"] for r in rows if r["split_flairhub"] == "test")
    assert sorted(ds.patch(i).patch_id for i in range(len(ds))) == expect
    val = build_dataset("flairhub", root, "val", spec(), split_column="split_1")
    assert len(val) == sum(r["split_1"] == "valid" for r in rows)


def test_split_gpkg_missing_column_lists_columns(tree):
    root, _, _ = tree
    with pytest.raises(DatasetError, match="no split column 'split_x'; available columns: patch_id, split_1, split_flairhub"):
        build_dataset("flairhub", root, "test", spec(), split_column="split_x")


def test_split_lists(tree, tmp_path):
    root, _, _ = tree
    ids = [pid(*PATCHES[0]), pid(*PATCHES[5])]
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("patch_id,domain\n" + "".join(f"{i},x\n" for i in ids))
    ds = build_dataset("flairhub", root, csv_path, spec())
    assert sorted(ds.patch(i).patch_id for i in range(len(ds))) == sorted(ids)
    zone, roi, r, c = PATCHES[5]
    txt = tmp_path / "list.txt"
    txt.write_text(f"{zone}_AERIAL_RGBI/{roi}/{zone}_AERIAL_RGBI_{roi}_{c}-{r}.tif\n\n{pid(*PATCHES[2])}\n")
    ds = build_dataset("flairhub", root, str(txt), spec())
    assert sorted(ds.patch(i).patch_id for i in range(len(ds))) == sorted([pid(*PATCHES[5]), pid(*PATCHES[2])])
    bad = tmp_path / "bad.txt"
    bad.write_text("D999-2020_ZZ-S1-1_0-0\n")
    with pytest.raises(DatasetError, match="1 of the 1 patches it lists are not in"):
        build_dataset("flairhub", root, bad, spec(), allow_missing=True)  # nothing left to run on
    bad.write_text(f"{ids[0]}\nD999-2020_ZZ-S1-1_0-0\n")
    with pytest.raises(DatasetError, match=r"bad.txt: 1 of the 2 patches .* \(no image or no label file: D999-2020_ZZ-S1-1_0-0\); use --allow-missing"):
        build_dataset("flairhub", root, bad, spec())


def test_errors(tree, tmp_path):
    root, _, _ = tree
    with pytest.raises(ConfigError, match="set the tile size to 32"):
        build_dataset("flairhub", root, "all", InputSpec(tile_size=64))
    with pytest.raises(DatasetError, match="no FLAIR-HUB aerial patches"):
        build_dataset("flairhub", tmp_path, "all", spec())
    with pytest.raises(DatasetError, match=r"no split file for 'test': no \*_TEST.csv in or under the root and no "
                                           "GLOBAL_ALL_MTD"):
        empty = tmp_path / "tree"
        make_one(empty, 0, 0)
        build_dataset("flairhub", empty, "test", spec())


def make_one(root, r, c, transform=None, label_transform=None, zone="D033-2020", roi="AC-S3-2"):
    rng = np.random.default_rng(r * 10 + c)
    t = transform or from_origin(X0 + c * P * GSD, Y0 - r * P * GSD, GSD, GSD)
    stem = f"{roi}_{c}-{r}"
    write_geotiff(root / f"{zone}_AERIAL_RGBI" / roi / f"{zone}_AERIAL_RGBI_{stem}.tif",
                  rng.integers(0, 256, (4, P, P), dtype=np.uint8), transform=t, crs=LAMBERT93)
    write_geotiff(root / f"{zone}_AERIAL_LABEL-COSIA" / roi / f"{zone}_AERIAL_LABEL-COSIA_{stem}.tif",
                  np.ones((1, P, P), np.uint8), transform=label_transform or t, crs=LAMBERT93)
    return root / f"{zone}_AERIAL_RGBI" / roi / f"{zone}_AERIAL_RGBI_{stem}.tif"


def test_label_georeference_mismatch(tmp_path):
    make_one(tmp_path, 0, 0, label_transform=from_origin(X0 + 10, Y0, GSD, GSD))
    ds = build_dataset("flairhub", tmp_path, "all", spec())
    with pytest.raises(DatasetError, match="AERIAL_LABEL-COSIA_AC-S3-2_0-0.tif: size or georeferencing differs"):
        ds[0]


def test_cache_reused_and_rebuilt_when_stale(tmp_path, monkeypatch):
    for r, c in [(0, 0), (0, 1)]:
        make_one(tmp_path, r, c)
    reads = []
    real = flairhub_index._read_header
    monkeypatch.setattr(flairhub_index, "_read_header", lambda p: reads.append(p) or real(p))
    index = build_index(tmp_path)
    cache = tmp_path / flairhub_index.CACHE_NAME
    assert cache.is_file() and len(reads) == 2
    assert len(json.loads(cache.read_text())["entries"]) == 2
    reads.clear()
    index = build_index(tmp_path)
    assert reads == []  # nothing re-read
    assert index.neighbour(index.by_id["D033-2020_AC-S3-2_0-0"], 0, 1) is not None
    # move patch (0, 1) one row down: same name, new transform and mtime -> re-read
    time.sleep(0.01)
    path = make_one(tmp_path, 0, 1, transform=from_origin(X0 + P * GSD, Y0 - P * GSD, GSD, GSD))
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    index = build_index(tmp_path)
    assert [p.name for p in reads] == [path.name]
    a = index.by_id["D033-2020_AC-S3-2_0-0"]
    assert index.neighbour(a, 0, 1) is None and index.neighbour(a, 1, 1) == index.by_id["D033-2020_AC-S3-2_1-0"]
    # a new patch and a removed patch
    reads.clear()
    make_one(tmp_path, 5, 5)
    path.unlink()
    index = build_index(tmp_path)
    assert len(reads) == 1 and len(index) == 2 and "D033-2020_AC-S3-2_1-0" not in index.by_id
    assert len(json.loads(cache.read_text())["entries"]) == 2


def test_cache_dir_used_when_root_read_only(tmp_path):
    make_one(tmp_path / "data", 0, 0)
    build_index(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("flairhub-index-*.json"))) == 1
    assert not (tmp_path / "data" / flairhub_index.CACHE_NAME).exists()
