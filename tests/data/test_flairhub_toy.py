"""FLAIR-HUB as IGN publishes it: the real TOY patch ids, folders, file names and split CSVs."""

import json
import shutil

import numpy as np
import pytest
import rasterio

import caswit_geo
from caswit_geo.core.errors import DatasetError
from caswit_geo.core.spec import InputSpec, flairhub_classes
from caswit_geo.data import build_dataset
from caswit_geo.data.flairhub_csv import find_split_csv, read_split_csv
from tests.data.flairhub_toy import SPLIT_FILES, P, make_toy_tree, patch_transform, split_ids, split_rows
from tests.helpers import LAMBERT93, cli_exit_code, write_geotiff

SPLITS = "FLAIR-HUB_TOY-DATASET_SPLITS"
MISSING = ("D006-2020_FU-S2-12_3-10", "D032-2019_AF-S1-V10_21-11", "D051-2019_UN-S1-3_4-14")  # VALID rows 1, 11, 50


def spec():
    return InputSpec(tile_size=P)


def ids_of(ds):
    return sorted(ds.patch(i).patch_id for i in range(len(ds)))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "FLAIR-HUB_TOY"
    return root, make_toy_tree(root)


@pytest.fixture(scope="module")
def toy_missing(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy-missing")
    make_toy_tree(root, skip=MISSING)
    return root


def test_fixture_is_what_ign_publishes(toy):
    root, written = toy
    # the split files are copied unchanged, and their ../ paths point at the files written
    for path in SPLIT_FILES.values():
        assert (root / SPLITS / path.name).read_bytes() == path.read_bytes()
    assert len(written) == 200 and len(split_ids("TRAIN")) == 150 and len(split_ids("VALID")) == 50
    row = split_rows("VALID")[0]
    assert row["AERIAL_RGBI"].startswith("../D006-2020_AERIAL_RGBI/")
    assert (root / SPLITS / row["AERIAL_RGBI"]).resolve().is_file()
    assert not (root / SPLITS / row["SPOT_RGBI"]).exists()  # other modalities are not needed


@pytest.mark.parametrize("split, official", [("train", "TRAIN"), ("val", "VALID"), ("valid", "VALID"),
                                            ("VALID", "VALID"), ("Validation", "VALID")])
def test_official_split_found_from_the_root(toy, split, official):
    root, _ = toy
    ds = build_dataset("flairhub", root, split, spec())
    assert ids_of(ds) == sorted(split_ids(official))
    assert ds.coverage.source == str(root / SPLITS / SPLIT_FILES[official].name)
    assert (ds.coverage.requested, ds.coverage.used) == (len(split_ids(official)), len(split_ids(official)))
    # the neighbours come from every patch of the tree, whatever its split
    assert len(ds.index) == 200


def test_split_csv_as_a_path_inside_or_outside_the_root(toy, tmp_path):
    root, _ = toy
    inside = root / SPLITS / SPLIT_FILES["VALID"].name
    assert ids_of(build_dataset("flairhub", root, inside, spec())) == sorted(split_ids("VALID"))
    # kept elsewhere, its ../ paths point nowhere: the root's own tree is used
    outside = tmp_path / "lists" / SPLIT_FILES["VALID"].name
    outside.parent.mkdir()
    shutil.copyfile(SPLIT_FILES["VALID"], outside)
    ds = build_dataset("flairhub", root, outside, spec())
    assert ids_of(ds) == sorted(split_ids("VALID")) and ds.tree == root.resolve()


def test_the_root_may_hold_the_data_folder(toy):
    root, _ = toy
    ds = build_dataset("flairhub", root.parent, "val", spec())  # the CSVs are found two levels down
    assert ids_of(ds) == sorted(split_ids("VALID")) and ds.tree == root.resolve()


def test_no_split_file(toy):
    root, _ = toy
    with pytest.raises(DatasetError, match=r"no split file for 'test': no \*_TEST.csv in or under the root"):
        build_dataset("flairhub", root, "test", spec())


def test_find_split_csv_any_prefix_any_case_bounded_depth(tmp_path):
    (tmp_path / "a" / "b" / "c" / "d").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "my_valid.CSV").write_text("patch_id\n")
    (tmp_path / "a" / "b" / "c" / "d" / "deep_TEST.csv").write_text("patch_id\n")  # 4 levels down: not searched
    (tmp_path / "D006-2020_AERIAL_RGBI").mkdir()
    (tmp_path / "D006-2020_AERIAL_RGBI" / "X_TRAIN.csv").write_text("patch_id\n")  # modality folders: not searched
    assert find_split_csv(tmp_path, "VAL") == tmp_path / "a" / "b" / "c" / "my_valid.CSV"
    assert find_split_csv(tmp_path, "test") is None and find_split_csv(tmp_path, "train") is None
    (tmp_path / "other_VALID.csv").write_text("patch_id\n")
    with pytest.raises(DatasetError, match="2 split files end in _VALID.csv .*; give one as --split"):
        find_split_csv(tmp_path, "valid")


@pytest.mark.parametrize("path", ["../../../etc/D006-2020_AERIAL_RGBI/R/x.tif", "/etc/passwd",
                                  "../D006-2020_AERIAL_RGBI/../../../x.tif", "C:/data/x.tif"])
def test_split_csv_paths_are_untrusted(tmp_path, path):
    root = tmp_path
    rows = SPLIT_FILES["VALID"].read_text().splitlines()
    fields = rows[3].split(",")
    header = rows[0].split(",")
    fields[header.index("AERIAL_RGBI")] = path
    bad = root / SPLITS / "BAD_VALID.csv"
    bad.parent.mkdir()
    bad.write_text("\n".join([rows[0], rows[1], ",".join(fields)]) + "\n")
    with pytest.raises(DatasetError, match=f"BAD_VALID.csv line 3: path '{path}' (leaves the data root|must be relative)"):
        read_split_csv(bad, root)


def test_a_missing_patch_fails_unless_allowed(toy_missing):
    with pytest.raises(DatasetError, match=r"VALID.csv: 3 of the 50 patches it lists are not in .* "
                                           r"\(no image or no label file: D006-2020_FU-S2-12_3-10, D032-2019_AF-S1-V10_21-11, D051-2019_UN-S1-3_4-14\); "
                                           "use --allow-missing to run on the 47 others"):
        build_dataset("flairhub", toy_missing, "val", spec())
    with pytest.warns(UserWarning, match="3 of the 50 patches"):
        ds = build_dataset("flairhub", toy_missing, "val", spec(), allow_missing=True)
    assert ids_of(ds) == sorted(set(split_ids("VALID")) - set(MISSING))
    assert (ds.coverage.requested, ds.coverage.used, ds.coverage.missing) == (50, 47, MISSING)
    # training needs labels: a missing label file is a missing patch too
    assert len(build_dataset("flairhub", toy_missing, "train", spec())) == 150


def test_a_missing_label_is_a_missing_patch(tmp_path):
    only = {"D051-2019_FF-S1-8_3-6", "D051-2019_FF-S1-8_4-6"}
    make_toy_tree(tmp_path, only=only)
    (tmp_path / "D051-2019_AERIAL_LABEL-COSIA" / "FF-S1-8" / "D051-2019_AERIAL_LABEL-COSIA_FF-S1-8_4-6.tif").unlink()
    with pytest.raises(DatasetError, match=r"149 of the 150 patches it lists are not in .* \(no image or no label file:"):
        build_dataset("flairhub", tmp_path, "train", spec(), allow_missing=False)
    with pytest.warns(UserWarning):
        ds = build_dataset("flairhub", tmp_path, "train", spec(), allow_missing=True)
    assert ids_of(ds) == ["D051-2019_FF-S1-8_3-6"] and (ds.coverage.requested, ds.coverage.used) == (150, 1)
    # unlabelled use (pretraining) needs only the imagery
    with pytest.warns(UserWarning, match="148 of the 150 patches .* \\(no image file:"):
        assert len(build_dataset("flairhub", tmp_path, "train", spec(), labels=False, allow_missing=True)) == 2


def lr_west(label):
    """LR labels (k = 2) of the west neighbour's strip, computed by hand.

    The context window starts P/2 px west and north of the patch; LR pixel
    (i, j) takes the context pixel (2i + 1, 2j + 1). The west neighbour covers
    context columns 0..P/2-1, i.e. LR columns 0..P/4-1, and context rows
    P/2..3P/2-1, i.e. LR rows P/4..3P/4-1; LR row i, column j read its
    pixel (2i + 1 - P/2, 2j + 1 + P/2).
    """
    rows = np.arange(P // 4, 3 * P // 4)
    cols = np.arange(0, P // 4)
    return label[np.ix_(2 * rows + 1 - P // 2, 2 * cols + 1 + P // 2)]


def test_lr_labels_at_padding_and_other_split_neighbours(toy):
    root, written = toy
    west = (slice(P // 4, 3 * P // 4), slice(0, P // 4))
    # D051-2019_FF-S1-8_4-6 (TRAIN): its west neighbour 3-6 is TRAIN too, its other 7 are missing
    ds = build_dataset("flairhub", root, "train", spec())
    hr, lr, label, lr_label, _ = ds.read(ds.image_ids().index("D051-2019_FF-S1-8_4-6"))
    np.testing.assert_array_equal(lr_label[west], lr_west(written["D051-2019_FF-S1-8_3-6"][1]))
    padding = np.ones((P, P), bool)
    padding[P // 4 : 3 * P // 4, 0 : 3 * P // 4] = False  # the west neighbour and the patch itself
    assert (lr[:, padding] == 0).all() and (lr_label[padding] == 255).all()
    assert (lr[:, ~padding] > 0).all() and (lr_label[~padding] != 255).all()

    # D051-2019_AU-S1-12_9-10 (TRAIN): its west neighbour 8-10 is VALID: imagery yes, labels never
    hr, lr, label, lr_label, _ = ds.read(ds.image_ids().index("D051-2019_AU-S1-12_9-10"))
    assert (lr[(slice(None), *west)] > 0).all()
    assert (lr_label[west] == 255).all() and (lr_label[padding] == 255).all()
    np.testing.assert_array_equal(label, written["D051-2019_AU-S1-12_9-10"][1])
    # and the other way round: the VALID patch never sees the TRAIN labels east of it
    val = build_dataset("flairhub", root, "VALID", spec())
    *_, lr_label, _ = val.read(val.image_ids().index("D051-2019_AU-S1-12_8-10"))
    assert (lr_label[P // 4 : 3 * P // 4, 3 * P // 4 :] == 255).all()
    # with both in the selection, the neighbour's labels do enter
    both = build_dataset("flairhub", root, "all", spec())
    *_, lr_label, _ = both.read(both.image_ids().index("D051-2019_AU-S1-12_9-10"))
    np.testing.assert_array_equal(lr_label[west], lr_west(written["D051-2019_AU-S1-12_8-10"][1]))


def test_lr_labels_255_where_the_image_is_nodata(tmp_path):
    only = {"D051-2019_FF-S1-8_3-6", "D051-2019_FF-S1-8_4-6"}
    written = make_toy_tree(tmp_path, only=only)
    # the west neighbour gets a nodata value and a nodata block in its east half
    image = written["D051-2019_FF-S1-8_3-6"][0].copy()
    image[:, :, P // 2 :] = 0
    write_geotiff(tmp_path / "D051-2019_AERIAL_RGBI" / "FF-S1-8" / "D051-2019_AERIAL_RGBI_FF-S1-8_3-6.tif", image,
                  transform=patch_transform("D051-2019_FF-S1-8_3-6"), crs=LAMBERT93, nodata=0)
    with pytest.warns(UserWarning, match="148 of the 150 patches"):
        ds = build_dataset("flairhub", tmp_path, "train", spec(), allow_missing=True)
    *_, lr, label, lr_label, _ = ds.read(ds.image_ids().index("D051-2019_FF-S1-8_4-6"))
    # the west strip of the context (its east half) is nodata: black, labels 255
    assert (lr[:, P // 4 : 3 * P // 4, : P // 4] == 0).all()
    assert (lr_label[P // 4 : 3 * P // 4, : P // 4] == 255).all()
    np.testing.assert_array_equal(label, written["D051-2019_FF-S1-8_4-6"][1])
    # a patch's own labels stay as they are (the official metric scores every labelled pixel),
    # its LR labels are 255 over its nodata half: LR columns P/4 + (P/2)/2 .. 3P/4 - 1
    hr, lr, label, lr_label, _ = ds.read(ds.image_ids().index("D051-2019_FF-S1-8_3-6"))
    np.testing.assert_array_equal(label, written["D051-2019_FF-S1-8_3-6"][1])
    assert (hr[:, :, P // 2 :] == 0).all()
    assert (lr_label[P // 4 : 3 * P // 4, P // 2 : 3 * P // 4] == 255).all()
    assert (lr_label[P // 4 : 3 * P // 4, P // 4 : P // 2] != 255).all()


# IGN's QGIS style flair-hub-qgis-style-cosia-num.qml: id, name, colour
OFFICIAL_COSIA = [
    (0, "building", "#ce7079"), (1, "greenhouse", "#b9e2d4"), (2, "swimming pool", "#62d0ff"),
    (3, "impervious surface", "#a6aab7"), (4, "pervious surface", "#987752"), (5, "bare soil", "#bbb096"),
    (6, "water", "#3375a1"), (7, "snow", "#e9effe"), (8, "herbaceous vegetation", "#8cd76a"),
    (9, "agricultural land", "#decf55"), (10, "plowed land", "#d0a349"), (11, "vineyard", "#b08290"),
    (12, "deciduous", "#4c9129"), (13, "coniferous", "#126421"), (14, "brushwood", "#b5c335"),
    (15, "clear cut", "#e48e4d"), (16, "ligneous", "#222222"), (17, "mixed", "#222222"), (18, "other", "#222222"),
]


def test_class_table_is_the_official_style():
    table = flairhub_classes()
    got = [(c.id, c.name, "#{:02x}{:02x}{:02x}".format(*c.color)) for c in table.classes]
    assert got == OFFICIAL_COSIA
    assert table.weights == [1.0] * 15 + [0.0] * 4


def test_train_and_eval_from_the_root_alone(toy, toy_missing, tmp_path, capsys):
    root, _ = toy
    run = tmp_path / "run"
    assert cli_exit_code("train", "--dataset", "flairhub", "--root", root, "--model", "caswit-nano", "--tile-size", P,
                         "--epochs", 1, "--batch-size", 50, "--workers", 0, "--out", run, "--no-progress") == 0
    out = capsys.readouterr().out
    assert "data: train 150 of 150 requested" in out and "val 50 of 50 requested" in out
    model, meta = caswit_geo.load_checkpoint(run / "best.safetensors")
    assert meta.classes.names[18] == "other" and meta.classes.classes[0].color == (0xCE, 0x70, 0x79)
    splits = meta.metadata["training"]["splits"]
    assert splits["val"]["source"].endswith("FLAIR-HUB_TOY-DATASET_VALID.csv") and splits["val"]["used"] == 50

    ev = tmp_path / "ev"
    assert cli_exit_code("eval", "--dataset", "flairhub", "--root", root, "--weights", run / "best.safetensors",
                         "--split", "VALID", "--workers", 0, "--out-dir", ev, "--no-progress") == 0
    report = json.loads((ev / "report.json").read_text())
    assert report["protocol"] == "flairhub" and report["samples"] == 50 and len(report["classes"]) == 15
    assert report["split_coverage"]["requested"] == report["split_coverage"]["evaluated"] == 50

    # a split listing patches that are not on disk: an error, or scored with a record
    assert cli_exit_code("eval", "--dataset", "flairhub", "--root", toy_missing, "--weights", run / "best.safetensors",
                         "--split", "val", "--workers", 0, "--out-dir", tmp_path / "ev2", "--no-progress") == 1
    assert "3 of the 50 patches" in capsys.readouterr().err and not (tmp_path / "ev2").exists()
    assert cli_exit_code("eval", "--dataset", "flairhub", "--root", toy_missing, "--weights", run / "best.safetensors",
                         "--split", "val", "--allow-missing", "--workers", 0, "--out-dir", tmp_path / "ev3",
                         "--no-progress") == 0
    cov = json.loads((tmp_path / "ev3" / "report.json").read_text())["split_coverage"]
    assert (cov["requested"], cov["evaluated"], cov["missing"]) == (50, 47, 3)
    assert cov["missing_ids"] == list(MISSING)
    with rasterio.open(next((root / "D006-2020_AERIAL_RGBI").rglob("*.tif"))) as src:
        assert src.crs.to_epsg() == 2154 and src.res == (0.2, 0.2)
