"""FLAIR-HUB patch index: file names, georeferencing, geographic neighbours.

Layout, as IGN publishes it::

    <root>/{DOMAIN}-{YEAR}_{MODALITY}/{ROI}/{DOMAIN}-{YEAR}_{MODALITY}_{ROI}_{A}-{B}.tif

The patch id is the file stem without ``_{MODALITY}``. Names are parsed on
the modality token, never on fixed positions (``D024047``, ``195X``,
``AA-S1-V18`` exist). Neighbours are found from the GeoTIFF transforms, not
from ``{A}-{B}`` (its axis order is unknown) and not from CRS objects (some
files carry a local "RGF93 v1 / Lambert-93" instead of EPSG:2154): two
patches of the same domain-year are neighbours when their upper-left
corners differ by one patch size (102.4 m for 512 px at 0.2 m) along x
and/or y, within half a pixel.

Reading 241,100 GeoTIFF headers takes minutes, so the index is cached as
JSON, by default beside the data (``<root>/.caswit-geo-index.json``) or,
when the root is read-only, in ``$XDG_CACHE_HOME/caswit-geo`` (default
``~/.cache/caswit-geo``). Each entry keeps the file's size and mtime; a
file that changed, appeared or vanished is re-read on the next load and
the cache rewritten, so the cache is never stale.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from affine import Affine

from caswit_geo.core.errors import CaswitError, DatasetError
from caswit_geo.core.jsonfile import load_json
from caswit_geo.data.open_raster import open_raster
from caswit_geo.safeio.writes import write_text

IMAGE_MODALITY = "AERIAL_RGBI"
LABEL_MODALITY = "AERIAL_LABEL-COSIA"
INDEX_VERSION = 1
CACHE_NAME = ".caswit-geo-index.json"
MAX_CACHE_BYTES = 256 * 2**20  # about 150 bytes per image: 1.7 million images


@dataclass(frozen=True)
class PatchName:
    patch_id: str  # "D012-2019_AF-S1-27_5-10"
    zone: str  # domain-year, "D012-2019"
    roi: str  # "AF-S1-27"
    cell: str  # "5-10" (not used for geometry)


def parse_patch_name(stem: str, modality: str) -> PatchName | None:
    """``D012-2019_AERIAL_RGBI_AF-S1-27_5-10`` -> PatchName, None if it is not such a name."""
    token = f"_{modality}_"
    if token not in stem:
        return None
    zone, rest = stem.split(token, 1)
    if "_" not in rest or not zone:
        return None
    roi, cell = rest.rsplit("_", 1)
    if not roi or not cell:
        return None
    return PatchName(f"{zone}_{rest}", zone, roi, cell)


def patch_id_from_path(path: str) -> str | None:
    """Patch id of a file name or path of either modality (for split lists of file names)."""
    stem = Path(path).name
    for suffix in (".tif", ".tiff", ".TIF"):
        stem = stem.removesuffix(suffix)
    for modality in (IMAGE_MODALITY, LABEL_MODALITY):
        name = parse_patch_name(stem, modality)
        if name is not None:
            return name.patch_id
    return None


def scan_modality(root: Path, modality: str) -> dict[str, tuple[int, int]]:
    """{path relative to root: (mtime_ns, size)} of ``<root>/*_{modality}/*/*.tif``."""
    found: dict[str, tuple[int, int]] = {}
    with os.scandir(root) as top:
        zones = sorted(e.name for e in top if e.is_dir() and e.name.endswith(f"_{modality}"))
    for zone in zones:
        with os.scandir(root / zone) as rois:
            roi_names = sorted(e.name for e in rois if e.is_dir())
        for roi in roi_names:
            with os.scandir(root / zone / roi) as files:
                for f in files:
                    if f.name.lower().endswith((".tif", ".tiff")) and f.is_file():
                        st = f.stat()
                        found[f"{zone}/{roi}/{f.name}"] = (st.st_mtime_ns, st.st_size)
    return found


@dataclass(frozen=True)
class Patch:
    """One patch: names, files and georeferencing (width/height in px, transform in CRS units)."""

    patch_id: str
    zone: str
    roi: str
    image: Path
    label: Path | None
    width: int
    height: int
    count: int
    transform: Affine


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "caswit-geo"


def index_cache_path(root: Path, cache_dir: str | Path | None = None) -> Path:
    """Where the index of ``root`` is cached (see the module docstring)."""
    if cache_dir is None:
        if os.access(root, os.W_OK):
            return root / CACHE_NAME
        cache_dir = default_cache_dir()
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"flairhub-index-{digest}.json"


def _load_cache(path: Path, root: Path) -> dict[str, list]:
    try:  # a cache that cannot be used is rebuilt, whatever is wrong with it
        data = load_json(path, what="the index cache", max_bytes=MAX_CACHE_BYTES, max_depth=4)
    except CaswitError:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        return {}
    if data.get("version") != INDEX_VERSION or data.get("modality") != IMAGE_MODALITY:
        return {}
    # an entry is [mtime, size, width, height, count, a, b, c, d, e, f]: one of another shape is read again
    return {rel: e for rel, e in data["entries"].items()
            if isinstance(e, list) and len(e) == 11
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in e)}


def _write_cache(path: Path, root: Path, entries: dict[str, list]) -> None:
    """Atomic write (temp file + rename); a cache that cannot be written is only a warning."""
    data = {"version": INDEX_VERSION, "modality": IMAGE_MODALITY, "root": str(root.resolve()), "entries": entries}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(data, separators=(",", ":")))
    except OSError as exc:
        warnings.warn(f"{path}: cannot write the FLAIR-HUB index cache ({exc})", stacklevel=3)


def _read_header(path: Path) -> list:
    with open_raster(path) as src:
        t = src.transform
        return [src.width, src.height, src.count, t.a, t.b, t.c, t.d, t.e, t.f]


class PatchIndex:
    """All aerial patches under a FLAIR-HUB root, sorted by patch id, with neighbour lookup."""

    def __init__(self, patches: list[Patch]) -> None:
        self.patches = sorted(patches, key=lambda p: p.patch_id)
        self.by_id = {p.patch_id: i for i, p in enumerate(self.patches)}
        if len(self.by_id) != len(self.patches):
            raise DatasetError("the FLAIR-HUB tree holds the same patch id twice")
        self._grid = {self._cell(p): i for i, p in enumerate(self.patches)}

    @staticmethod
    def _cell(p: Patch, drow: int = 0, dcol: int = 0) -> tuple:
        """Grid key: same domain-year, resolution and size; upper-left corner in whole pixels.

        Rounding the corner to the pixel grid is the tolerance (half a pixel,
        0.1 m at 0.2 m). Rows grow southwards.
        """
        t = p.transform
        col = round(t.c / t.a) + dcol * p.width
        row = round(-t.f / abs(t.e)) + drow * p.height
        return (p.zone, round(t.a, 6), round(t.e, 6), p.width, p.height, row, col)

    def __len__(self) -> int:
        return len(self.patches)

    def neighbour(self, i: int, drow: int, dcol: int) -> int | None:
        """Index of the patch ``drow`` patches south and ``dcol`` east of patch i, or None."""
        return self._grid.get(self._cell(self.patches[i], drow, dcol))


def build_index(root: str | Path, cache_dir: str | Path | None = None) -> PatchIndex:
    """Index the ``AERIAL_RGBI`` patches (and their ``AERIAL_LABEL-COSIA`` labels) under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: FLAIR-HUB root folder not found")
    images = scan_modality(root, IMAGE_MODALITY)
    if not images:
        raise DatasetError(
            f"{root}: no FLAIR-HUB aerial patches found "
            f"(expected <root>/<DOMAIN>-<YEAR>_{IMAGE_MODALITY}/<ROI>/*.tif)"
        )
    cache_path = index_cache_path(root, cache_dir)
    cached = _load_cache(cache_path, root)
    entries: dict[str, list] = {}
    changed = set(cached) != set(images)
    for rel, (mtime, size) in images.items():
        old = cached.get(rel)
        if old is not None and old[0] == mtime and old[1] == size:
            entries[rel] = old
        else:
            entries[rel] = [mtime, size, *_read_header(root / rel)]
            changed = True
    if changed:
        _write_cache(cache_path, root, entries)

    labels = {}
    for rel in scan_modality(root, LABEL_MODALITY):
        name = parse_patch_name(Path(rel).stem, LABEL_MODALITY)
        if name is not None:
            labels[name.patch_id] = root / rel

    patches, skipped = [], []
    for rel, e in entries.items():
        name = parse_patch_name(Path(rel).stem, IMAGE_MODALITY)
        if name is None:
            skipped.append(rel)
            continue
        width, height, count, a, b, c, d, ey, f = e[2:]
        if b or d or a <= 0 or ey >= 0:
            raise DatasetError(f"{root / rel}: rotated or flipped geotransform; FLAIR-HUB patches are north-up")
        patches.append(
            Patch(
                name.patch_id,
                name.zone,
                name.roi,
                root / rel,
                labels.get(name.patch_id),
                int(width),
                int(height),
                int(count),
                Affine(a, b, c, d, ey, f),
            )
        )
    if skipped:
        warnings.warn(f"{root}: {len(skipped)} .tif files without a FLAIR-HUB name skipped, e.g. {skipped[0]}", stacklevel=2)
    return PatchIndex(patches)


def context_reach(factor: int) -> int:
    """How many rings of neighbours a ``factor`` x context window needs (1 for k = 2 or 3)."""
    return math.ceil((factor - 1) / 2)
