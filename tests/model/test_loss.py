"""CE(HR) + alpha * CE(LR) on hand-built cases."""

import math

import pytest
import torch

from caswit_geo.model.loss import CaswitLoss


def _logits(rows):
    # rows: per-pixel class scores -> (1, K, 1, P)
    return torch.tensor(rows, dtype=torch.float32).T.reshape(1, len(rows[0]), 1, len(rows))


def _nll(scores, k):
    return -(scores[k] - math.log(sum(math.exp(s) for s in scores)))


HR = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0]]
LR = [[1.0, 1.0, 1.0], [0.0, 2.0, -2.0], [-1.0, 0.0, 1.0]]


def test_loss_is_hr_plus_alpha_lr():
    y_hr = torch.tensor([[[0, 1, 2]]])
    y_lr = torch.tensor([[[2, 1, 0]]])
    ce_hr = sum(_nll(s, k) for s, k in zip(HR, [0, 1, 2])) / 3
    ce_lr = sum(_nll(s, k) for s, k in zip(LR, [2, 1, 0])) / 3
    loss = CaswitLoss(alpha=0.5)(_logits(HR), _logits(LR), y_hr, y_lr)
    assert loss.item() == pytest.approx(ce_hr + 0.5 * ce_lr, rel=1e-6)
    assert CaswitLoss(alpha=0.0)(_logits(HR), _logits(LR), y_hr, y_lr).item() == pytest.approx(ce_hr, rel=1e-6)
    assert CaswitLoss(alpha=0.5)(_logits(HR), None, y_hr).item() == pytest.approx(ce_hr, rel=1e-6)


def test_ignore_index_pixels_do_not_count():
    y_hr = torch.tensor([[[0, 255, 2]]])
    y_lr = torch.tensor([[[255, 255, 0]]])
    ce_hr = (_nll(HR[0], 0) + _nll(HR[2], 2)) / 2
    ce_lr = _nll(LR[2], 0)
    loss = CaswitLoss(alpha=1.0)(_logits(HR), _logits(LR), y_hr, y_lr)
    assert loss.item() == pytest.approx(ce_hr + ce_lr, rel=1e-6)


def test_class_weights_weighted_mean_and_zero_weight_classes():
    y = torch.tensor([[[0, 1, 2]]])
    w = [1.0, 2.0, 0.0]  # class 2 has weight 0, like FLAIR-HUB classes 15..18
    expected = (1.0 * _nll(HR[0], 0) + 2.0 * _nll(HR[1], 1)) / 3.0
    loss = CaswitLoss(alpha=0.0, class_weights=w)(_logits(HR), None, y)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_all_ignored_tile_gives_zero_not_nan():
    y = torch.full((1, 1, 3), 255)
    logits = _logits(HR).requires_grad_()
    loss = CaswitLoss()(logits, None, y)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
