"""Split-file entries stay inside the data root (resolved lexically; symlinked folders are fine)."""

import os

import pytest

from caswit_geo.core.errors import DatasetError
from caswit_geo.data.flairhub_splits import read_id_list
from caswit_geo.data.paths import resolve_entry


@pytest.mark.parametrize(
    "entry, base, inside",
    [
        ("a", "images", "images/a"),
        ("sub/a", "images", "images/sub/a"),
        ("../labels/a", "images", "labels/a"),  # up and back in: still in the root
        ("./a", "images", "images/a"),
        ("..\\labels\\a", "images", "labels/a"),  # Windows separators
        ("../D006-2020_AERIAL_RGBI/ROI/x.tif", "lists", "D006-2020_AERIAL_RGBI/ROI/x.tif"),  # FLAIR-HUB's CSVs
        ("{root}/images/a", "images", "images/a"),  # absolute, inside the root
        ("../..", "images", None),
        ("../../x", "images", None),
        ("../../../etc/passwd", "lists", None),
        ("/etc/passwd", "images", None),
        ("images/../../root-sibling/x", ".", None),
        ("", "images", None),
    ],
)
def test_entries_resolve_inside_the_root_or_are_refused(tmp_path, entry, base, inside):
    root = tmp_path / "root"
    entry = entry.format(root=root)
    if inside is None:
        with pytest.raises(DatasetError, match=r"train.txt, line 3: .*entry"):
            resolve_entry(entry, root / base, root, root / "splits" / "train.txt", 3)
    else:
        assert resolve_entry(entry, root / base, root, "train.txt", 3) == root / inside


def test_a_symlinked_images_folder_is_followed_but_dot_dot_is_not(tmp_path):
    elsewhere = tmp_path / "big-disk"
    elsewhere.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(elsewhere, root / "images")
    assert resolve_entry("a", root / "images", root, "s.txt") == root / "images" / "a"
    # lexically images/../.. leaves the root, whatever the link points to
    with pytest.raises(DatasetError, match="outside the data root"):
        resolve_entry("../../big-disk/a", root / "images", root, "s.txt")


def test_flairhub_lists_check_path_entries_against_the_root(tmp_path):
    root = tmp_path / "flair"
    (root / "lists").mkdir(parents=True)
    good = root / "lists" / "ok.csv"
    good.write_text("patch_id\n../D012-2019_AERIAL_RGBI/AF-S1-27/D012-2019_AERIAL_RGBI_AF-S1-27_5-10.tif\nD012-2019_AF-S1-27_0-0\n")
    assert read_id_list(good, root) == ["D012-2019_AF-S1-27_5-10", "D012-2019_AF-S1-27_0-0"]
    bad = root / "lists" / "bad.csv"
    bad.write_text("patch_id\n../../D012-2019_AERIAL_RGBI_AF-S1-27_5-10.tif\n")
    with pytest.raises(DatasetError, match=r"bad.csv, line 2: entry .* points outside the data root"):
        read_id_list(bad, root)
    outside = tmp_path / "my-list.csv"  # a list kept elsewhere: paths are relative to the root
    outside.write_text("D012-2019_AERIAL_RGBI/AF-S1-27/D012-2019_AERIAL_RGBI_AF-S1-27_5-10.tif\n")
    assert read_id_list(outside, root) == ["D012-2019_AF-S1-27_5-10"]
