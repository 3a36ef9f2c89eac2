"""Metrics against brute-force per-pixel counts and hand-computed boundary cases."""

import math

import numpy as np
import pytest
import torch

from caswit_geo.core.spec import ClassInfo, ClassTable
from caswit_geo.engine.evaluate.metrics import (
    BoundaryStats,
    ConfusionMatrix,
    boundary_band,
    boundary_dilation,
    flairhub_protocol,
    generic_protocol,
    urur_protocol,
)


def brute_scores(gt, pred, eval_ids, zero_nan):
    """Per-pixel loop: TP/FP/FN over the pixels whose GT and prediction are both evaluated."""
    tp = dict.fromkeys(eval_ids, 0)
    fp = dict.fromkeys(eval_ids, 0)
    fn = dict.fromkeys(eval_ids, 0)
    correct = total = 0
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
        if g not in eval_ids or p not in eval_ids:
            continue
        total += 1
        if g == p:
            tp[g] += 1
            correct += 1
        else:
            fn[g] += 1
            fp[p] += 1
    iou, f1 = [], []
    for c in eval_ids:
        union = tp[c] + fp[c] + fn[c]
        i = tp[c] / union if union else math.nan
        prec = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else math.nan
        rec = tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else math.nan
        if zero_nan:
            prec, rec = (0.0 if math.isnan(prec) else prec), (0.0 if math.isnan(rec) else rec)
            f = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
            i = 0.0 if math.isnan(i) else i
        else:
            f = 2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) if union else math.nan
        iou.append(i)
        f1.append(f)
    mean = (lambda v: sum(v) / len(v)) if zero_nan else (lambda v: float(np.nanmean(v)))
    return np.array(iou), np.array(f1), mean(iou), mean(f1), correct / total


def erode_reference(mask, d):
    """boundary-iou-api: pad 1 zero px, erode d times with 3x3 (outside the padded image = 1)."""
    m = np.pad(mask.astype(np.uint8), 1)
    for _ in range(d):
        p = np.pad(m, 1, constant_values=1)
        out = np.ones_like(m)
        for dr in range(3):
            for dc in range(3):
                out &= p[dr : dr + m.shape[0], dc : dc + m.shape[1]]
        m = out
    return m[1:-1, 1:-1].astype(bool)


def boundary_reference(gt, pred, valid, classes):
    """Per-class band intersections / unions with the invalid pixels set to 255 in both."""
    gt = np.where(valid, gt, 255)
    pred = np.where(valid, pred, 255)
    d = max(1, int(round(0.02 * math.hypot(*gt.shape))))
    inter, union = np.zeros(len(classes), np.int64), np.zeros(len(classes), np.int64)
    for c in classes:
        bg = (gt == c) & ~erode_reference(gt == c, d) & valid
        bp = (pred == c) & ~erode_reference(pred == c, d) & valid
        inter[c] = (bg & bp).sum()
        union[c] = (bg | bp).sum()
    return inter, union


def blobs(rng, shape, k, cell=4):
    """Random label map made of cell x cell blocks (so that boundaries are not everywhere)."""
    small = rng.integers(0, k, (shape[0] // cell + 1, shape[1] // cell + 1))
    return np.kron(small, np.ones((cell, cell), int))[: shape[0], : shape[1]].astype(np.uint8)


@pytest.mark.parametrize("seed", range(5))
def test_confusion_matrix_matches_bincount_free_count(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 6, (3, 17, 23)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 6, gt.shape).astype(np.uint8)
    cm = ConfusionMatrix(6)
    cm.update(gt[:2], pred[:2])
    cm.update(torch.from_numpy(gt[2]), torch.from_numpy(pred[2]))  # tensors accepted
    ref = np.zeros((6, 6), int)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            ref[g, p] += 1
    np.testing.assert_array_equal(cm.matrix, ref)


def test_confusion_matrix_rejects_out_of_range_and_counts_unpredicted():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="label value 5"):
        cm.update(np.array([0, 5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="predicted value 3"):
        cm.update(np.array([0, 1]), np.array([3, 1]))
    cm.update(np.array([0, 1, 255, 2]), np.array([255, 1, 255, 0]))
    assert cm.unpredicted == 1
    assert cm.total == 2 and cm.matrix[1, 1] == 1 and cm.matrix[2, 0] == 1


@pytest.mark.parametrize("seed", range(4))
def test_flairhub_protocol_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 19, (40, 40)).astype(np.uint8)
    pred = rng.integers(0, 19, (40, 40)).astype(np.uint8)
    gt[gt == 7] = 3  # snow absent from the ground truth...
    pred[pred == 7] = 4  # ...and from the prediction: IoU NaN -> 0, still counted
    pred[pred == 13] = 12  # coniferous never predicted
    cm = ConfusionMatrix(19)
    cm.update(gt, pred)
    s = flairhub_protocol().scores(cm)
    iou, f1, miou, mf1, oa = brute_scores(gt, pred, list(range(15)), zero_nan=True)
    np.testing.assert_allclose(s.iou, iou)
    np.testing.assert_allclose(s.f1, f1)
    assert s.iou[7] == 0 and s.f1[13] == 0
    assert s.miou == pytest.approx(miou) and s.miou == pytest.approx(s.iou.sum() / 15)
    assert s.mf1 == pytest.approx(mf1)
    assert s.oa == pytest.approx(oa)


def test_flairhub_classes_15_to_18_drop_out():
    """A pixel labelled 3 but predicted 16 counts neither as a hit nor as a miss of class 3."""
    gt = np.array([[3, 3, 3, 16]], np.uint8)
    pred = np.array([[3, 16, 3, 3]], np.uint8)
    cm = ConfusionMatrix(19)
    cm.update(gt, pred)
    s = flairhub_protocol().scores(cm)
    assert s.iou[3] == 1.0 and s.oa == 1.0
    assert s.miou == pytest.approx(1 / 15)  # 14 absent classes count as 0


def test_urur_protocol_skips_absent_classes():
    gt = np.array([[0, 1, 1, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 2, 2, 5]], np.uint8)
    cm = ConfusionMatrix(8)
    cm.update(gt, pred)
    s = urur_protocol().scores(cm)
    iou, f1, miou, mf1, oa = brute_scores(gt, pred, list(range(8)), zero_nan=False)
    np.testing.assert_allclose(s.iou, iou)
    assert np.isnan(s.iou[3]) and np.isnan(s.iou[5])  # 5 only predicted on an ignored pixel
    assert s.miou == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert s.mf1 == pytest.approx(mf1)
    assert s.oa == pytest.approx(3 / 4)


def test_urur_class_in_ground_truth_only_scores_zero():
    cm = ConfusionMatrix(8)
    cm.update(np.array([1, 4]), np.array([1, 1]))
    s = urur_protocol().scores(cm)
    assert s.iou[4] == 0 and s.f1[4] == 0
    assert s.miou == pytest.approx(0.25)  # (1/2 + 0) / 2


def test_generic_protocol_uses_weighted_classes():
    table = ClassTable([ClassInfo(i, f"c{i}", (i, i, i)) for i in range(4)], [1.0, 0.0, 1.0, 1.0])
    proto = generic_protocol(table)
    assert proto.eval_ids == (0, 2, 3)
    rng = np.random.default_rng(7)
    gt = rng.integers(0, 4, (30, 30)).astype(np.uint8)
    pred = rng.integers(0, 3, (30, 30)).astype(np.uint8)  # class 3 never predicted
    cm = ConfusionMatrix(4)
    cm.update(gt, pred)
    s = proto.scores(cm)
    iou, f1, miou, mf1, oa = brute_scores(gt, pred, [0, 2, 3], zero_nan=False)
    np.testing.assert_allclose(s.iou, iou)
    np.testing.assert_allclose(s.f1, f1)
    assert s.miou == pytest.approx(miou) and s.oa == pytest.approx(oa)
    assert generic_protocol(ClassTable(table.classes)).eval_ids == (0, 1, 2, 3)


@pytest.mark.parametrize("size, d", [(512, 14), (64, 2), (32, 1), (8, 1), (100, 3)])
def test_boundary_dilation(size, d):
    assert boundary_dilation(size, size) == d


def test_boundary_iou_hand_computed():
    """6x6 (d = 1): a 2x2 block of class 1, predicted one column to the right."""
    gt = np.zeros((6, 6), np.uint8)
    pred = np.zeros((6, 6), np.uint8)
    gt[2:4, 2:4] = 1
    pred[2:4, 3:5] = 1
    b = BoundaryStats(2)
    b.update(gt, pred)
    assert b.dilation == 1
    # class 1: both bands are the whole blocks (4 px each), overlap one column (2 px).
    # class 0: 20 border px + 12 (GT ring) / 8 (pred ring, col 5 is border) px; shared 20 + 6.
    np.testing.assert_array_equal(b.intersection, [26, 2])
    np.testing.assert_array_equal(b.union, [34, 6])
    np.testing.assert_allclose(b.iou(), [26 / 34, 2 / 6])


def test_boundary_band_depth_two():
    """60x60 (d = 2): the band of a 10x10 block is the block minus its inner 6x6."""
    lab = np.zeros((60, 60), np.uint8)
    lab[20:30, 30:40] = 1
    band = boundary_band(lab, boundary_dilation(60, 60))
    assert band[20:30, 30:40].sum() == 100 - 36
    assert not band[22:28, 32:38].any()
    # background: the 2 px image border and the 2 px ring around the block
    assert band[lab == 0].sum() == (60 * 60 - 56 * 56) + (14 * 14 - 100)


@pytest.mark.parametrize("seed", range(4))
def test_boundary_stats_match_reference_erosion(seed):
    rng = np.random.default_rng(seed)
    k = 5
    size = (64, 48) if seed % 2 else (40, 40)
    gt = blobs(rng, size, k, cell=5)
    pred = gt.copy()
    noise = rng.random(size) < 0.15
    pred[noise] = blobs(rng, size, k, cell=3)[noise]
    gt[:, :4] = 255  # an ignored strip
    valid = gt != 255
    b = BoundaryStats(k)
    b.update(gt, pred)
    inter, union = boundary_reference(gt, pred, valid, range(k))
    np.testing.assert_array_equal(b.intersection, inter)
    np.testing.assert_array_equal(b.union, union)


def test_boundary_batch_equals_sum_of_tiles_and_scipy():
    rng = np.random.default_rng(11)
    gt = np.stack([blobs(rng, (32, 32), 3, 4) for _ in range(3)])
    pred = np.stack([blobs(rng, (32, 32), 3, 4) for _ in range(3)])
    batched, single = BoundaryStats(3), BoundaryStats(3)
    batched.update(gt, pred)
    for g, p in zip(gt, pred):
        single.update(g, p)
    np.testing.assert_array_equal(batched.intersection, single.intersection)
    np.testing.assert_array_equal(batched.union, single.union)
    ndimage = pytest.importorskip("scipy.ndimage")
    d = boundary_dilation(32, 32)
    for c in range(3):
        m = gt[0] == c
        eroded = ndimage.binary_erosion(m, np.ones((3, 3)), iterations=d, border_value=0)
        np.testing.assert_array_equal(boundary_band(gt[0], d) & m, m & ~eroded)


def test_protocol_mbiou_flair_counts_absent_classes_as_zero():
    gt = np.zeros((16, 16), np.uint8)
    gt[4:12, 4:12] = 1
    cm, b = ConfusionMatrix(19), BoundaryStats(19)
    proto = flairhub_protocol()
    cm.update(gt, gt)
    b.update(gt, gt, proto.valid_mask(gt, gt))
    s = proto.scores(cm, b)
    assert s.biou[0] == 1 and s.biou[1] == 1
    assert s.mbiou == pytest.approx(2 / 15)
    s2 = urur_protocol().scores(ConfusionMatrix(8), None)
    assert math.isnan(s2.miou) and math.isnan(s2.mbiou)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 7, 8, 14])
def test_boundary_band_any_depth_matches_reference(d):
    rng = np.random.default_rng(d)
    lab = blobs(rng, (70, 90), 4, cell=9)
    band = boundary_band(lab, d)
    for c in range(4):
        m = lab == c
        np.testing.assert_array_equal(band & m, m & ~erode_reference(m, d))
