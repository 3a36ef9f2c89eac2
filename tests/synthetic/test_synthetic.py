"""Synthetic data: determinism, the written ``tiles`` layout, and the park/meadow rule.

The rule is checked against an independent implementation (breadth-first
flood fill for the patches, torch max-pooling for the rings) and on a
hand-made map; that the grass pixels carry no park/meadow information is
checked by flipping the rule's threshold, which must leave the image
byte-identical.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from caswit_geo.core.errors import ConfigError, OutputError
from caswit_geo.core.spec import ClassTable
from caswit_geo.synthetic import (
    BUILDING,
    CONTEXT_CLASSES,
    HR_CLASSES,
    MEADOW,
    PARK,
    PAVED,
    ROAD,
    WATER,
    SyntheticConfig,
)
from caswit_geo.synthetic import dataset as dataset_module
from caswit_geo.synthetic import (
    generate_dataset,
    generate_scene,
    mosaic_transform,
    name_grass,
    scene_rng,
    synthetic_classes,
    write_sample_mosaic,
)

# Seeds whose 768 px scene holds both parks and meadows (asserted where used).
BOTH_SEEDS = (1, 2)


def small(**kw) -> SyntheticConfig:
    return SyntheticConfig(**{"size": 256, "train": 2, "val": 1, "test": 1, **kw})


@pytest.fixture(scope="module")
def scenes() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    config = SyntheticConfig(size=768)
    return {seed: generate_scene(config, np.random.default_rng(seed)) for seed in BOTH_SEEDS}


# ---------------------------------------------------------------- determinism


def test_scene_is_a_pure_function_of_the_seed():
    config = SyntheticConfig(size=384)
    img_a, lab_a = generate_scene(config, np.random.default_rng(7))
    img_b, lab_b = generate_scene(config, np.random.default_rng(7))
    img_c, lab_c = generate_scene(config, np.random.default_rng(8))
    assert img_a.shape == (3, 384, 384) and img_a.dtype == np.uint8
    assert lab_a.shape == (384, 384) and lab_a.dtype == np.uint8
    assert np.array_equal(img_a, img_b) and np.array_equal(lab_a, lab_b)
    assert (img_a != img_c).mean() > 0.5 and (lab_a != lab_c).mean() > 0.1


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_files_are_byte_identical_for_a_seed(tmp_path):
    generate_dataset(small(seed=5), tmp_path / "a")
    generate_dataset(small(seed=5), tmp_path / "b")
    generate_dataset(small(seed=6), tmp_path / "c")
    a, b, c = (_tree_bytes(tmp_path / n) for n in "abc")
    assert len(a) == 2 * 4 + 3 + 2  # images + labels, 3 splits, classes.json, synthetic.json
    assert a == b
    assert a["images/train_000.tif"] != c["images/train_000.tif"]
    assert a["labels/train_000.tif"] != c["labels/train_000.tif"]


def test_a_mosaic_does_not_depend_on_the_other_splits_counts(tmp_path):
    generate_dataset(small(train=1, val=1, test=0), tmp_path / "a")
    generate_dataset(small(train=3, val=1, test=0), tmp_path / "b")
    assert (tmp_path / "a/images/val_000.tif").read_bytes() == (tmp_path / "b/images/val_000.tif").read_bytes()


# ---------------------------------------------------------------- written layout


@pytest.mark.parametrize("crs, gsd", [("EPSG:2154", 0.5), ("EPSG:32631", 0.2)])
def test_written_tiles_layout(tmp_path, crs, gsd):
    config = small(size=512, crs=crs, gsd=gsd, origin=(500000.0, 5400000.0))  # 512: two blocks across
    summary = generate_dataset(config, tmp_path / "ds")
    root = tmp_path / "ds"

    meta = json.loads((root / "classes.json").read_text())
    assert meta["bands"] == [1, 2, 3] and meta["scale"] == 255
    table = ClassTable.from_dict(meta)
    assert table.names == synthetic_classes().names
    assert table.names[PARK] == "park" and table.names[MEADOW] == "meadow"

    splits = {s: (root / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert splits == {"train": ["train_000", "train_001"], "val": ["val_000"], "test": ["test_000"]}
    assert summary.names == splits

    bounds = []
    pixels = np.zeros(len(table), np.int64)
    for split, names in splits.items():
        for i, name in enumerate(names):
            expected_transform = mosaic_transform(config, split, i)
            assert (expected_transform.a, expected_transform.e) == (gsd, -gsd)
            img_path, lab_path = root / "images" / f"{name}.tif", root / "labels" / f"{name}.tif"
            with rasterio.open(img_path) as img, rasterio.open(lab_path) as lab:
                for src, count in ((img, 3), (lab, 1)):
                    assert src.crs == rasterio.crs.CRS.from_user_input(crs)
                    assert src.transform == expected_transform
                    assert (src.width, src.height, src.count) == (512, 512, count)
                    assert set(src.dtypes) == {"uint8"}
                    assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
                    assert src.compression.name.lower() == "deflate"
                assert img.nodata is None and lab.nodata == 255
                assert lab.colormap(1)[PARK][:3] == table.classes[PARK].color
                assert json.loads(lab.tags()["CLASS_NAMES"]) == table.names
                image, labels = img.read(), lab.read(1)
                bounds.append(img.bounds)
            # the files hold exactly the generated scene
            ref_image, ref_labels = generate_scene(config, scene_rng(config, split, i))
            assert np.array_equal(image, ref_image) and np.array_equal(labels, ref_labels)
            assert labels.max() < len(table)
            pixels += np.bincount(labels.ravel(), minlength=len(table))
    assert summary.class_pixels == pixels.tolist()
    assert sum(summary.class_frequencies) == pytest.approx(1.0)
    # footprints of different mosaics never overlap
    for i, a in enumerate(bounds):
        for b in bounds[i + 1 :]:
            assert a.right <= b.left or b.right <= a.left or a.top <= b.bottom or b.top <= a.bottom


def test_refuses_a_non_empty_folder_and_overwrite_replaces_only_the_layout(tmp_path):
    root = tmp_path / "ds"
    generate_dataset(small(seed=1, train=2), root)
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="--overwrite"):
        generate_dataset(small(seed=2, train=1), root)
    generate_dataset(small(seed=2, train=1), root, overwrite=True)
    assert (root / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (root / "images").iterdir()) == ["test_000.tif", "train_000.tif", "val_000.tif"]
    assert (root / "splits/train.txt").read_text() == "train_000\n"


def test_an_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write_labels(*args, **kwargs)

    write_labels = dataset_module.write_labels
    monkeypatch.setattr(dataset_module, "write_labels", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(small(), tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []  # neither the data set nor its staging folder


def test_sample_mosaic_is_the_first_test_mosaic(tmp_path):
    config = small(seed=3)
    path = write_sample_mosaic(tmp_path / "sample.tif", config, labels_path=tmp_path / "sample_labels.tif")
    image, labels = generate_scene(config, scene_rng(config, "test", 0))
    with rasterio.open(path) as src:
        assert np.array_equal(src.read(), image) and src.crs.to_epsg() == 2154
    with rasterio.open(tmp_path / "sample_labels.tif") as src:
        assert np.array_equal(src.read(1), labels)
    with pytest.raises(OutputError, match="exists"):
        write_sample_mosaic(path, config)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(size=100), "--size"),
        (dict(train=-1), "--train"),
        (dict(gsd=0), "--gsd"),
        (dict(crs="EPSG:4326"), "not projected"),
        (dict(crs="EPSG:99999999"), "--crs"),
        (dict(parcel_min=100, parcel_max=150), "parcel"),
        (dict(park_share=1.5), "park_share"),
    ],
)
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        SyntheticConfig(**kw)


# ---------------------------------------------------------------- the rule


def _components_bfs(grass: np.ndarray) -> list[np.ndarray]:
    """4-connected components by breadth-first flood fill: list of (n, 2) pixel arrays."""
    h, w = grass.shape
    seen = np.zeros_like(grass)
    out = []
    for r0, c0 in zip(*np.nonzero(grass)):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        queue, pixels = deque([(r0, c0)]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < h and 0 <= cc < w and grass[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        out.append(np.array(pixels))
    return out


def _reference_is_park(labels: np.ndarray, distance: int, min_fraction: float) -> np.ndarray:
    """(H, W) bool: grass pixels whose patch is a park, computed independently of the library."""
    grass = (labels == PARK) | (labels == MEADOW)
    building = torch.from_numpy(labels == BUILDING)
    out = np.zeros_like(grass)
    for pixels in _components_bfs(grass):
        patch = torch.zeros(labels.shape)
        patch[pixels[:, 0], pixels[:, 1]] = 1
        # Chebyshev dilation = max-pool over rows, then over columns (padding acts as -inf)
        grown = F.max_pool2d(patch[None, None], (2 * distance + 1, 1), stride=1, padding=(distance, 0))
        grown = F.max_pool2d(grown, (1, 2 * distance + 1), stride=1, padding=(0, distance))[0, 0]
        ring = (grown > 0) & (patch == 0)
        fraction = (ring & building).sum().item() / max(ring.sum().item(), 1)
        out[pixels[:, 0], pixels[:, 1]] = fraction >= min_fraction
    return out


def test_grass_labels_follow_the_rule_exactly(scenes):
    config = SyntheticConfig(size=768)
    for seed, (_, labels) in scenes.items():
        grass = (labels == PARK) | (labels == MEADOW)
        assert (labels == PARK).sum() > 10_000 and (labels == MEADOW).sum() > 10_000, seed
        reference = _reference_is_park(labels, config.rule_distance, config.rule_min_building_fraction)
        assert np.array_equal(labels[grass] == PARK, reference[grass]), seed


def test_rule_on_a_hand_made_map():
    labels = np.full((40, 40), PAVED, np.uint8)
    labels[15:25, 15:25] = MEADOW  # a 10 x 10 patch; with D = 3 its ring is 16 x 16 - 10 x 10 = 156 px
    labels[19:21, 19:21] = WATER  # a pond: 4 hole pixels join the ring -> 160 px
    labels[12, 12:28] = BUILDING  # 16 px on the ring's outer row: 16 / 160 = 0.1
    labels[11, :] = BUILDING  # distance 4: outside the ring, never counted
    named, fractions = name_grass(labels, distance=3, min_building_fraction=0.1)
    assert fractions[1] == pytest.approx(16 / 160)
    assert (named[15:25, 15:25][labels[15:25, 15:25] == MEADOW] == PARK).all()
    labels[12, 12] = ROAD  # 15 / 160 < 0.1
    named, fractions = name_grass(labels, distance=3, min_building_fraction=0.1)
    assert fractions[1] == pytest.approx(15 / 160)
    assert (named[labels == MEADOW] == MEADOW).all()
    # park or meadow on input makes no difference: only "grass" is read
    flipped = np.where(labels == MEADOW, PARK, labels).astype(np.uint8)
    assert np.array_equal(name_grass(flipped, 3, 0.1)[0], named)


def test_two_patches_are_named_separately():
    labels = np.full((30, 60), ROAD, np.uint8)
    labels[10:20, 5:15] = PARK
    labels[10:20, 40:50] = PARK
    labels[5:25, 20:24] = BUILDING  # 6 px east of the first patch: 20 / 362 of its ring
    named, _ = name_grass(labels, distance=6, min_building_fraction=0.05)
    assert (named[10:20, 5:15] == PARK).all() and (named[10:20, 40:50] == MEADOW).all()


def test_grass_pixels_do_not_depend_on_the_name(scenes):
    """Changing only the rule's threshold renames every patch and leaves every pixel value alone."""
    seed = BOTH_SEEDS[0]
    image, labels = scenes[seed]
    all_parks = generate_scene(SyntheticConfig(size=768, rule_min_building_fraction=0.0), np.random.default_rng(seed))
    all_meadows = generate_scene(SyntheticConfig(size=768, rule_min_building_fraction=1.0), np.random.default_rng(seed))
    grass = (labels == PARK) | (labels == MEADOW)
    for other_image, other_labels, name in (*all_parks, PARK), (*all_meadows, MEADOW):
        assert np.array_equal(other_image, image)
        assert (other_labels[grass] == name).all()
        assert np.array_equal(other_labels[~grass], labels[~grass])


def _interior(mask: np.ndarray, steps: int) -> np.ndarray:
    """Pixels ``steps`` px away from anything else."""
    out = mask.copy()
    for _ in range(steps):
        out[1:-1, 1:-1] &= out[:-2, 1:-1] & out[2:, 1:-1] & out[1:-1, :-2] & out[1:-1, 2:]
        out[[0, -1]] = False
        out[:, [0, -1]] = False
    return out


def _high_pass(x: np.ndarray, k: int = 2) -> np.ndarray:
    """(C, H, W) minus its (2k+1)^2 box mean: the fine texture, free of slow colour changes."""
    n = 2 * k + 1
    c = np.pad(np.pad(x, ((0, 0), (k, k), (k, k)), mode="edge").cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    return x - (c[:, n:, n:] - c[:, :-n, n:] - c[:, n:, :-n] + c[:, :-n, :-n]) / n**2


def test_park_and_meadow_look_alike_while_hr_classes_look_different(scenes):
    for seed, (image, labels) in scenes.items():
        x = image.astype(np.float32)
        fine = _high_pass(x)
        feats = {}
        for k in (*HR_CLASSES, *CONTEXT_CLASSES):
            m = _interior(labels == k, 3)  # past the 5 x 5 box and the 1 px lens blur
            if m.sum() > 500:
                feats[k] = np.r_[x[:, m].mean(1), fine[:, m].std(1)]  # colour, texture strength
        park, meadow = feats[PARK], feats[MEADOW]
        # one texture process: the fine texture matches to half a grey level
        assert np.abs(park[3:] - meadow[3:]).max() < 0.5, seed
        # the mean colours differ only by the slow, label-blind variation (dry patches, light falloff),
        # far less than any HR class differs from another or from grass
        same = np.linalg.norm(park - meadow)
        hr = [k for k in HR_CLASSES if k in feats]
        assert len(hr) >= 5, seed
        gaps = [np.linalg.norm(feats[a] - feats[b]) for i, a in enumerate(hr) for b in (*hr[i + 1 :], PARK, MEADOW)]
        assert min(gaps) > 3 * same, (seed, min(gaps), same)


# ---------------------------------------------------------------- command line


def test_cli_synth_writes_a_data_set_and_refuses_to_overwrite(tmp_path, capsys):
    from caswit_geo.cli import main

    out = tmp_path / "synth"
    args = ["synth", str(out), "--size", "256", "--train", "1", "--val", "0", "--test", "1", "--seed", "4"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    assert (out / "splits/val.txt").read_text() == ""
    assert (out / "splits/test.txt").read_text() == "test_000\n"
    config = SyntheticConfig(seed=4, size=256, train=1, val=0, test=1)
    with rasterio.open(out / "images/train_000.tif") as src:
        assert np.array_equal(src.read(), generate_scene(config, scene_rng(config, "train", 0))[0])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    assert "--overwrite" in capsys.readouterr().err
