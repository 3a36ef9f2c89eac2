"""A miniature FLAIR-HUB tree of the real TOY patches, laid out as IGN publishes it.

Every patch of IGN's TOY split files (``tests/assets/flairhub``) gets its
``AERIAL_RGBI`` and ``AERIAL_LABEL-COSIA`` GeoTIFF at the path its CSV row
names (the other modalities the CSVs list are not written), 32 x 32 px at
0.2 m in Lambert-93. The split files are copied unchanged into a folder
beside the modality folders, so that their ``../`` paths resolve.

Placement (this fixture's own, the code under test never reads it): each
ROI gets its own square far from the others; patch ``<A>-<B>`` of an ROI
sits A patches east and B patches south of the ROI's corner, on the patch
grid, so that neighbours are found from the transforms.
"""

from __future__ import annotations

import csv
import functools
import shutil
from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

from tests.helpers import GSD, LAMBERT93, write_geotiff

DATA = Path(__file__).resolve().parents[1] / "assets" / "flairhub"
SPLIT_FILES = {"TRAIN": DATA / "FLAIR-HUB_TOY-DATASET_TRAIN.csv", "VALID": DATA / "FLAIR-HUB_TOY-DATASET_VALID.csv"}
P = 32  # patch size (px), of GSD m pixels


def split_rows(split: str) -> list[dict]:
    """The rows of IGN's TRAIN or VALID file, as dicts."""
    with SPLIT_FILES[split].open(newline="") as f:
        return list(csv.DictReader(f))


def split_ids(split: str) -> list[str]:
    return [row["patch_id"] for row in split_rows(split)]


@functools.lru_cache(maxsize=1)
def _rois() -> list[tuple[str, str]]:
    rois = set()
    for split in SPLIT_FILES:
        for pid in split_ids(split):
            zone, roi, _ = pid.split("_")
            rois.add((zone, roi))
    return sorted(rois)


def patch_transform(patch_id: str):
    """Upper-left corner of a patch: its ROI's square, then <A> east and <B> south."""
    zone, roi, cell = patch_id.split("_")
    a, b = (int(v) for v in cell.split("-"))
    n = _rois().index((zone, roi))
    x0, y0 = 600_000.0 + (n % 12) * 1000.0, 6_800_000.0 - (n // 12) * 1000.0
    return from_origin(x0 + a * P * GSD, y0 - b * P * GSD, GSD, GSD)


def make_toy_tree(
    root: Path, *, csv_folder: str | None = "FLAIR-HUB_TOY-DATASET_SPLITS", skip: tuple[str, ...] = (),
    only: set[str] | None = None, seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the tree under ``root``; return {patch id: (image (4, P, P), labels (P, P))}.

    ``skip``: patches left out (their CSV rows stay); ``only``: write just these.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split in SPLIT_FILES:
        for row in split_rows(split):
            pid = row["patch_id"]
            image = rng.integers(1, 256, (4, P, P), dtype=np.uint8)
            labels = np.kron(rng.integers(0, 19, (P // 8, P // 8)), np.ones((8, 8), int)).astype(np.uint8)
            if pid in skip or (only is not None and pid not in only):
                continue
            transform = patch_transform(pid)
            write_geotiff(root / row["AERIAL_RGBI"].removeprefix("../"), image, transform=transform, crs=LAMBERT93)
            write_geotiff(root / row["AERIAL_LABEL-COSIA"].removeprefix("../"), labels[None], transform=transform,
                          crs=LAMBERT93)
            written[pid] = (image, labels)
    if csv_folder is not None:
        (root / csv_folder).mkdir(parents=True, exist_ok=True)
        for path in SPLIT_FILES.values():
            shutil.copyfile(path, root / csv_folder / path.name)
    return written
