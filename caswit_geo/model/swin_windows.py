"""Shifted windows laid out as in the original Swin segmentation code: pad, then shift.

timm 1.0's ``SwinTransformerBlock._attn`` rolls the feature map and then pads
it to whole windows (huggingface/pytorch-image-models#2438). Where a stage
grid is not a multiple of the window (every stage at 512 px with window 7
or 12), the rolled-around top rows land beside the padding, in a region of
the shift mask that also holds bottom rows: the top edge of a tile attends
to its bottom edge. The original Swin segmentation code, mmsegmentation and
transformers' ``SwinBackbone`` pad first, then roll, with the mask built on
the padded grid (timm's ``attn_mask`` already is); the padded tokens are
zeros and, as there, are not masked.

:class:`PadThenShiftBlock` is timm's block with that one step replaced;
:func:`use_pad_then_shift` turns the blocks of a timm Swin into it in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from torch import nn


class PadThenShiftBlock(SwinTransformerBlock):
    """timm's Swin block whose (shifted) window attention pads before it rolls."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, H, W, C) -> (B, H, W, C)
        B, H, W, C = x.shape
        win_h, win_w = self.window_size
        pad_h, pad_w = (win_h - H % win_h) % win_h, (win_w - W % win_w) % win_w
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # zeros below and to the right: (B, Hp, Wp, C)
        Hp, Wp = H + pad_h, W + pad_w
        shift_h, shift_w = self.shift_size
        if shift_h or shift_w:
            x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))

        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)  # [B * nW, win_h * win_w, C]
        # the shift mask of the padded grid: (nW, win_h * win_w, win_h * win_w), None without a shift
        mask = self.get_attn_mask(x) if getattr(self, "dynamic_mask", False) else self.attn_mask
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, win_h, win_w, C), self.window_size, Hp, Wp)  # (B, Hp, Wp, C)

        if shift_h or shift_w:
            x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
        return x[:, :H, :W, :].contiguous()


def use_pad_then_shift(swin: nn.Module) -> int:
    """Make every timm Swin block of ``swin`` a :class:`PadThenShiftBlock`; returns how many.

    Weights, buffers and the mask stay as timm built them: only the method
    that lays out the windows changes.
    """
    blocks = [m for m in swin.modules() if type(m) is SwinTransformerBlock]
    for block in blocks:
        block.__class__ = PadThenShiftBlock
    return len(blocks)
