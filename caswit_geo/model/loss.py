"""Supervised objective (paper section 3.4): L = CE(HR) + alpha * CE(LR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from caswit_geo.core.spec import IGNORE_INDEX


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Pixel-wise CE averaged over the (weighted) pixels that count.

    Same value as ``F.cross_entropy(reduction="mean")``, but 0 instead of NaN
    when no pixel counts (a tile labelled only ignore / zero-weight classes).
    """
    total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    if weight is None:
        denom = valid.sum()
    else:
        denom = weight[target[valid]].sum()
    return total / denom.clamp_min(1e-12) if denom > 0 else total * 0.0


class CaswitLoss(nn.Module):
    """``CE(HR) + alpha * CE(LR)`` with ignore index 255 and optional class weights.

    Args:
        alpha: weight of the auxiliary LR loss (0.5 in the paper).
        class_weights: per-class weights (e.g. 0 for FLAIR-HUB classes 15..18).
        ignore_index: label value that never counts.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        class_weights: list[float] | torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.ignore_index = ignore_index
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", w, persistent=False)

    def forward(
        self,
        hr_logits: torch.Tensor,
        lr_logits: torch.Tensor | None,
        hr_labels: torch.Tensor,
        lr_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # logits: (B, K, H, W), labels: (B, H, W) int64
        loss = cross_entropy(hr_logits, hr_labels, self.class_weights, self.ignore_index)
        if lr_logits is None or self.alpha == 0:
            return loss
        if lr_labels is None:
            raise ValueError("the LR head produced logits but no LR labels were given")
        return loss + self.alpha * cross_entropy(lr_logits, lr_labels, self.class_weights, self.ignore_index)
