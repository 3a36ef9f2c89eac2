"""Validity of raster pixels: the GDAL dataset mask, decided once per dataset.

Validity follows the GDAL dataset mask (nodata value, alpha band, internal
mask) with one exception: a band that is tagged alpha but read by the model
as data (RGBI files whose NIR band is tagged alpha) is not used as a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window


@dataclass(frozen=True)
class MaskRule:
    """How validity is read from one open dataset (decided once: rasterio builds enums per call)."""

    kind: str  # "dataset" (read the per-dataset mask band), "nodata" (compare values) or "none"
    nodata: tuple[float | None, ...] = ()  # per requested band, for "nodata"


def mask_rule(src: rasterio.io.DatasetReader, bands: Sequence[int], alpha: bool = True) -> MaskRule:
    """The GDAL dataset-mask rule of ``src`` for ``bands`` (see :func:`valid_mask`).

    ``alpha=False``: a band tagged alpha is never the mask, even when not read
    (data sets whose 4th band is always near-infrared).
    """
    flags = src.mask_flag_enums[0]
    alpha_bands = {i + 1 for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha}
    alpha_read = bool(alpha_bands & set(bands)) or not alpha
    if MaskFlags.per_dataset in flags and not (MaskFlags.alpha in flags and alpha_read):
        return MaskRule("dataset")
    nodata = tuple(src.nodatavals[b - 1] for b in bands)
    if all(v is None for v in nodata):
        return MaskRule("none")
    return MaskRule("nodata", nodata)


def valid_mask(
    src: rasterio.io.DatasetReader,
    window: Window,
    bands: Sequence[int],
    data: np.ndarray | None = None,
    rule: MaskRule | None = None,
) -> np.ndarray:
    """(h, w) bool: True where ``window`` (inside the raster) holds valid data.

    The GDAL dataset mask: a per-dataset mask (internal mask, alpha band, the
    mask band of our VRTs) if present and not an alpha band the model reads
    as data; else the nodata value: valid where any of ``bands`` differs
    from it; else everything valid. ``data``: the (C, h, w) values of
    ``bands`` already read, to avoid reading them twice; ``rule``: the
    dataset's :func:`mask_rule`, when the caller keeps it.
    """
    h, w = int(window.height), int(window.width)
    rule = rule or mask_rule(src, bands)
    if rule.kind == "dataset":
        return src.read_masks(1, window=window) > 0
    if rule.kind == "none":
        return np.ones((h, w), dtype=bool)
    if data is None:
        data = src.read(list(bands), window=window)
    valid = np.zeros((h, w), dtype=bool)
    for i, v in enumerate(rule.nodata):
        valid |= True if v is None else data[i] != v
    return valid


