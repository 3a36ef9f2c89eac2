"""``samples.png``: a few training tiles with their labels and LR context, to see that labels fit the imagery.

One row per tile: the HR tile, its labels over it, the LR context with the
tile's footprint outlined, the LR labels over the context. Labels are drawn
in the class colours, half transparent; ignored pixels (255) are left
clear. Tiles are spread evenly over the training positions, the same ones
every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from rasterio.windows import Window

from caswit_geo.core.spec import IGNORE_INDEX, ClassTable
from caswit_geo.safeio.writes import save_figure

COLUMNS = ("HR tile", "HR labels", "LR context (tile outlined)", "LR labels")
LABEL_ALPHA = 0.55


def to_display(x: np.ndarray, scale: float) -> np.ndarray:
    """(C, H, W) raw values -> (H, W, 3) in [0, 1] (first three bands, or the first one as grey)."""
    u = np.clip(np.asarray(x, np.float32) / scale, 0, 1)
    u = u[:3] if u.shape[0] >= 3 else np.repeat(u[:1], 3, axis=0)
    return u.transpose(1, 2, 0)


def overlay(image: np.ndarray, label: np.ndarray, classes: ClassTable) -> np.ndarray:
    """``image`` (H, W, 3) with the class colours of ``label`` (H, W) blended in; 255 left as is."""
    palette = np.zeros((256, 3), np.float32)
    for c in classes.classes:
        palette[c.id] = np.asarray(c.color, np.float32) / 255
    known = (label != IGNORE_INDEX)[..., None]
    blended = (1 - LABEL_ALPHA) * image + LABEL_ALPHA * palette[label]
    return np.where(known, blended, image)


def sample_rows(dataset, count: int) -> list[tuple[str, list[np.ndarray]]]:
    """(tile id, four images) for ``count`` tiles spread over the dataset's training positions."""
    spec = dataset.input_spec
    positions = dataset.positions
    picks = np.unique(np.linspace(0, len(positions) - 1, min(count, len(positions))).round().astype(int))
    rows = []
    for i in picks:
        row, col = (int(v) for v in positions[i])
        hr, lr, label, lr_label, sample_id = dataset.read_window(Window(col, row, spec.tile_size, spec.tile_size))
        hr_rgb, lr_rgb = to_display(hr, spec.scale), to_display(lr, spec.scale)
        rows.append((sample_id, [hr_rgb, overlay(hr_rgb, label, dataset.classes), lr_rgb,
                                 overlay(lr_rgb, lr_label, dataset.classes)]))
    return rows


def save_samples_figure(dataset, path: str | Path, count: int = 4, seed: int = 0) -> Path:
    """Draw :func:`sample_rows` of ``dataset`` (a vector dataset) with a class legend to ``path``."""
    rows = sample_rows(dataset, count)
    spec = dataset.input_spec
    t, k = spec.tile_size, spec.context_factor
    fig = Figure(figsize=(2.6 * len(COLUMNS), 2.6 * len(rows) + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(COLUMNS), squeeze=False)
    for r, (sample_id, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= 2:  # the HR tile covers the central T/k x T/k of the LR image
                side = t / k
                ax.add_patch(Rectangle(((t - side) / 2 - 0.5, (t - side) / 2 - 0.5), side, side, fill=False,
                                       edgecolor="yellow", linewidth=1.2))
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize="small")
        axes[r][0].set_ylabel(sample_id, fontsize="x-small")
    handles = [Patch(color=np.asarray(c.color) / 255, label=f"{c.id} {c.name}") for c in dataset.classes.classes]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize="small")
    fig.suptitle("training tiles, labels and LR context (255 = clear)")
    return save_figure(fig, path)
