"""CASWiT: Context-Aware Stage-Wise Transformer (Carreaud et al., paper section 3).

Two Swin encoders of the same variant with separate weights: the HR branch
sees the T x T tile, the LR branch the kT x kT context resampled to T x T.
After every selected stage s, a FusionBlock lets HR tokens attend to LR
tokens; its output replaces the HR features (input of HR stage s+1 and the
decoder's stage-s feature). The LR stream is never modified. A UPerNet
decodes the fused HR features; an auxiliary UPerNet on the LR features is
trained only and never runs at inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .decoder import UPerNetDecoder
from .encoder import SwinEncoder
from .fusion import FusionBlock

STAGES = (1, 2, 3, 4)


def parse_fusion_stages(value: str | int | list | tuple | None) -> tuple[int, ...]:
    """``"none"`` | ``"all"`` | ``"1"`` | ``"1,4"`` | ``(1, 4)`` -> sorted tuple of 1-based stages."""
    if value is None:
        return ()
    if isinstance(value, int):
        value = (value,)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("none", ""):
            return ()
        if v == "all":
            return STAGES
        try:
            value = tuple(int(s) for s in v.replace("+", ",").split(","))
        except ValueError:
            raise ConfigError(f"fusion stages must be none, all or a list like 1,4; got {value!r}") from None
    stages = tuple(sorted(set(int(s) for s in value)))
    if any(s not in STAGES for s in stages):
        raise ConfigError(f"fusion stages must be among 1..4, got {list(stages)}")
    return stages


@dataclass
class CaswitConfig:
    """Everything needed to rebuild a model (stored in every checkpoint)."""

    name: str = "caswit-tiny"
    backbone: str = "swin_tiny_patch4_window7_224"  # timm model name of both encoders
    arch_overrides: dict = field(default_factory=dict)  # timm kwargs for miniature variants
    num_classes: int = 19
    img_size: int = 512  # tile size T in pixels (HR and LR inputs are both T x T)
    in_chans: int = 3
    fusion_stages: tuple[int, ...] = STAGES  # () = single-stream Swin + UPerNet, no LR encoder
    gate: bool = False  # the paper's main configuration is ungated
    alpha: float = 0.5  # weight of the auxiliary LR loss
    aux_head: bool = True  # build the LR UPerNet (training only); ignored without an LR encoder
    decoder_channels: int = 512
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self.fusion_stages = parse_fusion_stages(self.fusion_stages)
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.img_size % 32:
            raise ConfigError(f"tile size must be a multiple of 32 (Swin downsamples by 32), got {self.img_size}")

    @property
    def dual(self) -> bool:
        """True when the model has an LR branch."""
        return bool(self.fusion_stages)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fusion_stages"] = list(self.fusion_stages)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CaswitConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


class CaswitBackbone(nn.Module):
    """HR encoder + LR encoder + fusion blocks: the part SimMIM pretrains."""

    def __init__(self, config: CaswitConfig, backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        enc = dict(
            backbone=config.backbone,
            img_size=config.img_size,
            in_chans=config.in_chans,
            drop_path_rate=config.drop_path_rate,
            weights=backbone_weights,
            arch_overrides=config.arch_overrides,
        )
        self.hr_encoder = SwinEncoder(**enc)
        self.lr_encoder = SwinEncoder(**enc) if config.dual else None
        dims, heads = self.hr_encoder.dims, self.hr_encoder.num_heads
        self.fusion = nn.ModuleDict(
            {
                str(s): FusionBlock(dims[s - 1], heads[s - 1], config.mlp_ratio, gate=config.gate)
                for s in config.fusion_stages
            }
        )

    @property
    def dims(self) -> list[int]:
        return self.hr_encoder.dims

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.hr_encoder.set_grad_checkpointing(enable)
        if self.lr_encoder is not None:
            self.lr_encoder.set_grad_checkpointing(enable)

    def set_fused_attention(self, enable: bool = True) -> None:
        self.hr_encoder.set_fused_attention(enable)
        if self.lr_encoder is not None:
            self.lr_encoder.set_fused_attention(enable)

    def embed(self, hr: torch.Tensor, lr: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        # (B, C_in, T, T) -> (B, T/4, T/4, C_1) per branch
        x = self.hr_encoder.embed(hr)
        y = self.lr_encoder.embed(lr) if self.lr_encoder is not None else None
        return x, y

    def forward_stages(
        self, x: torch.Tensor, y: torch.Tensor | None, lr_stages: int = 4
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the four stages with fusion; returns NCHW HR features and NCHW LR features.

        ``lr_stages``: how many LR stages to run (fusion needs up to the last
        fused stage; the auxiliary head needs all four).
        """
        hr_feats, lr_feats = [], []
        for i in range(4):
            x = self.hr_encoder.stage(i, x)  # (B, H_s, W_s, C_s)
            if y is not None and i < lr_stages:
                y = self.lr_encoder.stage(i, y)
                lr_feats.append(y.permute(0, 3, 1, 2))
            fusion = self.fusion[str(i + 1)] if str(i + 1) in self.fusion else None
            if fusion is not None:
                x = fusion(x, y)  # H~_s replaces the HR features
            hr_feats.append(x.permute(0, 3, 1, 2))
        return hr_feats, lr_feats

    def forward(self, hr: torch.Tensor, lr: torch.Tensor | None, lr_stages: int = 4):
        x, y = self.embed(hr, lr)
        return self.forward_stages(x, y, lr_stages)


class CASWiT(nn.Module):
    """Dual-branch segmentation model.

    ``model(hr, lr)`` with (B, C, T, T) inputs returns HR logits (B, K, T, T)
    in eval mode, and ``(hr_logits, lr_logits)`` in train mode (``lr_logits``
    is None without an auxiliary head). Single-stream configs ignore ``lr``.
    """

    def __init__(self, config: CaswitConfig, backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = CaswitBackbone(config, backbone_weights)
        dims = self.backbone.dims
        self.decoder = UPerNetDecoder(dims, config.decoder_channels, config.num_classes, dropout=config.dropout)
        self.aux_head = (
            UPerNetDecoder(dims, config.decoder_channels, config.num_classes, dropout=config.dropout)
            if config.dual and config.aux_head
            else None
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def set_fused_attention(self, enable: bool = True) -> None:
        """Swin window attention in one SDPA kernel (same maths; used for inference)."""
        self.backbone.set_fused_attention(enable)

    def forward_features(self, hr: torch.Tensor, lr: torch.Tensor | None):
        if self.config.dual and lr is None:
            raise ValueError(f"{self.config.name} needs an LR context input")
        run_aux = self.training and self.aux_head is not None
        lr_stages = 4 if run_aux else max(self.config.fusion_stages, default=0)
        return self.backbone(hr, lr if self.config.dual else None, lr_stages)

    def forward_head(self, feats: list[torch.Tensor], head: nn.Module, size: tuple[int, int]) -> torch.Tensor:
        logits = head(feats)  # (B, K, T/4, T/4)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward(self, hr: torch.Tensor, lr: torch.Tensor | None = None):
        size = hr.shape[-2:]
        hr_feats, lr_feats = self.forward_features(hr, lr)
        hr_logits = self.forward_head(hr_feats, self.decoder, size)
        if not self.training:
            return hr_logits
        lr_logits = self.forward_head(lr_feats, self.aux_head, size) if self.aux_head is not None else None
        return hr_logits, lr_logits

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component."""

        def count(m: nn.Module | None) -> int:
            return 0 if m is None else sum(p.numel() for p in m.parameters())

        b = self.backbone
        counts = {
            "hr_encoder": count(b.hr_encoder),
            "lr_encoder": count(b.lr_encoder),
            "fusion": count(b.fusion),
            "decoder": count(self.decoder),
            "aux_head": count(self.aux_head),
        }
        counts["inference_total"] = sum(v for k, v in counts.items() if k != "aux_head")
        counts["total"] = counts["inference_total"] + counts["aux_head"]
        return counts

    def param_groups(self, weight_decay: float) -> list[dict]:
        return param_groups(self, weight_decay)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on norms, biases, position tables, gates and mask tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or "relative_position_bias_table" in name or name.endswith("mask_token"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
