"""Evaluation reports: per-class table, JSON report, confusion matrix as CSV and PNG.

Scores are fractions in [0, 1]; a class the protocol skips (absent from
ground truth and prediction) is ``null`` in JSON. The CSV holds the full
accumulated matrix (rows = ground truth, columns = prediction, pixel
counts); the PNG shows the evaluated classes, each row normalised to 1
(so its diagonal is the per-class recall).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from caswit_geo.core.spec import ClassTable
from caswit_geo.engine.evaluate.metrics import Scores
from caswit_geo.safeio.writes import atomic_path, save_figure, write_text


def _num(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def per_class_rows(scores: Scores, classes: ClassTable) -> list[dict]:
    """One dict per evaluated class: id, name, iou, f1, precision, recall, biou, pixel counts."""
    rows = []
    for n, cid in enumerate(scores.ids):
        rows.append(
            {
                "id": cid,
                "name": classes.names[cid] if cid < len(classes) else f"class_{cid}",
                "iou": _num(scores.iou[n]),
                "f1": _num(scores.f1[n]),
                "precision": _num(scores.precision[n]),
                "recall": _num(scores.recall[n]),
                "biou": None if scores.biou is None else _num(scores.biou[n]),
                "gt_pixels": int(scores.gt_pixels[n]),
                "pred_pixels": int(scores.pred_pixels[n]),
            }
        )
    return rows


def write_json(path: Path, report: dict) -> Path:
    write_text(path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


def write_confusion_csv(path: Path, matrix: np.ndarray, classes: ClassTable) -> Path:
    names = [classes.names[i] if i < len(classes) else f"class_{i}" for i in range(matrix.shape[0])]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ground_truth \\ prediction", *names])
        for name, row in zip(names, matrix):
            w.writerow([name, *(int(v) for v in row)])
    return path


def plot_confusion(path: Path, matrix: np.ndarray, classes: ClassTable, ids: tuple[int, ...], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = matrix[np.ix_(ids, ids)].astype(np.float64)
    rows = sub.sum(1, keepdims=True)
    norm = np.divide(sub, rows, out=np.zeros_like(sub), where=rows > 0)
    names = [classes.names[i] if i < len(classes) else f"class_{i}" for i in ids]
    n = len(ids)
    size = max(4.0, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size), constrained_layout=True)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if n <= 20:
        for r in range(n):
            for c in range(n):
                if sub[r, c]:
                    ax.text(c, r, f"{norm[r, c]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[r, c] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path
