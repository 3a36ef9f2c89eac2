"""CASWiT: Context-Aware Stage-Wise Transformer (Carreaud et al., paper section 3).

Two Swin encoders of the same variant with separate weights: the HR branch
sees the T x T tile, the LR branch the kT x kT context resampled to T x T.
After every selected stage s, a FusionBlock lets HR tokens attend to LR
tokens; its output replaces the HR features (input of HR stage s+1 and the
decoder's stage-s feature). The LR stream is never modified. A decoder
reads the fused HR features; an auxiliary head of the same kind on the LR
features is trained only and never runs at inference. CASWiT is
head-agnostic (paper section 5): the decoder is UPerNet, as in the paper,
or SegFormer's all-MLP decoder, as in its later version.

With stage norms (as UPerNet-Swin), each head reads its branch's stage
features through that branch's LayerNorm: the HR decoder gets
``LN_s(H~_s)``, after fusion, and the auxiliary head ``LN_s(X^LR_s)``,
while the next stage and the fusion blocks take the features before the
norm. Without fusion, and with UPerNet, the model is exactly UPerNet-Swin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from caswit_geo.core.errors import ConfigError
from caswit_geo.core.limits import Flag, Int, Keys, Real, Seq, Text, bounded, check_fields, from_mapping
from caswit_geo.core.spec import MAX_BANDS, MAX_CLASSES, MAX_TILE
from caswit_geo.model.decoder import UPerNetDecoder
from caswit_geo.model.encoder import SWIN_BACKBONES, WINDOW_LAYOUTS, SwinEncoder
from caswit_geo.model.fusion import FusionBlock
from caswit_geo.model.segformer import SegFormerDecoder

STAGES = (1, 2, 3, 4)
DECODERS = ("upernet", "segformer")

# Config fields added after checkpoints were first made: a stored config
# without them was trained with these values and keeps them (CaswitConfig.from_dict).
LEGACY_DEFAULTS = {"swin_windows": "shift-then-pad", "stage_norms": False}


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


# Limits of a model config (a checkpoint header is untrusted): generous for every Swin-V1
# variant, small enough that no config can exhaust memory or hang while the model is built.
SWIN_OVERRIDES = Keys(  # timm constructor arguments a miniature variant may change, and nothing else
    embed_dim=Int(8, 1024),
    depths=Seq(Int(1, 48), 4, 4),
    num_heads=Seq(Int(1, 64), 4, 4),
    window_size=Int(1, 32),
)


class _Stages:
    """Fusion stages, in any form :func:`parse_fusion_stages` accepts."""

    def __call__(self, value, name: str) -> tuple[int, ...]:
        if isinstance(value, bool) or not isinstance(value, (str, int, list, tuple)) or value is None:
            raise ConfigError(f"{name} must be none, all or a list of stages 1..4, got {value!r}")
        if isinstance(value, (list, tuple)) and (len(value) > 4 or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in value)):
            raise ConfigError(f"{name} must be a list of stages 1..4, got {value!r}")
        return parse_fusion_stages(value)


@dataclass
class CaswitConfig:
    """Everything needed to rebuild a model (stored in every checkpoint).

    Each field declares its bounds (``bounded``): a checkpoint header is checked
    against them before anything is built (``checkpoint.py``).
    """

    name: str = bounded("caswit-tiny", Text(64))
    backbone: str = bounded("swin_tiny_patch4_window7_224", Text(choices=SWIN_BACKBONES))  # timm name, both encoders
    arch_overrides: dict = bounded(check=SWIN_OVERRIDES, factory=dict)  # timm kwargs for miniature variants
    num_classes: int = bounded(19, Int(1, MAX_CLASSES))  # 255 is nodata / ignore
    img_size: int = bounded(512, Int(32, MAX_TILE, multiple=32))  # tile size T in px (HR and LR inputs are T x T)
    in_chans: int = bounded(3, Int(1, MAX_BANDS))
    fusion_stages: tuple[int, ...] = bounded(STAGES, _Stages())  # () = single-stream Swin + decoder, no LR encoder
    gate: bool = bounded(False, Flag())  # the paper's main configuration is ungated
    alpha: float = bounded(0.5, Real(0, 1000))  # weight of the auxiliary LR loss
    aux_head: bool = bounded(True, Flag())  # build the LR head (training only); ignored without an LR encoder
    decoder: str = bounded("upernet", Text(choices=DECODERS))  # HR decoder and auxiliary LR head
    decoder_channels: int = bounded(512, Int(1, 2048))  # UPerNet width
    decoder_dim: int = bounded(768, Int(1, 2048))  # SegFormer width D (768 as SegFormer-B2 to B5)
    mlp_ratio: float = bounded(4.0, Real(0, 16, lo_open=True))
    drop_path_rate: float = bounded(0.2, Real(0, 1, hi_open=True))
    dropout: float = bounded(0.1, Real(0, 1, hi_open=True))
    # Swin shifted windows: "pad-then-shift" lays them out on the grid padded to whole
    # windows, at every stage, as the original Swin segmentation code, mmsegmentation and
    # transformers do; "shift-then-pad" is timm 1.0's layout, where the top rows of a
    # grid the window does not divide share windows with its bottom rows (older checkpoints).
    swin_windows: str = bounded("pad-then-shift", Text(choices=WINDOW_LAYOUTS))
    # LayerNorm on each stage output a decoder reads (UPerNet-Swin); older checkpoints: False
    stage_norms: bool = bounded(True, Flag())

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def dual(self) -> bool:
        """True when the model has an LR branch."""
        return bool(self.fusion_stages)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fusion_stages"] = list(self.fusion_stages)
        d["arch_overrides"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.arch_overrides.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict, what: str = "model config") -> "CaswitConfig":
        """Config of a checkpoint header or file: unknown keys and values out of bounds are refused;
        keys it lacks that were added later get their legacy values."""
        if isinstance(d, dict):
            d = {**LEGACY_DEFAULTS, **d}
        return from_mapping(cls, d, what)

    def behaviour(self) -> dict:
        """The fields of :data:`LEGACY_DEFAULTS`: what a model built to continue this one must share."""
        return {k: getattr(self, k) for k in LEGACY_DEFAULTS}


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
            windows=config.swin_windows,
            stage_norms=config.stage_norms,
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
        self, x: torch.Tensor, y: torch.Tensor | None, lr_stages: int = 4, lr_features: bool = True
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the four stages with fusion; returns the NCHW HR and LR features the heads read.

        ``lr_stages``: how many LR stages to run (fusion needs up to the last
        fused stage; the auxiliary head needs all four). ``lr_features``:
        return the LR features too (only the auxiliary head reads them). With
        stage norms the returned features are layer-normed; the stages and
        fusion blocks work on the features before the norm.
        """
        hr_feats, lr_feats = [], []
        for i in range(4):
            x = self.hr_encoder.stage(i, x)  # (B, H_s, W_s, C_s)
            if y is not None and i < lr_stages:
                y = self.lr_encoder.stage(i, y)
                if lr_features:
                    lr_feats.append(self.lr_encoder.feature(i, y))  # (B, C_s, H_s, W_s)
            fusion = self.fusion[str(i + 1)] if str(i + 1) in self.fusion else None
            if fusion is not None:
                x = fusion(x, y)  # H~_s replaces the HR features
            hr_feats.append(self.hr_encoder.feature(i, x))  # LN_s(H~_s): (B, C_s, H_s, W_s)
        return hr_feats, lr_feats

    def forward(self, hr: torch.Tensor, lr: torch.Tensor | None, lr_stages: int = 4, lr_features: bool = True):
        x, y = self.embed(hr, lr)
        return self.forward_stages(x, y, lr_stages, lr_features)


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
        self.decoder = build_decoder(config, self.backbone.dims)
        self.aux_head = build_decoder(config, self.backbone.dims) if config.dual and config.aux_head else None

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
        return self.backbone(hr, lr if self.config.dual else None, lr_stages, lr_features=run_aux)

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


def build_decoder(config: CaswitConfig, dims: list[int]) -> nn.Module:
    """The decoder of ``config`` on stage maps of ``dims`` channels: logits at 1/4 of the input."""
    if config.decoder == "segformer":
        return SegFormerDecoder(dims, config.decoder_dim, config.num_classes, dropout=config.dropout)
    return UPerNetDecoder(dims, config.decoder_channels, config.num_classes, dropout=config.dropout)


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
