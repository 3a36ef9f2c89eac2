"""Write synthetic mosaics as a ``tiles`` data set (or one standalone sample).

Layout written under ``root``::

    classes.json              classes (id, name, colour), bands [1, 2, 3], scale 255
    images/<name>.tif         RGB uint8 GeoTIFF, 256 px tiles, DEFLATE + predictor 2
    labels/<name>.tif         same grid, uint8 class ids, nodata 255, palette, class names
    splits/{train,val,test}.txt   one image name (file stem) per line
    synthetic.json            the generator settings and class pixel counts (provenance)

Names are ``<split>_<index:03d>``. Every mosaic has its own footprint: the
first at ``config.origin``, the next ones on a grid of whole kilometres, so
none overlap. Every entry is written under a hidden temporary name and
they are renamed into place together at the end: an interrupted run leaves
``root`` as it was.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine
from tqdm import tqdm

from caswit_geo.core.errors import OutputError
from caswit_geo.geo.profiles import synthetic_profile
from caswit_geo.safeio.outputs import OutputSet
from caswit_geo.synthetic.classes import CONTEXT_CLASSES, synthetic_classes
from caswit_geo.synthetic.rule import __doc__ as RULE_TEXT
from caswit_geo.synthetic.scene import generate_scene, scene_rng
from caswit_geo.synthetic.settings import SPLITS, SyntheticConfig

LAYOUT_ENTRIES = ("classes.json", "images", "labels", "splits", "synthetic.json")
BLOCK = 256


@dataclass
class DatasetSummary:
    """What :func:`generate_dataset` wrote."""

    root: Path
    names: dict[str, list[str]]  # split -> image names
    class_names: list[str]
    class_pixels: list[int]  # per class id, all splits together
    seconds: float
    split_class_pixels: dict[str, list[int]] = field(default_factory=dict)

    @property
    def class_frequencies(self) -> list[float]:
        total = max(sum(self.class_pixels), 1)
        return [n / total for n in self.class_pixels]


def mosaic_transform(config: SyntheticConfig, split: str, index: int) -> Affine:
    """North-up transform of mosaic ``index`` of ``split``: a row of mosaics per split."""
    pitch = 1000.0 * np.ceil((config.size * config.gsd + 1000.0) / 1000.0)  # m, whole km
    x0 = config.origin[0] + index * pitch
    y0 = config.origin[1] - SPLITS.index(split) * pitch
    return Affine(config.gsd, 0.0, x0, 0.0, -config.gsd, y0)


def _profile(config: SyntheticConfig, transform: Affine, count: int) -> dict:
    return synthetic_profile(config.size, config.projected_crs(), transform, count,
                             block=min(BLOCK, config.size // 16 * 16))


def write_image(path: Path, image: np.ndarray, config: SyntheticConfig, transform: Affine) -> None:
    """(3, H, W) uint8 -> RGB GeoTIFF."""
    profile = _profile(config, transform, 3)
    with rasterio.open(path, "w", **profile, predictor=2, photometric="RGB", interleave="pixel") as dst:
        dst.write(image)
        for band, name in enumerate(("red", "green", "blue"), start=1):
            dst.set_band_description(band, name)


def write_labels(path: Path, labels: np.ndarray, config: SyntheticConfig, transform: Affine) -> None:
    """(H, W) uint8 class ids -> single-band GeoTIFF with palette and class names."""
    table = synthetic_classes()
    with rasterio.open(path, "w", **_profile(config, transform, 1), nodata=255) as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, table.colormap())
        dst.set_band_description(1, "class")
        dst.update_tags(CLASS_NAMES=json.dumps(table.names))


def classes_json() -> str:
    """``classes.json`` text, one class per line; no ``weights``: every class is trained."""
    lines = [json.dumps(c) for c in synthetic_classes().to_dict()["classes"]]
    body = ",\n    ".join(lines)
    return f'{{\n  "classes": [\n    {body}\n  ],\n  "bands": [1, 2, 3],\n  "scale": 255\n}}\n'


def _check_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise OutputError(f"{root}: exists and is not a folder")
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise OutputError(f"{root}: folder exists and is not empty (use --overwrite to replace the data set in it)")


def generate_dataset(
    config: SyntheticConfig,
    root: str | Path,
    overwrite: bool = False,
    progress: bool = False,
) -> DatasetSummary:
    """Generate ``config.train/val/test`` mosaics under ``root`` in the ``tiles`` layout.

    Raises OutputError if ``root`` holds anything and ``overwrite`` is False;
    with ``overwrite`` only the layout's own entries are replaced. The
    entries are written under temporary names and appear together at the
    end (:class:`~caswit_geo.safeio.outputs.OutputSet`): an interrupted run leaves
    ``root`` as it was.
    """
    start = time.perf_counter()
    root = Path(root)
    _check_root(root, overwrite)
    table = synthetic_classes()
    with OutputSet(overwrite=overwrite) as outs:
        outs.claim(root)
        staged = {}
        for entry in LAYOUT_ENTRIES:
            dest = outs.add(root / entry, folder="." not in entry, claim=False, create_parents=True)
            staged[entry] = outs.temp(dest, "" if "." not in entry else None)
        for sub in ("images", "labels", "splits"):
            staged[sub].mkdir()
        names: dict[str, list[str]] = {}
        split_pixels: dict[str, list[int]] = {}
        jobs = [(split, i) for split in SPLITS for i in range(config.count(split))]
        for split, i in tqdm(jobs, desc="mosaics", unit="mosaic", disable=not progress):
            image, labels = generate_scene(config, scene_rng(config, split, i))
            name = f"{split}_{i:03d}"
            transform = mosaic_transform(config, split, i)
            write_image(staged["images"] / f"{name}.tif", image, config, transform)
            write_labels(staged["labels"] / f"{name}.tif", labels, config, transform)
            names.setdefault(split, []).append(name)
            counts = np.bincount(labels.ravel(), minlength=len(table))[: len(table)]
            split_pixels[split] = [a + int(b) for a, b in zip(split_pixels.get(split, [0] * len(table)), counts)]
        for split in SPLITS:
            (staged["splits"] / f"{split}.txt").write_text("".join(f"{n}\n" for n in names.get(split, [])))
        staged["classes.json"].write_text(classes_json())
        pixels = [sum(p[k] for p in split_pixels.values()) for k in range(len(table))]
        provenance = {
            "generator": "caswit_geo.synthetic",
            "config": config.to_dict(),
            "context_classes": list(CONTEXT_CLASSES),
            "context_rule": " ".join(RULE_TEXT.split()),
            "class_pixels": {split: dict(zip(table.names, p)) for split, p in split_pixels.items()},
        }
        staged["synthetic.json"].write_text(json.dumps(provenance, indent=2) + "\n")
        outs.commit()
    return DatasetSummary(root, {s: names.get(s, []) for s in SPLITS}, table.names, pixels,
                          time.perf_counter() - start, split_pixels)


def write_sample_mosaic(
    path: str | Path,
    config: SyntheticConfig | None = None,
    labels_path: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one standalone synthetic orthophoto (e.g. ``examples/sample_ortho.tif``).

    It is mosaic 0 of the test split of ``config`` (default settings if
    None); ``labels_path`` also writes its reference labels.
    """
    config = config or SyntheticConfig()
    path = Path(path)
    with OutputSet(overwrite=overwrite) as outs:
        outs.add(path)
        if labels_path is not None:
            outs.add(labels_path, "--labels")
        image, labels = generate_scene(config, scene_rng(config, "test", 0))
        transform = mosaic_transform(config, "test", 0)
        write_image(outs.temp(path), image, config, transform)
        if labels_path is not None:
            write_labels(outs.temp(labels_path), labels, config, transform)
        outs.commit()
    return path
