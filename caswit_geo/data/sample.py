"""The sample contract shared by every dataset, and the georeferencing of a sample.

A sample is a dict (collated by the default DataLoader collate):

    "hr"        float32 (C, T, T)  HR tile, normalised by ``InputSpec.normalize``
    "lr"        float32 (C, T, T)  LR context: the kT window centred on the tile,
                                   area-averaged to T, black (0 before normalising) outside
    "label"     int64   (T, T)     class ids, 255 = ignore (all 255 when unlabelled)
    "lr_label"  int64   (T, T)     labels of the LR context (nearest), 255 outside
    "id"        str                patch id or "<image>/r<row>_c<col>"

Where a sample lies is not part of the dict (it does not collate well):
``dataset.georef(i)`` returns a :class:`SampleGeo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from caswit_geo.core.errors import DatasetError
from caswit_geo.core.spec import IGNORE_INDEX, ClassTable, InputSpec
from caswit_geo.data.coverage import SplitCoverage


@dataclass(frozen=True)
class SampleGeo:
    """Where sample i's HR tile lies, enough to write its prediction into a raster.

    ``image_id`` names the output raster (the patch id for FLAIR-HUB, the
    image name otherwise); ``window`` is the tile in that image's pixel grid
    (it may extend past the image: crop with ``clip_window``); ``width``,
    ``height``, ``transform`` and ``crs`` describe the whole image
    (``crs`` None and an identity transform for non-georeferenced PNGs).
    """

    image_id: str
    window: Window
    width: int
    height: int
    transform: Affine
    crs: CRS | None


def make_sample(
    hr: np.ndarray,
    lr: np.ndarray,
    label: np.ndarray | None,
    lr_label: np.ndarray | None,
    sample_id: str,
    spec: InputSpec,
) -> dict:
    """Raw (C, T, T) imagery and (T, T) labels (None = unlabelled) -> the sample dict."""
    t_h, t_w = hr.shape[-2:]
    if label is None:
        label = np.full((t_h, t_w), IGNORE_INDEX, np.uint8)
    if lr_label is None:
        lr_label = np.full((t_h, t_w), IGNORE_INDEX, np.uint8)
    return {
        "hr": torch.from_numpy(np.ascontiguousarray(spec.normalize(hr))),
        "lr": torch.from_numpy(np.ascontiguousarray(spec.normalize(lr))),
        "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
        "lr_label": torch.from_numpy(np.ascontiguousarray(lr_label, dtype=np.int64)),
        "id": sample_id,
    }


class CaswitDataset(torch.utils.data.Dataset):
    """Base of the three datasets: ``classes``, ``input_spec``, ``labelled``, ``georef(i)``.

    Subclasses implement ``__len__``, ``read(i)`` -> (hr, lr, label, lr_label, id)
    raw arrays, ``georef(i)`` and ``image_ids()``, and set ``coverage`` when
    they read a split list. Samples of one image are
    contiguous, so predictions can be assembled image after image. ``transform`` (e.g. :class:`~caswit_geo.data.augment.Augment`)
    is applied to the finished sample dict.
    """

    classes: ClassTable
    input_spec: InputSpec
    labelled: bool
    transform: Callable[[dict], dict] | None
    coverage: SplitCoverage | None = None  # how much of the requested split is on disk (None = not tracked)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, str]:
        raise NotImplementedError

    def georef(self, index: int) -> SampleGeo:
        raise NotImplementedError

    def image_ids(self) -> list[str]:
        """The ``SampleGeo.image_id`` values, in sample order, each once."""
        raise NotImplementedError

    def input_files(self) -> list:
        """Every file the samples are read from (imagery, labels, context neighbours): no output may replace one."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        hr, lr, label, lr_label, sample_id = self.read(index)
        sample = make_sample(hr, lr, label, lr_label, sample_id, self.input_spec)
        return self.transform(sample) if self.transform is not None else sample


def check_label_values(label: np.ndarray, num_classes: int, path) -> None:
    """Raise DatasetError naming ``path`` when a label is neither a class id nor 255."""
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bad.any():
        raise DatasetError(
            f"{path}: label value {int(label[bad][0])} is not a class id 0..{num_classes - 1} nor 255 (ignore)"
        )
