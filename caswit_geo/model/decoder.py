"""UPerNet decoder (Xiao et al. 2018), as in mmsegmentation's UPerHead.

PPM (pool scales 1, 2, 3, 6) on the 1/32 map, 1x1 laterals on the others,
top-down FPN, 3x3 FPN convs, concatenation at 1/4, 3x3 fuse, dropout,
1x1 classifier. The caller upsamples the 1/4 logits to the input size.

The same computation as transformers' ``UperNetHead`` (conv without bias +
BatchNorm + ReLU everywhere, bilinear resizing with ``align_corners=False``,
PPM input concatenated first); its weights load through
``upernet_keys.py``. Only difference: transformers has no dropout before
the classifier (mmsegmentation has it), which changes nothing at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class PyramidPoolingModule(nn.Module):
    """Pool the deepest map at several scales, project, upsample, concatenate, fuse."""

    def __init__(self, in_channels: int, channels: int, pool_scales: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels, channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvBNReLU(in_channels + len(pool_scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_4, H/32, W/32) -> (B, channels, H/32, W/32)
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNetDecoder(nn.Module):
    """Multi-scale features -> class logits at 1/4 of the input.

    Args:
        encoder_channels: channels of the four stage maps [1/4, 1/8, 1/16, 1/32].
        channels: decoder width (512 in the paper's configs).
        num_classes: output classes K.
        pool_scales: PPM scales.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        encoder_channels: list[int],
        channels: int,
        num_classes: int,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.ppm = PyramidPoolingModule(encoder_channels[-1], channels, pool_scales)
        self.laterals = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in encoder_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in encoder_channels[:-1])
        self.fuse = ConvBNReLU(len(encoder_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        # features: NCHW maps at [1/4, 1/8, 1/16, 1/32] -> (B, K, H/4, W/4)
        laterals = [lat(f) for lat, f in zip(self.laterals, features[:-1])]
        laterals.append(self.ppm(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in outs[1:]]
        x = self.fuse(torch.cat(outs, dim=1))
        return self.classifier(self.dropout(x))
