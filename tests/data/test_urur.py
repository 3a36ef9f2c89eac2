"""URUR loader: both public layouts, palette/grayscale PNG labels read as indices, tiles with context."""

import numpy as np
import pytest
import torch
from PIL import Image

from caswit_geo.core.errors import DatasetError
from caswit_geo.core.spec import InputSpec
from caswit_geo.data import build_dataset

T = 32
W, H = 96, 80  # stand-in for 5120 x 5120: the last tile row is partial


def palette_png(path, labels):
    """Indexed PNG whose palette colours have nothing to do with the indices."""
    img = Image.fromarray(labels, mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[:8] = [(0, 0, 0), (255, 0, 0), (255, 255, 0), (0, 255, 255), (0, 160, 0), (160, 110, 60), (0, 0, 255), (128, 128, 128)]
    img.putpalette(palette.ravel().tolist())
    img.save(path)


def write_pair(image_dir, label_dir, name, rng, palette=True):
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    small = rng.integers(0, 8, (H // 8, W // 8))
    labels = np.kron(small, np.ones((8, 8), int)).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(image_dir / f"{name}.png")
    if palette:
        palette_png(label_dir / f"{name}.png", labels)
    else:
        Image.fromarray(labels, mode="L").save(label_dir / f"{name}.png")
    return rgb.transpose(2, 0, 1), labels


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    rng = np.random.default_rng(0)
    a = tmp_path_factory.mktemp("urur_a")
    b = tmp_path_factory.mktemp("urur_b")
    data = {}
    for split in ("train", "val", "test"):
        for n in range(2):
            name = f"{split}_{n}"
            data[("a", name)] = write_pair(a / "URUR" / split / "image", a / "URUR" / split / "label", name, rng)
            data[("b", name)] = write_pair(b / "urur" / "imgs" / split, b / "urur" / "labels" / split, name, rng, palette=n == 0)
    return a, b, data


def brute_context(img, r, c, k=2):
    """kT window centred on the tile from a zero-padded copy, k x k block means."""
    pad = np.pad(img.astype(np.float64), [(0, 0)] * (img.ndim - 2) + [(T, T), (T, T)])
    half = (k - 1) * T // 2
    win = pad[..., T + r - half : T + r - half + k * T, T + c - half : T + c - half + k * T]
    return win.reshape(*win.shape[:-2], T, k, T, k).mean(axis=(-3, -1))


@pytest.mark.parametrize("layout, root_index", [("a", 0), ("b", 1)])
def test_grid_tiles_both_layouts(layouts, layout, root_index):
    root = layouts[root_index]
    spec = InputSpec(tile_size=T)
    ds = build_dataset("urur", root, "test", spec)
    assert len(ds.classes) == 8 and ds.classes.names[0] == "others"
    assert len(ds) == 2 * 3 * 3  # 96 / 32 = 3 columns, ceil(80 / 32) = 3 rows
    for i in (0, 4, 8, 13):
        hr, lr, label, lr_label, sample_id = ds.read(i)
        geo = ds.georef(i)
        rgb, labels = layouts[2][(layout, geo.image_id)]
        r, c = int(geo.window.row_off), int(geo.window.col_off)
        assert sample_id == f"{geo.image_id}/r{r}_c{c}"
        ref_hr = np.zeros((3, T, T), np.uint8)
        ref_lab = np.full((T, T), 255, np.uint8)
        h, w = min(T, H - r), min(T, W - c)
        ref_hr[:, :h, :w] = rgb[:, r : r + h, c : c + w]
        ref_lab[:h, :w] = labels[r : r + h, c : c + w]
        np.testing.assert_array_equal(hr, ref_hr)
        np.testing.assert_array_equal(label, ref_lab)  # palette indices, not colours
        np.testing.assert_allclose(lr, brute_context(rgb, r, c), atol=1e-4)
        pad_lab = np.pad(labels, T, constant_values=255)
        np.testing.assert_array_equal(lr_label, pad_lab[T + r - T // 2 + 1 : T + r + 3 * T // 2 : 2, T + c - T // 2 + 1 : T + c + 3 * T // 2 : 2])
    assert geo.crs is None and (geo.width, geo.height) == (W, H)


def test_val_alias_and_grayscale_labels(layouts):
    _, b, data = layouts
    ds = build_dataset("urur", b, "val", InputSpec(tile_size=T))
    names = {ds.georef(i).image_id for i in range(len(ds))}
    assert names == {"val_0", "val_1"}
    i = next(i for i in range(len(ds)) if ds.georef(i).image_id == "val_1")  # grayscale label PNG
    _, _, label, _, _ = ds.read(i)
    np.testing.assert_array_equal(label, data[("b", "val_1")][1][:T, :T])


def test_random_crops_stay_inside(layouts):
    a, _, data = layouts
    ds = build_dataset("urur", a, "train", InputSpec(tile_size=T), random_crops=True, crops_per_image=5)
    assert len(ds) == 10
    torch.manual_seed(0)
    seen = set()
    for i in range(len(ds)):
        sample = ds[i]
        name, rc = sample["id"].split("/")
        r, c = (int(v[1:]) for v in rc.split("_"))
        seen.add((r, c))
        assert 0 <= r <= H - T and 0 <= c <= W - T
        rgb, labels = data[("a", name)]
        np.testing.assert_array_equal(sample["label"].numpy(), labels[r : r + T, c : c + T])
        expect = InputSpec(tile_size=T).normalize(rgb[:, r : r + T, c : c + T])
        np.testing.assert_allclose(sample["hr"].numpy(), expect, rtol=1e-6)
    assert len(seen) > 3


def test_errors(layouts, tmp_path):
    a, _, _ = layouts
    with pytest.raises(DatasetError, match="no URUR test images"):
        build_dataset("urur", tmp_path, "test", InputSpec(tile_size=T))
    rng = np.random.default_rng(1)
    write_pair(tmp_path / "test" / "image", tmp_path / "test" / "label", "x", rng)
    (tmp_path / "test" / "label" / "x.png").unlink()
    with pytest.raises(DatasetError, match=r"label[/\\]x.png: label of x.png not found"):
        build_dataset("urur", tmp_path, "test", InputSpec(tile_size=T))
    Image.fromarray(np.zeros((H, W + 8), np.uint8), mode="L").save(tmp_path / "test" / "label" / "x.png")
    with pytest.raises(DatasetError, match="x.png: 104x80 px, but its image"):
        build_dataset("urur", tmp_path, "test", InputSpec(tile_size=T))
    (tmp_path / "test" / "label" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="x.png: not a readable raster"):
        build_dataset("urur", tmp_path, "test", InputSpec(tile_size=T))
    ds = build_dataset("urur", tmp_path, "test", InputSpec(tile_size=T), labels=False)
    assert (ds[0]["label"] == 255).all()
