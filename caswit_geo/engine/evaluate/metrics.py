"""Segmentation metrics: confusion matrix, IoU/F1/OA, Boundary IoU, dataset protocols.

Everything is accumulated over a whole split (never averaged per image):
a :class:`ConfusionMatrix` (rows = ground truth, cols = prediction) and
per-class boundary intersections/unions (:class:`BoundaryStats`). Scores
are computed at the end by a :class:`Protocol`, which fixes the evaluated
classes and what an undefined (0/0) score becomes:

- FLAIR-HUB (IGN's official code): 19x19 matrix, sub-matrix [0:15, 0:15]
  kept (pixels labelled or predicted 15..18 drop out), NaN -> 0 and still
  counted, plain means over the 15 classes.
- URUR (mmsegmentation style): 8 classes, a class absent from both ground
  truth and prediction is skipped (NaN, ``nanmean``).
- generic (user ``tiles`` data): the classes with loss weight > 0 (all when
  no weights), skipped when absent, like URUR.

Boundary IoU follows Cheng et al., "Boundary IoU: Improving Object-Centric
Image Segmentation Evaluation" (CVPR 2021) and their boundary-iou-api.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from caswit_geo.core.spec import IGNORE_INDEX, ClassTable

# ---------------------------------------------------------------- confusion matrix


def _to_numpy(x) -> np.ndarray:
    """numpy array or torch tensor (any device) -> numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class ConfusionMatrix:
    """(K, K) pixel counts, rows = ground truth, cols = prediction.

    Ground-truth ``ignore_index`` pixels are skipped. A prediction equal to
    ``ignore_index`` (no prediction, e.g. nodata in a class raster) where the
    ground truth is valid is skipped too and counted in ``unpredicted``.
    Any other value outside 0..K-1 raises ``ValueError``.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if not 1 <= num_classes < 256:
            raise ValueError(f"num_classes must be in 1..255, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.unpredicted_by_class = np.zeros(num_classes, dtype=np.int64)  # per ground-truth class

    def update(self, target, pred) -> None:
        """Add pixels; ``target`` and ``pred`` have the same shape (any: (H, W), (B, H, W))."""
        target = _to_numpy(target).astype(np.int64, copy=False).ravel()
        pred = _to_numpy(pred).astype(np.int64, copy=False).ravel()
        if target.shape != pred.shape:
            raise ValueError(f"target and prediction sizes differ: {target.size} vs {pred.size}")
        k = self.num_classes
        labelled = target != self.ignore_index
        bad_t = labelled & ((target < 0) | (target >= k))
        if bad_t.any():
            raise ValueError(f"label value {int(target[bad_t][0])} outside 0..{k - 1} (and not {self.ignore_index})")
        predicted = pred != self.ignore_index
        bad_p = predicted & ((pred < 0) | (pred >= k))
        if bad_p.any():
            raise ValueError(f"predicted value {int(pred[bad_p][0])} outside 0..{k - 1}")
        gaps = labelled & ~predicted
        if gaps.any():
            self.unpredicted_by_class += np.bincount(target[gaps], minlength=k)
        keep = labelled & predicted
        idx = target[keep] * k + pred[keep]
        self.matrix += np.bincount(idx, minlength=k * k).reshape(k, k)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix
        self.unpredicted_by_class += other.unpredicted_by_class

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    @property
    def unpredicted(self) -> int:
        """Labelled pixels without a prediction."""
        return int(self.unpredicted_by_class.sum())


# ---------------------------------------------------------------- per-class scores


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (no warnings)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """diag / (row + col - diag); NaN for a class absent from both."""
    tp = np.diag(cm)
    return _div(tp, cm.sum(1) + cm.sum(0) - tp)


def precision_per_class(cm: np.ndarray) -> np.ndarray:
    """diag / col (NaN when never predicted)."""
    return _div(np.diag(cm), cm.sum(0))


def recall_per_class(cm: np.ndarray) -> np.ndarray:
    """diag / row (NaN when absent from the ground truth)."""
    return _div(np.diag(cm), cm.sum(1))


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """2 PR / (P + R) written as 2 diag / (row + col).

    The same value wherever P and R are defined and not both 0; 0 (not NaN)
    when the class is only in the ground truth or only in the prediction,
    NaN when absent from both.
    """
    return _div(2 * np.diag(cm), cm.sum(1) + cm.sum(0))


def overall_accuracy(cm: np.ndarray) -> float:
    """trace / sum (NaN for an empty matrix)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


# ---------------------------------------------------------------- boundary IoU


def boundary_dilation(height: int, width: int, ratio: float = 0.02) -> int:
    """Erosion depth d = max(1, round(ratio * diagonal)) in pixels (14 for 512 x 512)."""
    return max(1, int(round(ratio * math.sqrt(height**2 + width**2))))


def _running_max(x: np.ndarray, window: int, axis: int) -> np.ndarray:
    """Max over every run of ``window`` values along ``axis`` (that axis shrinks by window - 1).

    Doubling: after j steps ``m[i]`` is the max of ``x[i : i + 2**j]``; two
    overlapping power-of-two runs then cover any window. O(log window)
    whole-array operations instead of O(window).
    """

    def cut(a: np.ndarray, start: int, stop: int) -> np.ndarray:
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, stop)
        return a[tuple(index)]

    m, span = x, 1
    while span * 2 <= window:
        n = m.shape[axis]
        m = np.maximum(cut(m, 0, n - span), cut(m, span, n))
        span *= 2
    out_len = x.shape[axis] - window + 1
    return np.maximum(cut(m, 0, out_len), cut(m, window - span, window - span + out_len))


def boundary_band(labels: np.ndarray, d: int) -> np.ndarray:
    """(..., H, W) labels -> (..., H, W) bool: pixel lies in the boundary band of its own class.

    For the binary mask of class c (Cheng et al.): zero-pad by 1 px, erode
    d times with a 3x3 kernel, band = mask - eroded. Eroding d times with
    3x3 is one erosion with a (2d+1) square, and the zero pad makes
    everything outside the image count as "not c". So a pixel of class c is
    in the band iff its (2d+1)^2 window leaves the image or holds another
    value. One min and one max filter then give the bands of all classes at
    once: band of c = band & (labels == c).
    """
    x = labels.astype(np.int16)
    w = 2 * d + 1
    # Outside the image: 256 for the max filter and -1 for the min filter, both differ from every label.
    pad = [(0, 0)] * (x.ndim - 2) + [(d, d), (d, d)]
    hi = np.pad(x, pad, constant_values=256)
    lo = np.pad(-x, pad, constant_values=1)  # min filter = -max of the negated labels
    wmax = _running_max(_running_max(hi, w, -1), w, -2)
    wmin = -_running_max(_running_max(lo, w, -1), w, -2)
    return (wmax != x) | (wmin != x)


class BoundaryStats:
    """Per-class boundary intersections and unions, summed over a split.

    ``update`` takes one or a batch of predictions; d is derived from each
    prediction's own size (the tile or patch diagonal). Pixels that the
    confusion matrix would not count (``valid`` False: ignored ground truth,
    classes outside the protocol) are set to ``ignore_index`` in both
    ground truth and prediction before the bands are drawn, so both see the
    same edge there, and are never counted themselves.
    """

    def __init__(self, num_classes: int, ratio: float = 0.02, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ratio = ratio
        self.ignore_index = ignore_index
        self.intersection = np.zeros(num_classes, dtype=np.int64)
        self.union = np.zeros(num_classes, dtype=np.int64)
        self.dilation: int | None = None  # d of the last update, for reports

    def update(self, target, pred, valid=None) -> None:
        """``target``, ``pred``: (H, W) or (B, H, W) class ids; ``valid``: same-shape bool or None."""
        target = _to_numpy(target)
        pred = _to_numpy(pred)
        if target.ndim == 2:
            target, pred = target[None], pred[None]
            valid = None if valid is None else _to_numpy(valid)[None]
        if valid is None:
            valid = (target != self.ignore_index) & (pred != self.ignore_index)
        else:
            valid = _to_numpy(valid).astype(bool)
        gt = np.where(valid, target, self.ignore_index)
        pr = np.where(valid, pred, self.ignore_index)
        h, w = gt.shape[-2:]
        d = boundary_dilation(h, w, self.ratio)
        self.dilation = d
        k = self.num_classes
        gt_band = boundary_band(gt, d) & valid
        pr_band = boundary_band(pr, d) & valid
        g = np.where(gt_band, gt, k).astype(np.int64).ravel()  # k = not in any band
        p = np.where(pr_band, pr, k).astype(np.int64).ravel()
        gt_count = np.bincount(g, minlength=k + 1)[:k]
        pr_count = np.bincount(p, minlength=k + 1)[:k]
        both = np.bincount(g[(g == p) & (g < k)], minlength=k + 1)[:k]
        self.intersection += both
        self.union += gt_count + pr_count - both

    def merge(self, other: "BoundaryStats") -> None:
        self.intersection += other.intersection
        self.union += other.union

    def iou(self) -> np.ndarray:
        """Per-class boundary IoU, NaN where the union is empty."""
        return _div(self.intersection, self.union)


# ---------------------------------------------------------------- protocols


@dataclass(frozen=True)
class Protocol:
    """How a dataset's official metric turns a confusion matrix into scores.

    Args:
        name: "flairhub", "urur" or "generic".
        num_classes: K, the size of the accumulated confusion matrix.
        eval_ids: the classes kept (sub-matrix [eval_ids][:, eval_ids]); pixels
            labelled or predicted as any other class drop out entirely.
        absent: "zero" = an undefined score (0/0) becomes 0 and still counts
            in the means (FLAIR-HUB); "skip" = it stays NaN and means are
            ``nanmean`` over the classes present in ground truth or prediction.
    """

    name: str
    num_classes: int
    eval_ids: tuple[int, ...]
    absent: str = "skip"

    def __post_init__(self) -> None:
        if self.absent not in ("zero", "skip"):
            raise ValueError(f"absent must be 'zero' or 'skip', got {self.absent!r}")
        if not self.eval_ids or min(self.eval_ids) < 0 or max(self.eval_ids) >= self.num_classes:
            raise ValueError(f"eval_ids {self.eval_ids} not within 0..{self.num_classes - 1}")

    def valid_mask(self, target, pred) -> np.ndarray:
        """Pixels the protocol counts: both ground truth and prediction among ``eval_ids``."""
        lut = np.zeros(256, dtype=bool)
        lut[list(self.eval_ids)] = True
        return lut[_to_numpy(target).astype(np.uint8)] & lut[_to_numpy(pred).astype(np.uint8)]

    def _finish(self, values: np.ndarray) -> np.ndarray:
        return np.nan_to_num(values, nan=0.0) if self.absent == "zero" else values

    def _mean(self, values: np.ndarray) -> float:
        values = self._finish(values)
        if np.all(np.isnan(values)):
            return float("nan")
        return float(np.nanmean(values))

    def scores(
        self, cm: np.ndarray | ConfusionMatrix, boundary: BoundaryStats | None = None, gaps: np.ndarray | None = None
    ) -> "Scores":
        """Per-class and mean scores of a (K, K) matrix (and boundary stats, if given).

        ``gaps``: per ground-truth class, pixels left without a prediction that
        count as errors (false negatives of their class, wrong in OA).
        """
        full = cm.matrix if isinstance(cm, ConfusionMatrix) else np.asarray(cm)
        if full.shape != (self.num_classes, self.num_classes):
            raise ValueError(f"expected a {self.num_classes}x{self.num_classes} matrix, got {full.shape}")
        ids = list(self.eval_ids)
        n = len(ids)
        sub = full[np.ix_(ids, ids)]
        m = sub
        if gaps is not None:  # an extra "no prediction" column: in every row total, never on the diagonal
            m = np.zeros((n + 1, n + 1), dtype=np.int64)
            m[:n, :n] = sub
            m[:n, n] = np.asarray(gaps)[ids]
        iou, f1 = iou_per_class(m)[:n], f1_per_class(m)[:n]
        biou = boundary.iou()[ids] if boundary is not None else None
        return Scores(
            ids=tuple(ids),
            iou=self._finish(iou),
            f1=self._finish(f1),
            precision=self._finish(precision_per_class(m)[:n]),
            recall=self._finish(recall_per_class(m)[:n]),
            biou=None if biou is None else self._finish(biou),
            gt_pixels=m[:n].sum(1),
            pred_pixels=sub.sum(0),
            miou=self._mean(iou),
            mf1=self._mean(f1),
            oa=overall_accuracy(m),
            mbiou=float("nan") if biou is None else self._mean(biou),
        )


@dataclass
class Scores:
    """Scores over ``ids`` (fractions in [0, 1]; NaN = class skipped by the protocol)."""

    ids: tuple[int, ...]
    iou: np.ndarray
    f1: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    biou: np.ndarray | None
    gt_pixels: np.ndarray
    pred_pixels: np.ndarray
    miou: float
    mf1: float
    oa: float
    mbiou: float

    def summary(self) -> dict[str, float]:
        return {"mIoU": self.miou, "mF1": self.mf1, "OA": self.oa, "mBIoU": self.mbiou}


def flairhub_protocol() -> Protocol:
    """19x19 matrix, classes 0..14 evaluated, NaN -> 0 and still counted."""
    return Protocol("flairhub", 19, tuple(range(15)), absent="zero")


def urur_protocol() -> Protocol:
    """8 classes including "others"; classes absent from GT and prediction skipped."""
    return Protocol("urur", 8, tuple(range(8)), absent="skip")


def generic_protocol(classes: ClassTable) -> Protocol:
    """The classes with loss weight > 0 (all without weights), absent ones skipped."""
    k = len(classes)
    if k == 0:
        raise ValueError("a class table with no class cannot be evaluated")
    ids = tuple(range(k)) if classes.weights is None else tuple(i for i, w in enumerate(classes.weights) if w > 0)
    if not ids:
        raise ValueError("every class has weight 0: nothing to evaluate")
    return Protocol("generic", k, ids, absent="skip")


def protocol_for(dataset: str, classes: ClassTable | None = None) -> Protocol:
    """The protocol of a dataset name ("flairhub", "urur", anything else = generic on ``classes``)."""
    if dataset == "flairhub":
        return flairhub_protocol()
    if dataset == "urur":
        return urur_protocol()
    if classes is None:
        raise ValueError(f"the generic protocol for {dataset!r} needs a class table")
    return generic_protocol(classes)
