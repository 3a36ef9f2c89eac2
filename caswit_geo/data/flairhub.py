"""FLAIR-HUB aerial patches with their 3x3 geographic context (paper section 4.1).

Each sample is one patch (512 px at 0.2 m in the real data; the size is read
from the files). Its LR context is the ``k`` times larger window centred on
the patch (k = 2: the central 1024 px of the 1536 px 3x3 neighbourhood),
assembled from the geographic neighbours of the same domain-year, black
(labels 255) where a neighbour is missing, and averaged (labels: nearest)
down to the patch size. Labels are the 19 COSIA classes 0..18; 15..18 have
loss weight 0 and are not evaluated (``spec.flairhub_classes()``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from rasterio.windows import Window

from ..errors import ConfigError, DatasetError
from ..geo.context import area_downsample, nearest_downsample
from ..geo.grid import context_window
from ..geo.handles import RasterHandles
from ..spec import IGNORE_INDEX, InputSpec, flairhub_classes
from .flairhub_index import Patch, PatchIndex, build_index, context_reach
from .flairhub_splits import (
    DEFAULT_SPLIT_COLUMN,
    is_list_file,
    read_id_list,
    read_split_table,
)
from .handles import open_raster
from .sample import CaswitDataset, SampleGeo, check_label_values


def select_patches(index: PatchIndex, root: Path, split: str | Path | None, split_column: str) -> list[int]:
    """Indexes into ``index`` of the patches of ``split`` (None/"all" = every patch)."""
    if split is None or str(split) == "all":
        return list(range(len(index)))
    if is_list_file(split):
        ids, source = read_id_list(split, root), str(split)
    else:
        ids, source = read_split_table(root, str(split), split_column), f"split {split!r}"
    found = [index.by_id[i] for i in dict.fromkeys(ids) if i in index.by_id]
    if not found:
        raise DatasetError(f"{root}: none of the {len(ids)} patches of {source} is in the tree (e.g. {ids[0]})")
    if len(found) < len(set(ids)):
        warnings.warn(f"{root}: {len(set(ids)) - len(found)} of the {len(set(ids))} patches of {source} are not in the tree", stacklevel=3)
    return sorted(found)


class FlairHubDataset(CaswitDataset):
    """FLAIR-HUB ``AERIAL_RGBI`` patches, HR patch + LR geo-context, COSIA labels.

    Args:
        root: folder holding the ``<DOMAIN>-<YEAR>_AERIAL_RGBI`` folders (and ``GLOBAL_ALL_MTD``).
        split: "train" | "val" | "test" (from the split GeoPackage), "all"/None,
            or a path to a .csv/.txt list of patch ids.
        input_spec: bands (RGB = 1, 2, 3 by default), scaling, normalisation,
            context factor; ``tile_size`` must equal the patch size.
        labels: False for unlabelled use (pretraining): label tensors all 255.
        split_column: split scheme column of the GeoPackage.
        transform: applied to each finished sample dict (e.g. ``Augment``).
        cache_dir: where to cache the patch index (default: beside the data).
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
    ) -> None:
        self.root = Path(root)
        self.input_spec = input_spec or InputSpec()
        self.classes = flairhub_classes()
        self.labelled = labels
        self.transform = transform
        self.index = build_index(self.root, cache_dir)
        self.selection = select_patches(self.index, self.root, split, split_column)
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
            if labels and p.label is None:
                raise DatasetError(f"{p.image}: no label patch ({p.patch_id} has no AERIAL_LABEL-COSIA file)")
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
        label_canvas = np.full((ctx.height, ctx.width), IGNORE_INDEX, dtype=np.uint8)  # (kT, kT)
        hr = label = None
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
                canvas[(slice(None), *dst)] = src.read(bands, window=src_window)
                if with_labels and q.label is not None:
                    part = self._open_label(q).read(1, window=src_window)
                    check_label_values(part, len(self.classes), q.label)
                    label_canvas[dst] = part
        r, c = -ctx.row_off, -ctx.col_off  # the patch inside the context canvas
        hr = canvas[:, r : r + size, c : c + size].copy()
        lr = area_downsample(canvas, k)
        if with_labels:
            label = label_canvas[r : r + size, c : c + size].copy()
            lr_label = np.ascontiguousarray(nearest_downsample(label_canvas, k))
        else:
            lr_label = None
        return hr, lr, label, lr_label, p.patch_id
