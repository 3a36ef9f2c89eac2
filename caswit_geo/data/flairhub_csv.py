"""FLAIR-HUB's official split files: ``<PREFIX>_TRAIN.csv``, ``_VALID.csv``, ``_TEST.csv``.

IGN publishes three CSV files per subset (``FLAIR-HUB_TOY-DATASET_VALID.csv``
...): a ``patch_id`` column, then one path per modality, relative to the
CSV's own folder, which sits beside the modality folders::

    patch_id,...,AERIAL_LABEL-COSIA,AERIAL_RGBI,...
    D006-2020_FF-S1-14_5-5,...,../D006-2020_AERIAL_LABEL-COSIA/FF-S1-14/D006-2020_AERIAL_LABEL-COSIA_FF-S1-14_5-5.tif,...

Only ``patch_id``, ``AERIAL_RGBI`` and ``AERIAL_LABEL-COSIA`` are read; the
other modalities need not be on disk. A path is looked for, in this order,

1. where the official layout puts it: relative to the CSV's folder;
2. in the root's own tree: the path without its leading ``../``, under ``--root``

(so a CSV kept elsewhere still works). Paths are untrusted: an absolute
path, a ``..`` after the first folder name, or a path that leaves ``--root``
is an error naming the CSV and its row.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from caswit_geo.core.errors import DatasetError
from caswit_geo.data.flairhub_index import IMAGE_MODALITY, LABEL_MODALITY
from caswit_geo.data.paths import inside

# split name as typed (any case) -> the official split: its file suffix, its value in the split GeoPackage
SPLIT_VALUES = {"train": "train", "val": "valid", "valid": "valid", "validation": "valid", "test": "test"}
SPLIT_SUFFIXES = {name: f"_{value}.csv" for name, value in SPLIT_VALUES.items()}
MAX_CSV_BYTES = 2**30  # the full data set's largest split file is well under 200 MB
MAX_CELL = 4096  # characters of one path
_PATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
# modality folders start with a domain-year ("D006-2020_", "D006-195X_"): never searched for split files
_MODALITY_FOLDER = re.compile(r"^[A-Za-z0-9]+-[0-9X]{4}_")
_SEARCH_DEPTH = 3  # folders below --root
_SEARCH_FOLDERS = 5000


def split_suffix(split: str) -> str | None:
    """``"VALID"`` -> ``"_valid.csv"``; None for a name that is not a split."""
    return SPLIT_SUFFIXES.get(str(split).lower())


def find_split_csv(root: Path, split: str) -> Path | None:
    """The official CSV of ``split`` in or under ``root`` (None if there is none).

    Looks in ``root`` and up to three folder levels below it, skipping hidden
    folders and the modality folders themselves (which hold only patches).
    More than one match is an error listing them.
    """
    suffix = split_suffix(split)
    if suffix is None:
        raise DatasetError(f"unknown split {split!r}: use train, val, test, all, or a split CSV path")
    found: list[Path] = []
    level, visited = [Path(root)], 0
    for depth in range(_SEARCH_DEPTH + 1):
        below = []
        for folder in level[: max(_SEARCH_FOLDERS - visited, 0)]:  # bounded: a root may hold anything
            visited += 1
            try:
                with os.scandir(folder) as entries:
                    for e in entries:
                        if e.name.startswith("."):
                            continue
                        if e.is_dir() and depth < _SEARCH_DEPTH and not _MODALITY_FOLDER.match(e.name):
                            below.append(Path(e.path))
                        elif e.name.lower().endswith(suffix) and e.is_file():
                            found.append(Path(e.path))
            except OSError:
                continue  # unreadable folder: not where the split files are
        level = sorted(below)
    if len(found) > 1:
        names = ", ".join(str(p) for p in sorted(found)[:5])
        raise DatasetError(f"{root}: {len(found)} split files end in {suffix.upper()[:-4]}.csv ({names}); give one as --split")
    return found[0] if found else None


def is_split_csv(path: str | Path) -> bool:
    """True when ``path`` is a CSV whose header has ``patch_id`` and ``AERIAL_RGBI`` (the official form)."""
    path = Path(path)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader([f.readline(MAX_CELL * 16)]), [])
    names = {h.strip() for h in header}
    return "patch_id" in names and IMAGE_MODALITY in names


@dataclass(frozen=True)
class SplitRow:
    """One row of a split CSV: its patch and the files found for it (None = not on disk)."""

    patch_id: str
    line: int  # 1-based line in the CSV (the header is line 1)
    image: Path | None
    label: Path | None


class _Listings:
    """Which files exist, from one directory listing per folder (a split lists up to ~10^5 patches)."""

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str]] = {}

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        if folder not in self._names:
            try:
                self._names[folder] = frozenset(os.listdir(folder))
            except OSError:
                self._names[folder] = frozenset()
        return name in self._names[folder]


def _candidates(cell: str, csv_dir: str, root: str, where: str) -> list[str]:
    """Absolute, normalised places to look for one CSV path, in order (see the module docstring)."""
    text = cell.strip().replace("\\", "/")
    parts = PurePosixPath(text).parts
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    rest = parts[ups:]
    if not rest or text.startswith("/") or re.match(r"^[A-Za-z]:", text) or ".." in rest:
        raise DatasetError(f"{where}: path {cell!r} must be relative, like ../<DOMAIN>-<YEAR>_<MODALITY>/<ROI>/<file>.tif")
    out = []
    official = os.path.normpath(os.path.join(csv_dir, *parts))
    if inside(official, root):
        out.append(official)
    elif inside(csv_dir, root):
        raise DatasetError(f"{where}: path {cell!r} leaves the data root {root}")
    out.append(os.path.join(root, *rest))
    return out


def read_split_csv(path: str | Path, root: str | Path, *, max_rows: int = 5_000_000) -> list[SplitRow]:
    """The rows of an official split CSV, with their image and label files resolved under ``root``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise DatasetError(f"{path}: {path.stat().st_size} bytes, more than a split file can hold")
    root_abs = os.path.abspath(root)
    csv_dir = os.path.dirname(os.path.abspath(path))
    listings = _Listings()
    rows: list[SplitRow] = []
    seen: set[str] = set()
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        for column in ("patch_id", IMAGE_MODALITY):
            if column not in header:
                raise DatasetError(f"{path}: no {column!r} column (columns: {', '.join(header[:12])})")
        cols = {name: header.index(name) for name in ("patch_id", IMAGE_MODALITY, LABEL_MODALITY) if name in header}
        for n, record in enumerate(reader, start=2):
            if not record or not any(c.strip() for c in record):
                continue
            if len(rows) >= max_rows:
                raise DatasetError(f"{path}: more than {max_rows} rows")
            where = f"{path} line {n}"
            if len(record) < len(header) or any(len(c) > MAX_CELL for c in record):
                raise DatasetError(f"{where}: {len(record)} fields for {len(header)} columns, or a field too long")
            patch_id = record[cols["patch_id"]].strip()
            if not _PATCH_ID.match(patch_id):
                raise DatasetError(f"{where}: {patch_id[:60]!r} is not a patch id")
            if patch_id in seen:
                continue
            seen.add(patch_id)
            files = []
            for modality in (IMAGE_MODALITY, LABEL_MODALITY):
                cell = record[cols[modality]] if modality in cols else ""
                if not cell.strip():
                    files.append(None)
                    continue
                found = next((c for c in _candidates(cell, csv_dir, root_abs, where) if listings.exists(c)), None)
                files.append(Path(found) if found else None)
            rows.append(SplitRow(patch_id, n, *files))
    if not rows:
        raise DatasetError(f"{path}: the split file lists no patch")
    return rows
