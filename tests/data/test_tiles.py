"""``tiles`` loader (the user's own GeoTIFFs), worker-safe handles, augmentation."""

import json

import numpy as np
import pytest
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

from caswit_geo.core.errors import DatasetError
from caswit_geo.core.spec import InputSpec
from caswit_geo.data import Augment, build_dataset, load_tiles_meta
from caswit_geo.geo.context import area_downsample
from tests.helpers import write_geotiff

T = 32
CLASSES = {
    "classes": [{"id": 0, "name": "building", "color": [200, 0, 0]}, {"id": 1, "name": "road", "color": [90, 90, 90]},
                {"id": 2, "name": "trees", "color": [0, 120, 0]}],
    "weights": [1.0, 1.0, 0.5],
    "bands": [1, 2, 3],
    "scale": 255,
}
IMAGES = {  # name: (width, height, crs, transform)
    "north": (100, 70, CRS.from_epsg(32631), from_origin(500_000, 5_000_000, 0.5, 0.5)),
    "south": (40, 64, CRS.from_epsg(2154), from_origin(650_000, 6_860_000, 0.2, 0.2)),
}


def make_root(root, splits=True, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for name, (w, h, crs, transform) in IMAGES.items():
        img = rng.integers(1, 256, (3, h, w), dtype=np.uint8)
        lab = rng.integers(0, 3, (h, w), dtype=np.uint8)
        lab[:3] = 255
        write_geotiff(root / "images" / f"{name}.tif", img, crs=crs, transform=transform)
        write_geotiff(root / "labels" / f"{name}.tif", lab[None], crs=crs, transform=transform)
        data[name] = (img, lab)
    (root / "classes.json").write_text(json.dumps(CLASSES))
    if splits:
        (root / "splits").mkdir()
        (root / "splits" / "train.txt").write_text("north\nsouth\n")
        (root / "splits" / "test.txt").write_text("south\n")
    return data


def spec():
    return InputSpec(tile_size=T)


def test_classes_json(tmp_path):
    make_root(tmp_path)
    meta = load_tiles_meta(tmp_path)
    assert meta.classes.names == ["building", "road", "trees"] and meta.classes.weights == [1.0, 1.0, 0.5]
    assert meta.bands == (1, 2, 3) and meta.scale == 255
    (tmp_path / "classes.json").write_text('{"classes": [{"id": 1, "name": "x", "color": [0, 0, 0]}]}')
    with pytest.raises(DatasetError, match="classes.json: class ids must be 0..K-1"):
        load_tiles_meta(tmp_path)
    (tmp_path / "classes.json").write_text("{")
    with pytest.raises(DatasetError, match="classes.json: the class file is not valid JSON"):
        load_tiles_meta(tmp_path)


def test_grid_tiles_and_context(tmp_path):
    data = make_root(tmp_path)
    ds = build_dataset("tiles", tmp_path, "train", spec())
    # north: 4 x 3 tiles (100 -> 4 columns, 70 -> 3 rows); south: 2 x 2
    assert len(ds) == 12 + 4
    for i in range(len(ds)):
        geo = ds.georef(i)
        img, lab = data[geo.image_id]
        w, h, crs, transform = IMAGES[geo.image_id]
        assert geo.crs == crs and geo.transform == transform and (geo.width, geo.height) == (w, h)
        r, c = int(geo.window.row_off), int(geo.window.col_off)
        hr, lr, label, lr_label, _ = ds.read(i)
        pad = np.pad(img, ((0, 0), (T, T + T), (T, T + T)))  # black outside
        pad_lab = np.pad(lab, ((T, 2 * T), (T, 2 * T)), constant_values=255)
        np.testing.assert_array_equal(hr, pad[:, T + r : 2 * T + r, T + c : 2 * T + c])
        np.testing.assert_array_equal(label, pad_lab[T + r : 2 * T + r, T + c : 2 * T + c])
        ctx = pad[:, r + T // 2 : r + 5 * T // 2, c + T // 2 : c + 5 * T // 2].astype(float)
        np.testing.assert_allclose(lr, ctx.reshape(3, T, 2, T, 2).mean(axis=(2, 4)), atol=1e-4)
        np.testing.assert_array_equal(lr_label, pad_lab[r + T // 2 + 1 : r + 5 * T // 2 : 2, c + T // 2 + 1 : c + 5 * T // 2 : 2])
    test = build_dataset("tiles", tmp_path, "test", spec())
    assert {test.georef(i).image_id for i in range(len(test))} == {"south"}
    assert test.classes.names == ["building", "road", "trees"]


def test_no_splits_folder_warns(tmp_path):
    make_root(tmp_path, splits=False)
    with pytest.warns(UserWarning, match="no splits folder"):
        ds = build_dataset("tiles", tmp_path, "test", spec())
    assert len(ds) == 16


def test_image_nodata_is_ignored(tmp_path):
    make_root(tmp_path)
    w, h, crs, transform = IMAGES["south"]
    img = np.full((3, h, w), 50, np.uint8)
    img[:, 10:20, 5:15] = 0
    write_geotiff(tmp_path / "images" / "south.tif", img, crs=crs, transform=transform, nodata=0)
    ds = build_dataset("tiles", tmp_path, "test", spec())
    _, _, label, _, _ = ds.read(0)
    assert (label[10:20, 5:15] == 255).all() and (label[3:10] != 255).all()


def test_unlabelled_without_classes(tmp_path):
    make_root(tmp_path)
    (tmp_path / "classes.json").unlink()
    for p in (tmp_path / "labels").iterdir():
        p.unlink()
    ds = build_dataset("tiles", tmp_path, "all", spec(), labels=False, random_crops=True)
    assert len(ds) == 16 and len(ds.classes) == 0 and not ds.labelled
    s = ds[5]
    assert (s["label"] == 255).all() and (s["lr_label"] == 255).all() and s["hr"].shape == (3, T, T)
    with pytest.raises(DatasetError, match="classes.json: class file not found"):
        build_dataset("tiles", tmp_path, "all", spec())


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(transform=from_origin(650_001, 6_860_000, 0.2, 0.2)), "south.tif: geotransform differs from its image"),
        (dict(crs=CRS.from_epsg(32631)), "south.tif: CRS EPSG:32631 differs"),
        (dict(width=41), "south.tif: 41x64 px, but its image"),
    ],
)
def test_label_mismatch(tmp_path, change, message):
    make_root(tmp_path)
    w, h, crs, transform = IMAGES["south"]
    kw = dict(width=w, crs=crs, transform=transform) | change
    write_geotiff(tmp_path / "labels" / "south.tif", np.zeros((1, h, kw["width"]), np.uint8), crs=kw["crs"],
                  transform=kw["transform"])
    with pytest.raises(DatasetError, match=message):
        build_dataset("tiles", tmp_path, "test", spec())


def test_bad_files(tmp_path):
    make_root(tmp_path)
    (tmp_path / "splits" / "val.txt").write_text("north\nmissing\n")
    with pytest.raises(DatasetError, match=r"val.txt: 1 of the 2 images it lists are not in .*images \(missing\); "
                                           "use --allow-missing"):
        build_dataset("tiles", tmp_path, "val", spec())
    with pytest.warns(UserWarning, match="1 of the 2 images"):
        ds = build_dataset("tiles", tmp_path, "val", spec(), allow_missing=True)
    assert ds.image_ids() == ["north"]
    assert (ds.coverage.requested, ds.coverage.used, ds.coverage.missing) == (2, 1, ("missing",))
    w, h, crs, transform = IMAGES["south"]
    write_geotiff(tmp_path / "labels" / "south.tif", np.full((1, h, w), 7, np.uint8), crs=crs, transform=transform)
    ds = build_dataset("tiles", tmp_path, "test", spec())
    with pytest.raises(DatasetError, match="south.tif: label value 7 is not a class id 0..2"):
        ds[0]
    (tmp_path / "images" / "south.tif").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="south.tif: not a readable raster"):
        build_dataset("tiles", tmp_path, "test", spec())
    (tmp_path / "labels" / "north.tif").unlink()
    with pytest.raises(DatasetError, match="north.tif: label raster of image 'north' not found"):
        build_dataset("tiles", tmp_path, "train", spec())


def test_dataloader_workers_open_their_own_handles(tmp_path):
    make_root(tmp_path)
    ds = build_dataset("tiles", tmp_path, "train", spec())
    serial = [ds[i]["hr"] for i in range(len(ds))]  # the parent now holds open handles
    assert ds._handles._open
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = torch.cat([b["hr"] for b in loader])
    torch.testing.assert_close(batches, torch.stack(serial))


def sample_with_structure(rng):
    """A sample whose labels are a function of the imagery, and whose HR is the LR centre."""
    s = spec()
    big = rng.integers(0, 256, (3, 2 * T, 2 * T)).astype(np.uint8)
    big[:, :, :6] = 0  # a black (outside) strip
    hr = big[:, T // 2 : 3 * T // 2, T // 2 : 3 * T // 2]
    lr = area_downsample(big, 2)
    return {
        "hr": torch.from_numpy(s.normalize(hr)), "lr": torch.from_numpy(s.normalize(lr)),
        "label": torch.from_numpy((hr[0] // 86).astype(np.int64)), "lr_label": torch.from_numpy((big[0, 1::2, 1::2] // 86).astype(np.int64)),
        "id": "x",
    }, hr


def test_augment_geometry_keeps_everything_aligned():
    rng = np.random.default_rng(3)
    s = spec()
    sample, _ = sample_with_structure(rng)
    aug = Augment(s, brightness=0, contrast=0, generator=torch.Generator().manual_seed(0))
    outcomes = set()
    mean = torch.tensor(s.mean)[:, None, None]
    std = torch.tensor(s.std)[:, None, None]
    for _ in range(12):
        out = aug(sample)
        raw_hr = torch.round((out["hr"] * std + mean) * 255)
        raw_lr = (out["lr"] * std + mean) * 255
        torch.testing.assert_close(out["label"], (raw_hr[0] // 86).long())  # label moved with the image
        # HR is still the centre of the LR context: its 2x2 means are the LR's central pixels
        centre = raw_lr[:, T // 4 : 3 * T // 4, T // 4 : 3 * T // 4]
        torch.testing.assert_close(raw_hr.reshape(3, T // 2, 2, T // 2, 2).mean((2, 4)), centre, atol=1e-3, rtol=0)
        outcomes.add(tuple(out["label"][0, :4].tolist()))
    assert len(outcomes) > 2  # several different transforms were drawn
    assert sample["label"].shape == (T, T) and out["id"] == "x"


def test_augment_jitter_imagery_only_and_black_stays_black():
    rng = np.random.default_rng(4)
    s = spec()
    sample, _ = sample_with_structure(rng)
    aug = Augment(s, flips=False, rot90=False, brightness=0.3, contrast=0.3, generator=torch.Generator().manual_seed(1))
    out = aug(sample)
    assert not torch.allclose(out["hr"], sample["hr"])
    torch.testing.assert_close(out["label"], sample["label"])
    torch.testing.assert_close(out["lr_label"], sample["lr_label"])
    black = torch.tensor([-m / d for m, d in zip(s.mean, s.std)])[:, None]
    torch.testing.assert_close(out["lr"][:, :, :3].reshape(3, -1), black.expand(3, T * 3), atol=1e-5, rtol=0)
    raw = out["hr"] * torch.tensor(s.std)[:, None, None] + torch.tensor(s.mean)[:, None, None]
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
