"""Training curves as a PNG, redrawn after every epoch.

Matplotlib's object API on an Agg canvas (no pyplot): no global backend
switch, no display needed, nothing left open between epochs.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from caswit_geo.safeio.writes import save_figure

# (column, label) per panel; panels whose columns are all absent are left out.
PANELS = (
    ("loss", (("train_loss", "train"), ("val_loss", "val"))),
    ("validation", (("val_miou", "mIoU"), ("val_mf1", "mF1"), ("val_oa", "OA"))),
    ("learning rate", (("lr", "lr"),)),
)


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(row["epoch"])
            ys.append(v)
    return xs, ys


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Draw the epochs of ``history`` (rows of the run log) to ``path``; None when empty."""
    panels = [(name, lines) for name, lines in PANELS if any(_series(history, k)[0] for k, _ in lines)]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, lines) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key, label in lines:
            xs, ys = _series(history, key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        if name == "learning rate":
            ax.set_yscale("log")
        else:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
