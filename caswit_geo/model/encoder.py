"""Swin encoder: a plain timm Swin Transformer stepped stage by stage.

No hand-written Swin: timm builds the network (``num_classes=0``, ``img_size``
= the tile size) and we only call ``patch_embed`` and ``layers[i]`` so that
the fusion blocks can act between stages. Stage outputs are channels-last
(B, H_s, W_s, C_s), at scales [1/4, 1/8, 1/16, 1/32].
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import CheckpointError


class SwinEncoder(nn.Module):
    """One Swin branch (HR or LR).

    Args:
        backbone: timm model name, e.g. ``swin_tiny_patch4_window7_224``.
        img_size: input side in pixels (the tile size T).
        in_chans: input bands.
        drop_path_rate: stochastic depth rate.
        weights: optional local ImageNet weights file (timm or original
            Microsoft format); never downloaded.
        arch_overrides: timm constructor overrides (embed_dim, depths,
            num_heads, window_size) for miniature variants.
    """

    def __init__(
        self,
        backbone: str,
        img_size: int,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        weights: str | Path | None = None,
        arch_overrides: dict | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(num_classes=0, img_size=img_size, in_chans=in_chans, drop_path_rate=drop_path_rate)
        kwargs.update(arch_overrides or {})
        if weights is not None:
            weights = Path(weights)
            if not weights.is_file():
                raise CheckpointError(f"{weights}: backbone weights file not found")
            try:
                swin = timm.create_model(
                    backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), **kwargs
                )
            except Exception as e:  # timm raises many kinds; the user needs the file name and cause
                raise CheckpointError(f"{weights}: cannot load as {backbone} weights ({e})") from e
        else:
            swin = timm.create_model(backbone, pretrained=False, **kwargs)
        # The classifier norm and head are unused: drop them so DDP sees no unused parameters.
        swin.norm = nn.Identity()
        swin.head = nn.Identity()
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers
        self.dims = [info["num_chs"] for info in swin.feature_info]
        self.num_heads = [layer.blocks[0].attn.num_heads for layer in swin.layers]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def set_fused_attention(self, enable: bool = True) -> None:
        """Window attention through ``scaled_dot_product_attention`` (timm's fused path): the same
        softmax(QK^T / sqrt(d) + B + mask) V in one kernel instead of five passes over the scores."""
        for module in self.layers.modules():
            if hasattr(module, "fused_attn") and hasattr(module, "relative_position_bias_table"):
                module.fused_attn = enable

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, H, W) -> (B, H/4, W/4, C_1), already layer-normed by timm
        return self.patch_embed(x)

    def stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # x: (B, H_s, W_s, C_s) -> (B, H_{s+1}, W_{s+1}, C_{s+1}) (stage 0 keeps its size)
        return self.layers[i](x)
