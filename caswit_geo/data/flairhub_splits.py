"""FLAIR-HUB splits: which patches a ``--split`` names, and where their files are.

In this order (:func:`resolve_split`):

1. a path: an official split CSV (``patch_id`` + one path per modality,
   :mod:`.flairhub_csv`) or a plain CSV/TXT list of patch ids;
2. a split name, ``train``, ``val`` (``valid``, ``validation``) or ``test`` in
   any case: the official ``*_TRAIN.csv`` / ``*_VALID.csv`` / ``*_TEST.csv`` in
   or under the root, as IGN's own code selects splits;
3. failing that, the split GeoPackage (a fallback: IGN's code reads none).

The GeoPackage ``GLOBAL_ALL_MTD/GLOBAL_ALL_MTD_SPLIT.gpkg`` has one row per
patch, a ``patch_id`` column and one column per split scheme whose values
are ``train``, ``valid`` and ``test``. The scheme used by the CASWiT paper is
called ``split_flairhub`` there; that column name is not confirmed on the
published file, so it is a setting and a missing column is reported with
the list of the columns that exist.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pyogrio

from caswit_geo.core.errors import DatasetError
from caswit_geo.data.flairhub_csv import (
    SPLIT_VALUES,
    SplitRow,
    find_split_csv,
    is_split_csv,
    read_split_csv,
    split_suffix,
)
from caswit_geo.data.flairhub_index import patch_id_from_path
from caswit_geo.data.paths import inside, resolve_entry

SPLIT_GPKG = Path("GLOBAL_ALL_MTD") / "GLOBAL_ALL_MTD_SPLIT.gpkg"
DEFAULT_SPLIT_COLUMN = "split_flairhub"
_HEADER_WORDS = {"patch_id", "id", "patch", "name", "patch_name"}


def is_list_file(split: str | Path) -> bool:
    """True when ``split`` names a CSV/TXT file rather than a split name."""
    return Path(split).suffix.lower() in (".csv", ".txt") or (
        str(split).lower() not in SPLIT_VALUES and Path(split).is_file()
    )


@dataclass(frozen=True)
class SplitRequest:
    """The patches a split asks for.

    ``ids`` None = every patch of the tree; ``rows``: the files an official
    split CSV names for them (None for the GeoPackage and plain lists, whose
    patches are looked up in the root's tree).
    """

    source: str  # what the split came from, for messages and reports
    ids: list[str] | None
    rows: list[SplitRow] | None = None


def resolve_split(root: Path, split: str | Path | None, split_column: str = DEFAULT_SPLIT_COLUMN) -> SplitRequest:
    """What ``split`` means under ``root`` (see the module docstring for the order)."""
    if split is None or str(split).lower() == "all":
        return SplitRequest(f"{root} (split 'all')", None)
    if is_list_file(split):
        if is_split_csv(split):
            rows = read_split_csv(split, root)
            return SplitRequest(str(split), [r.patch_id for r in rows], rows)
        return SplitRequest(str(split), read_id_list(split, root))
    if split_suffix(str(split)) is None:
        raise DatasetError(f"unknown split {str(split)!r}: use train, val, test, all, or a split CSV path")
    found = find_split_csv(root, str(split))
    if found is not None:
        rows = read_split_csv(found, root)
        return SplitRequest(str(found), [r.patch_id for r in rows], rows)
    if not (root / SPLIT_GPKG).is_file():
        suffix = split_suffix(str(split)).upper()
        raise DatasetError(
            f"{root}: no split file for {str(split)!r}: no *{suffix[:-4]}.csv in or under the root and no {SPLIT_GPKG} "
            "(give a split CSV path as --split)"
        )
    return SplitRequest(f"{root / SPLIT_GPKG} column {split_column!r}, {SPLIT_VALUES[str(split).lower()]!r}",
                        read_split_table(root, str(split), split_column))


def read_id_list(path: str | Path, root: str | Path | None = None) -> list[str]:
    """Patch ids from a CSV (first column, optional header) or a TXT list (one per line).

    Entries may also be file names or paths of either modality
    (``.../D012-2019_AERIAL_RGBI_AF-S1-27_5-10.tif``). With ``root``, a path
    entry must stay inside it: relative to the list's folder when the list
    lies inside the root (the layout of FLAIR-HUB's own lists), else
    relative to the root.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: split list not found")
    base = None
    if root is not None:
        base = path.parent if inside(path, root) else Path(root)
    ids: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f) if path.suffix.lower() == ".csv" else ([line] for line in f)
        for n, row in enumerate(rows):
            cell = row[0].strip() if row else ""
            if not cell or cell.startswith("#") or (n == 0 and cell.lower() in _HEADER_WORDS):
                continue
            if base is not None and ("/" in cell or "\\" in cell):
                resolve_entry(cell, base, root, path, n + 1)
            ids.append(patch_id_from_path(cell) or cell)
    if not ids:
        raise DatasetError(f"{path}: the split list holds no patch id")
    return ids


def read_split_table(root: Path, split: str, column: str = DEFAULT_SPLIT_COLUMN) -> list[str]:
    """Patch ids of ``split`` (train | val | test) in ``column`` of the split GeoPackage."""
    value = SPLIT_VALUES.get(split.lower())
    if value is None:
        raise DatasetError(f"unknown split {split!r}: use train, val, test, all, or a .csv/.txt list of patch ids")
    gpkg = root / SPLIT_GPKG
    if not gpkg.is_file():
        raise DatasetError(f"{gpkg}: split table not found (or give a .csv/.txt list of patch ids as the split)")
    try:
        fields = list(pyogrio.read_info(gpkg)["fields"])
    except Exception as exc:  # pyogrio raises several DataSourceError types
        raise DatasetError(f"{gpkg}: cannot read the split table ({str(exc).splitlines()[0]})") from None
    if column not in fields:
        raise DatasetError(f"{gpkg}: no split column {column!r}; available columns: {', '.join(fields)}")
    if "patch_id" not in fields:
        raise DatasetError(f"{gpkg}: no 'patch_id' column; available columns: {', '.join(fields)}")
    table = pyogrio.read_dataframe(gpkg, columns=["patch_id", column], read_geometry=False)
    values = table[column].astype(str).str.strip().str.lower()
    ids = table.loc[values == value, "patch_id"].astype(str).tolist()
    if not ids:
        found = sorted(set(values))
        raise DatasetError(f"{gpkg}: column {column!r} has no {value!r} rows (values found: {', '.join(found)})")
    return ids
