"""SimMIM reconstructions as a PNG, like the paper's Fig. 2.

One row per sample: the HR tile, the HR tile with its random mask, the LR
context with its centred mask, and the reconstruction (predicted pixels in
the masked HR cells, the visible pixels as given, as in MAE's figures:
the loss never looks at the visible ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from caswit_geo.core.spec import InputSpec
from caswit_geo.model.simmim import PATCH_SIZE
from caswit_geo.safeio.writes import save_figure

COLUMNS = ("HR tile", "HR, random mask", "LR context, centred mask", "reconstruction")
MASK_GREY = 0.5


def to_rgb(x: torch.Tensor, spec: InputSpec) -> np.ndarray:
    """(C, H, W) normalised -> (H, W, 3) values in [0, 1] (first three bands, or the first one as grey)."""
    mean = torch.tensor(spec.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(spec.std, dtype=torch.float32)[:, None, None]
    u = (x.detach().float().cpu() * std + mean).clamp(0, 1)
    u = u[:3] if u.shape[0] >= 3 else u[:1].expand(3, -1, -1)
    return u.permute(1, 2, 0).numpy()


def pixel_mask(token_mask: torch.Tensor) -> np.ndarray:
    """(T/4, T/4) token mask (1 = masked) -> (T, T) bool pixel mask."""
    m = token_mask.repeat_interleave(PATCH_SIZE, 0).repeat_interleave(PATCH_SIZE, 1)
    return m.bool().cpu().numpy()


def figure_rows(hr, lr, rec, hr_mask, lr_mask, spec: InputSpec) -> list[list[np.ndarray]]:
    """Batched tensors -> rows of four (T, T, 3) images (see the module docstring)."""
    rows = []
    for i in range(hr.shape[0]):
        original, context, predicted = to_rgb(hr[i], spec), to_rgb(lr[i], spec), to_rgb(rec[i], spec)
        hm, lm = pixel_mask(hr_mask[i])[..., None], pixel_mask(lr_mask[i])[..., None]
        rows.append([
            original,
            np.where(hm, MASK_GREY, original),
            np.where(lm, MASK_GREY, context),
            np.where(hm, predicted, original),
        ])
    return rows


def save_reconstruction_figure(rows: list[list[np.ndarray]], path: str | Path, title: str = "") -> Path:
    n = len(rows)
    fig = Figure(figsize=(2.4 * len(COLUMNS), 2.4 * n + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, len(COLUMNS), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize="small")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
