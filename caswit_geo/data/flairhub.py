"""FLAIR-HUB aerial patches with their 3x3 geographic context (paper section 4.1).

Each sample is one patch (512 px at 0.2 m in the real data; the size is read
from the files). Its LR context is the ``k`` times larger window centred on
the patch (k = 2: the central 1024 px of the 1536 px 3x3 neighbourhood),
assembled from the geographic neighbours of the same domain-year, black
where a neighbour is missing or the imagery is nodata, and averaged
(labels: nearest) down to the patch size. Labels are the 19 COSIA classes
0..18; 15..18 have loss weight 0 and are not evaluated
(``spec.flairhub_classes()``).

LR labels are 255 (ignored) wherever the LR image is (partly) black
padding or nodata, and wherever they would come from a neighbour outside
the split: a training patch's LR loss never sees validation or test
labels. The neighbours' imagery is used whatever their split, as at
inference. A patch's own labels are kept as they are, nodata or not: the
official metric scores every labelled pixel of the patch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError, DatasetError
from caswit_geo.core.spec import IGNORE_INDEX, InputSpec, flairhub_classes
from caswit_geo.data.coverage import SplitCoverage, check_coverage
from caswit_geo.data.flairhub_index import IMAGE_MODALITY, Patch, PatchIndex, build_index, context_reach
from caswit_geo.data.flairhub_splits import DEFAULT_SPLIT_COLUMN, SplitRequest, resolve_split
from caswit_geo.data.open_raster import open_raster
from caswit_geo.data.sample import CaswitDataset, SampleGeo, check_label_values
from caswit_geo.geo.context import area_downsample, lowres_valid, nearest_downsample
from caswit_geo.geo.grid import context_window
from caswit_geo.geo.masks import MaskRule, mask_rule, valid_mask, zero_invalid
from caswit_geo.geo.raster_cache import RasterHandles


def aerial_mask_rule(src, bands: list[int]) -> MaskRule:
    """Validity of an ``AERIAL_RGBI`` patch: its nodata value or internal mask, never an alpha band.

    Band 4 is near-infrared, but a 4-band 8-bit GeoTIFF is often tagged RGBA
    (GDAL's default): read as alpha, every NIR = 0 pixel would become nodata.
    """
    return mask_rule(src, bands, alpha=False)


def patch_tree(request: SplitRequest, root: Path, allow_missing: bool) -> Path:
    """The folder holding the modality folders: where a split CSV's images lie, else ``root``."""
    if not request.rows:
        return root
    trees = {}
    for row in request.rows:
        if row.image is None:
            continue
        if not row.image.parent.parent.name.endswith(f"_{IMAGE_MODALITY}"):
            raise DatasetError(
                f"{request.source} line {row.line}: {row.image} is not in a <DOMAIN>-<YEAR>_{IMAGE_MODALITY}/<ROI>/ folder"
            )
        trees.setdefault(row.image.parents[2], row)
    if not trees:
        check_coverage(request.source, request.ids, request.ids, allow_missing=allow_missing, where=str(root))
    if len(trees) > 1:
        a, b = list(trees)[:2]
        raise DatasetError(f"{request.source}: its images lie in {len(trees)} different trees ({a}, {b})")
    return next(iter(trees))


def select_patches(
    index: PatchIndex, request: SplitRequest, tree: Path, *, labels: bool, allow_missing: bool
) -> tuple[list[int], SplitCoverage]:
    """Indexes into ``index`` of the patches of ``request``, and how many of them were found.

    With a split CSV, its label paths replace the tree's (same file in the
    official layout). A patch is missing when its image, or with ``labels``
    its label, is not on disk.
    """
    if request.ids is None:
        every = list(range(len(index)))
        if labels:
            every = [i for i in every if index.patches[i].label is not None]
        ids = [p.patch_id for p in index.patches]
        missing = [p.patch_id for p in index.patches if labels and p.label is None]
        return every, check_coverage(request.source, ids, missing, allow_missing=allow_missing, where=str(tree),
                                     why="no label file")
    rows = {r.patch_id: r for r in request.rows or ()}
    found, missing = [], []
    for patch_id in dict.fromkeys(request.ids):
        j = index.by_id.get(patch_id)
        row = rows.get(patch_id)
        if row is not None:
            if row.image is None:
                missing.append(patch_id)
                continue
            if j is None or index.patches[j].image != row.image:
                raise DatasetError(f"{request.source} line {row.line}: {row.image} is not named as patch {patch_id}")
            if row.label is not None and row.label != index.patches[j].label:
                index.patches[j] = dataclasses.replace(index.patches[j], label=row.label)
        if j is None or (labels and index.patches[j].label is None):
            missing.append(patch_id)
            continue
        found.append(j)
    coverage = check_coverage(request.source, list(request.ids), missing, allow_missing=allow_missing, where=str(tree),
                              why="no image or no label file" if labels else "no image file")
    return sorted(found), coverage


class FlairHubDataset(CaswitDataset):
    """FLAIR-HUB ``AERIAL_RGBI`` patches, HR patch + LR geo-context, COSIA labels.

    Args:
        root: the data root: holds the ``<DOMAIN>-<YEAR>_AERIAL_RGBI`` folders, or
            the official split CSVs that point at them (``flairhub_csv.py``).
        split: "train" | "val" | "test" (any case; "valid" too): the official
            ``*_TRAIN/_VALID/_TEST.csv`` in or under ``root``, else the split
            GeoPackage; "all"/None; or a path to a split CSV or .txt list of patch ids.
        input_spec: bands (RGB = 1, 2, 3 by default), scaling, normalisation,
            context factor; ``tile_size`` must equal the patch size.
        labels: False for unlabelled use (pretraining): label tensors all 255.
        split_column: split scheme column of the GeoPackage.
        transform: applied to each finished sample dict (e.g. ``Augment``).
        cache_dir: where to cache the patch index (default: beside the data).
        allow_missing: run on the patches found when the split lists some that are
            not on disk (a warning; ``coverage`` records it) instead of failing.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Path | None = "test",
        input_spec: InputSpec | None = None,
        *,
        labels: bool = True,
        split_column: str = DEFAULT_SPLIT_COLUMN,
        transform: Callable[[dict], dict] | None = None,
        cache_dir: str | Path | None = None,
        allow_missing: bool = False,
    ) -> None:
        self.root = Path(root)
        self.input_spec = input_spec or InputSpec()
        self.classes = flairhub_classes()
        self.labelled = labels
        self.transform = transform
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: FLAIR-HUB root folder not found")
        request = resolve_split(self.root, split, split_column)
        self.tree = patch_tree(request, self.root, allow_missing)
        self.index = build_index(self.tree, cache_dir)
        self.selection, self.coverage = select_patches(
            self.index, request, self.tree, labels=labels, allow_missing=allow_missing
        )
        self._in_split = frozenset(self.selection)  # whose labels may enter an LR label
        self._handles = RasterHandles(opener=open_raster)

        first = self.index.patches[self.selection[0]]
        max_band = max(self.input_spec.bands)
        for i in self.selection:
            p = self.index.patches[i]
            if (p.width, p.height) != (first.width, first.height):
                raise DatasetError(
                    f"{p.image}: {p.width}x{p.height} px, but {first.image} is {first.width}x{first.height}: "
                    "all patches must have one size"
                )
            if p.count < max_band:
                raise DatasetError(f"{p.image}: {p.count} bands, band {max_band} requested")
        if first.width != first.height:
            raise DatasetError(f"{first.image}: patches must be square, got {first.width}x{first.height}")
        self.patch_size = first.width
        if self.input_spec.tile_size != self.patch_size:
            raise ConfigError(
                f"tile size {self.input_spec.tile_size} does not match the FLAIR-HUB patch size "
                f"{self.patch_size} px (set the tile size to {self.patch_size})"
            )
        context_window(Window(0, 0, self.patch_size, self.patch_size), self.input_spec.context_factor)  # validates k

    def __len__(self) -> int:
        return len(self.selection)

    def patch(self, index: int) -> Patch:
        return self.index.patches[self.selection[index]]

    def image_ids(self) -> list[str]:
        return [self.index.patches[i].patch_id for i in self.selection]

    def input_files(self) -> list[Path]:
        return [f for p in self.index.patches for f in (p.image, p.label) if f is not None]

    def georef(self, index: int) -> SampleGeo:
        p = self.patch(index)
        crs = self._handles.get(p.image).crs
        return SampleGeo(p.patch_id, Window(0, 0, p.width, p.height), p.width, p.height, p.transform, crs)

    def _open_label(self, p: Patch):
        src = self._handles.get(p.label)
        if (src.width, src.height) != (p.width, p.height) or not src.transform.almost_equals(p.transform):
            raise DatasetError(f"{p.label}: size or georeferencing differs from its image {p.image}")
        return src

    def read(self, index: int):
        i = self.selection[index]
        p = self.index.patches[i]
        k = self.input_spec.context_factor
        bands = list(self.input_spec.bands)
        size = self.patch_size
        ctx = context_window(Window(0, 0, size, size), k)  # in the patch's pixel grid
        reach = context_reach(k)
        with_labels = self.labelled

        image_dtype = self._handles.get(p.image).dtypes[0]
        canvas = np.zeros((len(bands), ctx.height, ctx.width), dtype=image_dtype)  # (C, kT, kT)
        valid = np.zeros((ctx.height, ctx.width), dtype=bool)  # (kT, kT) imagery present and not nodata
        label_canvas = np.full((ctx.height, ctx.width), IGNORE_INDEX, dtype=np.uint8)  # (kT, kT)
        for drow in range(-reach, reach + 1):
            for dcol in range(-reach, reach + 1):
                j = i if drow == dcol == 0 else self.index.neighbour(i, drow, dcol)
                if j is None:
                    continue  # missing neighbour (ROI edge): stays black / 255
                q = self.index.patches[j]
                # Part of neighbour (drow, dcol) inside the context window, in patch coordinates.
                r0, r1 = max(ctx.row_off, drow * size), min(ctx.row_off + ctx.height, (drow + 1) * size)
                c0, c1 = max(ctx.col_off, dcol * size), min(ctx.col_off + ctx.width, (dcol + 1) * size)
                if r0 >= r1 or c0 >= c1:
                    continue
                src_window = Window(c0 - dcol * size, r0 - drow * size, c1 - c0, r1 - r0)
                dst = (slice(r0 - ctx.row_off, r1 - ctx.row_off), slice(c0 - ctx.col_off, c1 - ctx.col_off))
                src = self._handles.get(q.image)
                if src.count < max(bands):
                    raise DatasetError(f"{q.image}: {src.count} bands, band {max(bands)} requested")
                part = src.read(bands, window=src_window)
                canvas[(slice(None), *dst)] = part
                valid[dst] = valid_mask(src, src_window, bands, data=part, rule=aerial_mask_rule(src, bands))
                # labels of a neighbour outside the split stay 255: no split learns from another's labels
                if with_labels and q.label is not None and j in self._in_split:
                    part = self._open_label(q).read(1, window=src_window)
                    check_label_values(part, len(self.classes), q.label)
                    label_canvas[dst] = part
        if not valid.all():
            zero_invalid(canvas, valid)
        r, c = -ctx.row_off, -ctx.col_off  # the patch inside the context canvas
        hr = canvas[:, r : r + size, c : c + size].copy()
        lr = area_downsample(canvas, k)
        label = lr_label = None
        if with_labels:
            label = label_canvas[r : r + size, c : c + size].copy()
            lr_label = np.ascontiguousarray(nearest_downsample(label_canvas, k))
            lr_label[~lowres_valid(valid, k)] = IGNORE_INDEX
        return hr, lr, label, lr_label, p.patch_id
