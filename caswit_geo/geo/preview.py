"""Quick-look PNG of a prediction: the input RGB beside the coloured classes, with a legend.

Both rasters are read decimated (GDAL uses their overviews), so a preview
of a mosaic of any size costs a screen's worth of pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from caswit_geo.core.spec import IGNORE_INDEX, ClassTable
from caswit_geo.safeio.writes import save_figure


def _decimated_shape(width: int, height: int, max_side: int) -> tuple[int, int]:
    f = max(1.0, max(width, height) / max_side)
    return max(1, round(height / f)), max(1, round(width / f))


def _stretch(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) floats in [0, 1], 2-98 % stretch over the valid pixels."""
    rgb = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
    rgb = rgb.astype(np.float32)
    vals = rgb[:, valid] if valid.any() else rgb.reshape(3, -1)
    lo, hi = np.percentile(vals, 2), np.percentile(vals, 98)
    out = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)
    out[~valid] = 1.0  # nodata drawn white
    return out


def write_preview(
    class_raster: str | Path,
    png: str | Path,
    classes: ClassTable,
    image: str | Path | None = None,
    bands: tuple[int, ...] = (1, 2, 3),
    max_side: int = 720,
    dpi: int = 100,
    title: str | None = None,
    class_pixels: np.ndarray | None = None,
    window=None,
) -> Path:
    """Write ``png``: [input RGB |] class map, legend with each class's share of the mapped area.

    ``title``: default the class raster's file name (pass the destination's
    name when ``class_raster`` is a temporary file). ``class_pixels``: pixels per class id counted
    on the full-resolution map (the legend's shares then equal predict's summary); None counts the
    decimated map drawn. ``window``: the part of ``image`` under the class raster (None: all of it).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with rasterio.open(class_raster) as src:
        shape = _decimated_shape(src.width, src.height, max_side)
        cls = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    lut = np.ones((256, 4), np.float32)  # nodata / unknown ids: transparent white
    lut[:, 3] = 0.0
    for c in classes.classes:
        lut[c.id] = (*(np.asarray(c.color) / 255.0), 1.0)
    panels = []
    if image is not None:
        with rasterio.open(image) as src:
            img = src.read(list(bands[:3]), out_shape=(min(3, len(bands)), *shape), resampling=Resampling.average,
                           window=window)
            valid = src.dataset_mask(out_shape=shape, resampling=Resampling.nearest, window=window) > 0
        panels.append(("input", _stretch(img, valid)))
    panels.append(("classes", lut[cls]))

    if class_pixels is None:
        class_pixels = np.bincount(cls[cls != IGNORE_INDEX].ravel(), minlength=256)
    counts = np.asarray(class_pixels, np.int64)[: len(classes)]
    total = max(int(counts.sum()), 1)
    h, w = shape
    panel_w = 7.0
    fig = Figure(figsize=(panel_w * len(panels) + 2.6, panel_w * h / w + 0.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, data) in zip(axes, panels):
        ax.imshow(data, interpolation="nearest")
        ax.set_title(panel)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Patch(facecolor=np.asarray(c.color) / 255.0, edgecolor="black", label=f"{c.name} ({100 * counts[c.id] / total:.1f} %)")
        for c in classes.classes
    ]
    fig.legend(handles=handles, loc="outside right center", frameon=False, title="class (share of area)")
    fig.suptitle(title or Path(class_raster).name)
    return save_figure(fig, png, dpi=dpi)
