"""Datasets: FLAIR-HUB, URUR, the user's own ``tiles`` folders, and imagery with label polygons (``vector.py``).

Every dataset is a ``torch.utils.data.Dataset`` whose items follow the
sample contract of :mod:`caswit_geo.data.sample`::

    {"hr": float32 (C, T, T), "lr": float32 (C, T, T),
     "label": int64 (T, T), "lr_label": int64 (T, T), "id": str}

(imagery normalised by ``InputSpec.normalize``, labels 255 = ignore, all 255
when unlabelled). Each dataset also has ``.classes`` (ClassTable),
``.input_spec``, ``.labelled`` and ``.georef(i)`` -> :class:`SampleGeo`
(which raster and window sample i covers, for writing predictions).
Raster handles are opened lazily in each DataLoader worker.

May import: geo, runtime, safeio, core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from caswit_geo.core.errors import ConfigError
from caswit_geo.core.spec import InputSpec
from caswit_geo.data.augment import Augment
from caswit_geo.data.flairhub import FlairHubDataset
from caswit_geo.data.flairhub_splits import DEFAULT_SPLIT_COLUMN
from caswit_geo.data.rasters import ImagePair, RasterTileDataset
from caswit_geo.data.sample import CaswitDataset, SampleGeo
from caswit_geo.data.tiles import TilesMeta, build_tiles, load_tiles_meta, read_classes_json
from caswit_geo.data.urur import build_urur

DATASETS = ("flairhub", "urur", "tiles")

__all__ = [
    "DATASETS",
    "Augment",
    "CaswitDataset",
    "FlairHubDataset",
    "ImagePair",
    "RasterTileDataset",
    "SampleGeo",
    "TilesMeta",
    "build_dataset",
    "load_tiles_meta",
    "read_classes_json",
]


def build_dataset(
    name: str,
    root: str | Path,
    split: str | Path | None,
    input_spec: InputSpec,
    *,
    labels: bool = True,
    random_crops: bool = False,
    crops_per_image: int | None = None,
    transform: Callable[[dict], dict] | None = None,
    split_column: str = DEFAULT_SPLIT_COLUMN,
    cache_dir: str | Path | None = None,
    allow_missing: bool = False,
) -> CaswitDataset:
    """Build one split of a dataset.

    Args:
        name: "flairhub" | "urur" | "tiles".
        root: dataset root folder (layouts: ``flairhub.py``, ``urur.py``, ``tiles.py``).
        split: "train" | "val" | "test"; "all" or None = everything (flairhub, tiles);
            flairhub: the official ``*_TRAIN/_VALID/_TEST.csv`` under ``root`` (any case,
            "valid" too), else the split GeoPackage; or a path to a split CSV or .txt list.
        input_spec: bands, scaling, normalisation, tile size T and context factor k
            (from the checkpoint when evaluating). FLAIR-HUB needs T = patch size.
        labels: False for unlabelled imagery (pretraining): label tensors all 255.
        random_crops: urur/tiles training: random tile positions instead of the
            fixed grid (FLAIR-HUB samples are always whole patches).
        crops_per_image: with random_crops, tiles per image and epoch (None = the
            image's grid tile count).
        transform: applied to every finished sample dict, e.g. ``Augment(input_spec)``.
        split_column: flairhub: split scheme column of the split GeoPackage.
        cache_dir: flairhub: where the patch index is cached (default beside the data).
        allow_missing: flairhub/tiles: a split listing patches or images that are not on
            disk runs on the rest with a warning (``dataset.coverage``) instead of failing.
    """
    if name == "flairhub":
        return FlairHubDataset(
            root, split, input_spec, labels=labels, split_column=split_column, transform=transform,
            cache_dir=cache_dir, allow_missing=allow_missing,
        )
    if name == "urur":
        if split is None or split == "all":
            raise ConfigError("URUR needs a split: train, val or test")
        return build_urur(
            root, str(split), input_spec, labels=labels, random_crops=random_crops,
            crops_per_image=crops_per_image, transform=transform,
        )
    if name == "tiles":
        return build_tiles(
            root, None if split is None else str(split), input_spec, labels=labels,
            random_crops=random_crops, crops_per_image=crops_per_image, transform=transform,
            allow_missing=allow_missing,
        )
    raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
