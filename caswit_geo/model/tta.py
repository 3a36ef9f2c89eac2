"""Test-time augmentation: the dihedral group of the square, applied to the HR tile and its context.

A transform is (quarter turns ``k``, ``flip``): first mirror left-right (when
``flip``), then rotate ``k`` quarter turns counter-clockwise in the image
plane (``torch.rot90`` over the last two axes). The HR tile and its LR
context are transformed together: the context is centred on the tile, so
turning both about their centres is the same turn of the ground about the
tile's centre. The model's logits are turned back with the inverse
transform and the class probabilities are averaged.

Modes: ``"none"`` (identity), ``"flips"`` (identity, left-right, up-down and
both: 4 passes), ``"dihedral"`` (every flip and quarter turn: 8 passes).
Averaging over a group makes the prediction commute with that group: the
map of a turned image is the turned map.
"""

from __future__ import annotations

from typing import Callable

import torch

Transform = tuple[int, bool]  # (quarter turns counter-clockwise, mirror left-right first)

TTA_MODES: dict[str, tuple[Transform, ...]] = {
    "none": ((0, False),),
    # up-down is a left-right mirror then a half turn; both mirrors are a half turn
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "dihedral": tuple((k, f) for f in (False, True) for k in range(4)),
}


FIXED_POINT = float(2**40)  # probabilities in [0, 1] as int64 units: 2**-40 is far below float32's step at 1


def passes(mode: str) -> int:
    """Forward passes per tile in ``mode``."""
    return len(TTA_MODES[mode])


def apply(x: torch.Tensor, t: Transform) -> torch.Tensor:
    """``x``: [..., H, W] -> the transformed image (H and W swap for odd turns)."""
    k, flip = t
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x


def invert(x: torch.Tensor, t: Transform) -> torch.Tensor:
    """The inverse of :func:`apply`: ``invert(apply(x, t), t) == x``."""
    k, flip = t
    if k % 4:
        x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def average_probabilities(
    forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    hr: torch.Tensor,
    lr: torch.Tensor | None,
    mode: str = "none",
) -> torch.Tensor:
    """Class probabilities [B, K, H, W] float32, averaged over the transforms of ``mode``.

    ``forward(hr, lr)`` returns logits [B, K, H, W]. One forward pass per
    transform, each the size of the batch, so memory does not grow with the
    mode. The probabilities are summed as integers (units of 2**-40): integer
    sums do not depend on their order, so the average is the same bits
    whatever order the transforms come in. That is what makes the map of a
    turned mosaic exactly the turned map (the transforms of a turned tile are
    those of the tile, in another order).
    """
    transforms = TTA_MODES[mode]
    if len(transforms) == 1:
        return forward(hr, lr).float().softmax(dim=1)
    total: torch.Tensor | None = None
    for t in transforms:
        logits = forward(apply(hr, t), None if lr is None else apply(lr, t))
        fixed = (invert(logits.float(), t).contiguous().softmax(dim=1) * FIXED_POINT).to(torch.int64)  # exact: x 2**40
        total = fixed if total is None else total.add_(fixed)
    return (total.double() / (FIXED_POINT * len(transforms))).float()


__all__ = ["TTA_MODES", "Transform", "apply", "average_probabilities", "invert", "passes"]
