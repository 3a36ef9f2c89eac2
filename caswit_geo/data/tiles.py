"""The user's own data: orthophotos (any size, any CRS) and label rasters.

Layout::

    <root>/classes.json         {"classes": [{"id": 0, "name": "building", "color": [r, g, b]}, ...],
                                 optional "weights": [...], "bands": [1, 2, 3], "scale": 255}
    <root>/images/<name>.tif    imagery, mosaics included
    <root>/labels/<name>.tif    same size, transform and CRS; uint8 class ids, 255 = ignore
    <root>/splits/{train,val,test}.txt   one image name (file stem) per line

Without a ``splits`` folder every image belongs to every split (with a
warning). A split list naming images that are not in ``images/`` is an
error, or with ``allow_missing`` a warning (``dataset.coverage`` records it). Without labels (``labels=False``, pretraining) ``classes.json``
and ``labels/`` are optional.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from caswit_geo.core.errors import ConfigError, DatasetError
from caswit_geo.core.jsonfile import load_json
from caswit_geo.core.limits import Int, Maybe, Real, Seq
from caswit_geo.core.spec import MAX_BANDS, ClassTable, InputSpec
from caswit_geo.data.coverage import SplitCoverage, check_coverage
from caswit_geo.data.paths import resolve_entry
from caswit_geo.data.rasters import ImagePair, RasterTileDataset

MAX_CLASSES_BYTES = 1 * 2**20  # 255 classes with names and colours take about 20 KiB
MAX_CLASSES_DEPTH = 4  # {"classes": [{"color": [r, g, b]}]}

RASTER_SUFFIXES = (".tif", ".tiff")
SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "valid": ("val", "valid", "validation")}


@dataclass(frozen=True)
class TilesMeta:
    """What ``classes.json`` says: class table, and the imagery's bands and scale if given."""

    classes: ClassTable
    bands: tuple[int, ...] | None = None
    scale: float | None = None


def read_classes_json(path: str | Path) -> TilesMeta:
    """Parse a ``classes.json`` file (format in the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: class file not found")
    data = load_json(path, what="the class file", max_bytes=MAX_CLASSES_BYTES, max_depth=MAX_CLASSES_DEPTH,
                     error=DatasetError)
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise DatasetError(f"{path}: expected an object {{\"classes\": [{{\"id\", \"name\", \"color\"}}, ...]}}, "
                           f"got {type(data).__name__ if not isinstance(data, dict) else 'no list under classes'}")
    try:
        classes = ClassTable.from_dict({"classes": data["classes"], "weights": data.get("weights")})
        bands = Maybe(Seq(Int(1, 1024), 1, MAX_BANDS))(data.get("bands"), "bands")
        scale = Maybe(Real(0, 1e12, lo_open=True))(data.get("scale"), "scale")
    except ConfigError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    if len(classes) == 0:
        raise DatasetError(f"{path}: no class defined")
    return TilesMeta(classes, bands, scale)


def load_tiles_meta(root: str | Path) -> TilesMeta:
    """``<root>/classes.json`` (what the train engine needs to build an InputSpec and model)."""
    return read_classes_json(Path(root) / "classes.json")


def _find_raster(folder: Path, name: str) -> Path | None:
    for suffix in RASTER_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def split_names(root: Path, split: str | None, allow_missing: bool = False) -> tuple[list[str], SplitCoverage]:
    """Image names of ``split`` (None/"all" or no splits folder: every image), and the split's coverage."""
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: images folder not found")
    every = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() in RASTER_SUFFIXES and p.is_file())
    if not every:
        raise DatasetError(f"{image_dir}: no .tif image")
    if split is None or split == "all":
        return every, SplitCoverage(str(image_dir), len(every), len(every))
    split_dir = root / "splits"
    if not split_dir.is_dir():
        warnings.warn(f"{root}: no splits folder, every image is used for the {split!r} split", stacklevel=3)
        return every, SplitCoverage(str(image_dir), len(every), len(every))
    for name in SPLIT_ALIASES.get(split, (split,)):
        split_file = split_dir / f"{name}.txt"
        if split_file.is_file():
            break
    else:
        raise DatasetError(f"{split_dir / f'{split}.txt'}: split list not found")
    names = {}
    for number, line in enumerate(split_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        name = line.strip()
        if name and not name.startswith("#") and name not in names:
            resolve_entry(name, image_dir, root, split_file, number)  # no name may leave the data root
            names[name] = number
    if not names:
        raise DatasetError(f"{split_file}: empty split list")
    names = list(names)
    missing = [name for name in names if _find_raster(image_dir, name) is None]
    coverage = check_coverage(str(split_file), names, missing, allow_missing=allow_missing, where=str(image_dir),
                              what="images")
    absent = set(missing)
    return [name for name in names if name not in absent], coverage


def build_tiles(
    root: str | Path,
    split: str | None,
    input_spec: InputSpec,
    *,
    labels: bool = True,
    random_crops: bool = False,
    crops_per_image: int | None = None,
    transform: Callable[[dict], dict] | None = None,
    allow_missing: bool = False,
) -> RasterTileDataset:
    """The images of ``split`` as T x T tiles with context (grid, or random crops)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if (root / "classes.json").is_file() or labels:
        meta = load_tiles_meta(root)
        if meta.bands is not None and tuple(meta.bands) != tuple(input_spec.bands):
            warnings.warn(
                f"{root / 'classes.json'}: bands {list(meta.bands)} differ from the model's {list(input_spec.bands)}; "
                "using the model's",
                stacklevel=2,
            )
        classes = meta.classes
    else:
        classes = ClassTable()  # unlabelled imagery: no class table needed
    pairs = []
    names, coverage = split_names(root, split, allow_missing)
    for name in names:
        image = _find_raster(root / "images", name)
        label = None
        if labels:
            label = _find_raster(root / "labels", name)
            if label is None:
                raise DatasetError(f"{root / 'labels' / (name + '.tif')}: label raster of image {name!r} not found")
        pairs.append(ImagePair(name, image, label))
    dataset = RasterTileDataset(
        pairs, classes, input_spec, random_crops=random_crops, crops_per_image=crops_per_image, transform=transform
    )
    dataset.coverage = coverage
    return dataset
