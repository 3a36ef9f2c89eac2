"""Swin encoder: a plain timm Swin Transformer stepped stage by stage.

No hand-written Swin: timm builds the network (``num_classes=0``, ``img_size``
= the tile size) and we only call ``patch_embed`` and ``layers[i]`` so that
the fusion blocks can act between stages. Stage outputs are channels-last
(B, H_s, W_s, C_s), at scales [1/4, 1/8, 1/16, 1/32].

Two choices make it the Swin of UPerNet-Swin (mmsegmentation, transformers),
and both are settings of the model config so that older checkpoints keep
what they were trained with:

- ``windows="pad-then-shift"``: shifted windows are laid out on the grid
  padded to whole windows, at every stage, even one whose grid fits in a
  single window (``swin_windows.py``). ``"shift-then-pad"`` is timm 1.0's
  own layout (and no shift where the grid fits in one window).
- ``stage_norms``: a LayerNorm on each stage output that goes to a decoder
  (:meth:`SwinEncoder.feature`); the next stage takes the features before
  that norm.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from caswit_geo.core.errors import CheckpointError, ConfigError
from caswit_geo.model.swin_windows import use_pad_then_shift

WINDOW_LAYOUTS = ("pad-then-shift", "shift-then-pad")

# The timm models a config may name (caswit-geo's nano, tiny, small, base and large variants).
# Nothing else reaches timm.create_model: a name such as "hf-hub:..." would make timm download.
SWIN_BACKBONES = (
    "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
    "swin_base_patch4_window12_384",
    "swin_large_patch4_window12_384",
)
OVERRIDE_KEYS = ("embed_dim", "depths", "num_heads", "window_size")


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
        windows: ``"pad-then-shift"`` (original Swin segmentation layout) or
            ``"shift-then-pad"`` (timm 1.0's).
        stage_norms: LayerNorm each stage output that a decoder reads.
    """

    def __init__(
        self,
        backbone: str,
        img_size: int,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        weights: str | Path | None = None,
        arch_overrides: dict | None = None,
        windows: str = "pad-then-shift",
        stage_norms: bool = True,
    ) -> None:
        super().__init__()
        if windows not in WINDOW_LAYOUTS:
            raise ConfigError(f"Swin window layout must be one of {', '.join(WINDOW_LAYOUTS)}, got {windows!r}")
        if backbone not in SWIN_BACKBONES:
            raise ConfigError(f"backbone {backbone!r} is not one of {', '.join(SWIN_BACKBONES)}")
        unknown = sorted(set(arch_overrides or {}) - set(OVERRIDE_KEYS))
        if unknown:
            raise ConfigError(f"arch_overrides: unknown key {unknown[0]!r} (allowed: {', '.join(OVERRIDE_KEYS)})")
        kwargs = dict(num_classes=0, img_size=img_size, in_chans=in_chans, drop_path_rate=drop_path_rate)
        kwargs.update(arch_overrides or {})
        if windows == "pad-then-shift":
            # shifted windows at every stage, as UPerNet-Swin: timm otherwise drops the
            # shift (and shrinks the window) where a stage grid fits in one window
            kwargs["always_partition"] = True
        if torch.empty(0).device.type == "meta":
            # shapes only (checkpoint checks, parameter counts): random init on meta costs ~0.5 s
            kwargs["weight_init"] = "skip"
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
        if windows == "pad-then-shift":
            use_pad_then_shift(swin)
        self.windows = windows
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers
        self.dims = [info["num_chs"] for info in swin.feature_info]
        self.num_heads = [layer.blocks[0].attn.num_heads for layer in swin.layers]
        self.stage_norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims) if stage_norms else None

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

    def feature(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # stage i output (B, H_s, W_s, C_s) -> decoder input (B, C_s, H_s, W_s), layer-normed with stage norms
        if self.stage_norms is not None:
            x = self.stage_norms[i](x)
        return x.permute(0, 3, 1, 2)
