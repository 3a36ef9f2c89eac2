"""URUR (Ji et al., CVPR 2023): 5120 x 5120 RGB PNGs, 8 classes, PNG label indices.

Two public layouts are recognised (checked in this order, under ``root``,
``root/URUR`` and ``root/urur``)::

    {train,val,test}/{image,label}/*.png
    imgs/{split}/*.png  +  labels/{split}/*.png

Image and label share the base name. Labels are read as stored indices
(palette or grayscale PNG, no colour conversion): 0 others, 1 building,
2 farmland, 3 greenhouse, 4 woodland, 5 bareland, 6 water, 7 road.
Training takes random T crops with their context from the same image
(black / 255 outside); evaluation tiles whole images without overlap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from caswit_geo.core.errors import DatasetError
from caswit_geo.core.spec import InputSpec, urur_classes
from caswit_geo.data.rasters import ImagePair, RasterTileDataset

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg")


def find_urur_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """(image folder, label folder) of ``split`` in either layout."""
    root = Path(root)
    if split == "valid":
        split = "val"
    if split not in SPLIT_FOLDERS:
        raise DatasetError(f"unknown URUR split {split!r}: use train, val or test")
    tried = []
    for base in (root, root / "URUR", root / "urur"):
        for name in SPLIT_FOLDERS[split]:
            for images, labels in ((base / name / "image", base / name / "label"), (base / "imgs" / name, base / "labels" / name)):
                if images.is_dir():
                    return images, labels
                tried.append(str(images.relative_to(root)) if images.is_relative_to(root) else str(images))
    raise DatasetError(f"{root}: no URUR {split} images found (looked for {', '.join(tried[:4])})")


def urur_pairs(root: str | Path, split: str, labels: bool = True) -> list[ImagePair]:
    """The images of ``split`` with their label PNGs (required when ``labels``)."""
    image_dir, label_dir = find_urur_split(root, split)
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DatasetError(f"{image_dir}: no image file")
    pairs = []
    for image in images:
        label = None
        if labels:
            label = label_dir / f"{image.stem}.png"
            if not label.is_file():
                raise DatasetError(f"{label}: label of {image.name} not found")
        pairs.append(ImagePair(image.stem, image, label))
    return pairs


def build_urur(
    root: str | Path,
    split: str,
    input_spec: InputSpec,
    *,
    labels: bool = True,
    random_crops: bool = False,
    crops_per_image: int | None = None,
    transform: Callable[[dict], dict] | None = None,
) -> RasterTileDataset:
    """URUR split as tiles (grid, or ``random_crops`` for training)."""
    return RasterTileDataset(
        urur_pairs(root, split, labels),
        urur_classes(),
        input_spec,
        random_crops=random_crops,
        crops_per_image=crops_per_image,
        transform=transform,
    )
