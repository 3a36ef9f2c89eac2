"""Tiles of whole images (URUR PNGs, user GeoTIFF mosaics) with their LR context.

Every image is cut on a :class:`~caswit_geo.geo.grid.TileGrid` of stride T
(the paper's protocol, no overlap); each tile gets its context from the same
image with the rules of ``predict`` (``geo/context.py``: black imagery and
255 labels outside the image, image nodata black, HR and LR labels 255
wherever the image is nodata). For training,
``random_crops`` draws each tile's position uniformly instead (the tile
inside the image when the image is at least T wide and high).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from caswit_geo.core.errors import DatasetError
from caswit_geo.core.spec import IGNORE_INDEX, ClassTable, InputSpec
from caswit_geo.data.open_raster import open_raster
from caswit_geo.data.sample import CaswitDataset, SampleGeo, check_label_values
from caswit_geo.geo.context import read_label_and_context, read_tile_context_valid
from caswit_geo.geo.grid import TileGrid
from caswit_geo.geo.raster_cache import RasterHandles


@dataclass(frozen=True)
class ImagePair:
    """One image, its label raster (None = unlabelled) and its grid (filled by the dataset)."""

    name: str
    image: Path
    label: Path | None
    width: int = 0
    height: int = 0
    count: int = 0
    transform: Affine = Affine.identity()
    crs: CRS | None = None
    dtype: str = ""  # of the image's bands


def _read_pair_header(pair: ImagePair, max_band: int) -> ImagePair:
    """Fill size and georeferencing; check the label raster against the image."""
    with open_raster(pair.image) as src:
        width, height, count, transform, crs = src.width, src.height, src.count, src.transform, src.crs
        dtype = src.dtypes[0]
    if count < max_band:
        raise DatasetError(f"{pair.image}: {count} bands, band {max_band} requested")
    if pair.label is not None:
        with open_raster(pair.label) as lab:
            if lab.count != 1:
                raise DatasetError(f"{pair.label}: a label raster has 1 band of class ids, found {lab.count}")
            if (lab.width, lab.height) != (width, height):
                raise DatasetError(
                    f"{pair.label}: {lab.width}x{lab.height} px, but its image {pair.image} is {width}x{height}"
                )
            if not lab.transform.almost_equals(transform):
                raise DatasetError(f"{pair.label}: geotransform differs from its image {pair.image}")
            if (lab.crs is None) != (crs is None) or (crs is not None and lab.crs != crs):
                raise DatasetError(f"{pair.label}: CRS {lab.crs} differs from its image's ({crs}) {pair.image}")
            if lab.dtypes[0] != "uint8":
                raise DatasetError(f"{pair.label}: labels must be uint8, found {lab.dtypes[0]}")
    return ImagePair(pair.name, pair.image, pair.label, width, height, count, transform, crs, dtype)


class RasterTileDataset(CaswitDataset):
    """T x T tiles of a list of images, each with its kT context.

    Args:
        pairs: images and label rasters (sizes are read here, once).
        classes: the class table (label values above K-1 other than 255 are errors).
        input_spec: bands, scaling, normalisation, tile size T, context factor k.
        random_crops: draw tile positions at random (training) instead of the grid.
        crops_per_image: with ``random_crops``, tiles per image and epoch;
            None = as many as the image's grid has (so large images weigh more).
        transform: applied to each finished sample dict (e.g. ``Augment``).
    """

    def __init__(
        self,
        pairs: list[ImagePair],
        classes: ClassTable,
        input_spec: InputSpec,
        *,
        random_crops: bool = False,
        crops_per_image: int | None = None,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        if not pairs:
            raise DatasetError("no image to read")
        self.classes = classes
        self.input_spec = input_spec
        self.transform = transform
        self.random_crops = random_crops
        max_band = max(input_spec.bands)
        self.images = [_read_pair_header(p, max_band) for p in pairs]
        self.labelled = all(p.label is not None for p in self.images)
        tile = input_spec.tile_size
        rows = []  # (image index, row_off, col_off)
        for n, p in enumerate(self.images):
            if random_crops and crops_per_image is not None:
                rows += [(n, 0, 0)] * crops_per_image
            else:
                rows += [(n, int(w.row_off), int(w.col_off)) for _, _, w in TileGrid(p.width, p.height, tile).windows()]
        self._tiles = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        self._handles = RasterHandles(opener=open_raster)

    def __len__(self) -> int:
        return len(self._tiles)

    def window(self, index: int) -> Window:
        """The HR window of sample ``index`` (random position with ``random_crops``)."""
        n, row, col = (int(v) for v in self._tiles[index])
        tile = self.input_spec.tile_size
        if self.random_crops:
            p = self.images[n]
            # torch's RNG is seeded differently in every DataLoader worker.
            row = int(torch.randint(0, max(p.height - tile, 0) + 1, ()).item())
            col = int(torch.randint(0, max(p.width - tile, 0) + 1, ()).item())
        return Window(col, row, tile, tile)

    def image_ids(self) -> list[str]:
        return [p.name for p in self.images]

    def input_files(self) -> list[Path]:
        return [f for p in self.images for f in (p.image, p.label) if f is not None]

    def georef(self, index: int) -> SampleGeo:
        n, row, col = (int(v) for v in self._tiles[index])
        p = self.images[n]
        tile = self.input_spec.tile_size
        return SampleGeo(p.name, Window(col, row, tile, tile), p.width, p.height, p.transform, p.crs)

    def read(self, index: int):
        n = int(self._tiles[index, 0])
        p = self.images[n]
        window = self.window(index)
        k = self.input_spec.context_factor
        hr, lr, hr_valid, lr_valid = read_tile_context_valid(self._handles.get(p.image), window, self.input_spec.bands, k)
        if hr.dtype.kind == "f" and not (np.isfinite(hr).all() and np.isfinite(lr).all()):
            raise DatasetError(
                f"{p.image}: NaN or infinite values near row {int(window.row_off)}, col {int(window.col_off)} "
                "that are not nodata; declare them nodata (e.g. gdal_edit.py -a_nodata nan) or fix the image"
            )
        label = lr_label = None
        if p.label is not None:
            label, lr_label = read_label_and_context(self._handles.get(p.label), window, k)
            check_label_values(lr_label, len(self.classes), p.label)
            check_label_values(label, len(self.classes), p.label)
            # no prediction is made where the image is nodata; LR pixels that are (partly) padding or
            # nodata are black, so their labels would teach the LR head to read black as a class
            label[~hr_valid] = IGNORE_INDEX
            lr_label[~lr_valid] = IGNORE_INDEX
        sample_id = f"{p.name}/r{int(window.row_off)}_c{int(window.col_off)}"
        return hr, lr, label, lr_label, sample_id
