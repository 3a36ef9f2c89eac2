"""Named model configs: a plain dict of factories that only fill arguments.

``caswit-*`` are dual-branch with fusion after all four stages (the paper's
main configuration); ``swin-*-upernet`` are their single-stream baselines
(fusion none, no LR encoder). ``nano`` is a miniature for tests and demos.
Every config decodes with UPerNet unless ``decoder="segformer"`` is given
(the single-stream baselines too, whatever their name says).
"""

from __future__ import annotations

import functools
from dataclasses import replace

import timm
import torch

from caswit_geo.core.errors import ConfigError
from caswit_geo.model.caswit import CaswitConfig

# Swin variants: timm model name, tile size, decoder widths, stochastic depth.
# base/large use window 12, as the FLAIR-HUB Swin-B baseline. SegFormer's width
# D is 768 (SegFormer-B2 to B5) unless a variant says otherwise.
SWIN_VARIANTS: dict[str, dict] = {
    "nano": dict(
        backbone="swin_tiny_patch4_window7_224",
        # 12-24-48-96 channels, one block per stage, window 4: a few hundred
        # thousand parameters, 128 px tiles in a fraction of a second on a CPU.
        arch_overrides=dict(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=4),
        img_size=128,
        decoder_channels=24,
        # SegFormer D = the widest stage, as SegFormer-B0/B1 (256 for 256 channels): its
        # decoder then has fewer parameters than this UPerNet (57k against 90k, 19 classes)
        decoder_dim=96,
        drop_path_rate=0.0,
    ),
    "tiny": dict(backbone="swin_tiny_patch4_window7_224", decoder_channels=512, drop_path_rate=0.2),
    "small": dict(backbone="swin_small_patch4_window7_224", decoder_channels=512, drop_path_rate=0.3),
    "base": dict(backbone="swin_base_patch4_window12_384", decoder_channels=512, drop_path_rate=0.3),
    "large": dict(backbone="swin_large_patch4_window12_384", decoder_channels=512, drop_path_rate=0.3),
}


def _named() -> dict[str, CaswitConfig]:
    out = {}
    for variant, kw in SWIN_VARIANTS.items():
        out[f"caswit-{variant}"] = CaswitConfig(name=f"caswit-{variant}", fusion_stages="all", **kw)
        out[f"swin-{variant}-upernet"] = CaswitConfig(name=f"swin-{variant}-upernet", fusion_stages="none", **kw)
    return out


MODEL_CONFIGS: dict[str, CaswitConfig] = _named()


def get_config(name: str, **overrides) -> CaswitConfig:
    """The named config with ``overrides`` applied (e.g. num_classes, img_size, fusion_stages, gate)."""
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(MODEL_CONFIGS)}")
    try:
        return replace(MODEL_CONFIGS[name], **overrides)
    except TypeError as e:
        raise ConfigError(f"bad override for {name}: {e}") from None


def swin_arch(config: CaswitConfig) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
    """``(embed_dim, depths, num_heads, window_size)`` of a config's encoders, read from timm's model."""
    overrides = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.arch_overrides.items()))
    return _timm_swin_arch(config.backbone, overrides)


@functools.lru_cache(maxsize=None)
def _timm_swin_arch(backbone: str, overrides: tuple) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
    with torch.device("meta"):
        swin = timm.create_model(backbone, pretrained=False, num_classes=0, always_partition=True,
                                 weight_init="skip", **dict(overrides))  # shapes only: no random init
    blocks = [layer.blocks for layer in swin.layers]
    return (
        swin.embed_dim,
        tuple(len(b) for b in blocks),
        tuple(b[0].attn.num_heads for b in blocks),
        blocks[0][0].window_size[0],
    )


def variant_of(embed_dim: int, depths, num_heads, window_size: int) -> str | None:
    """The named Swin variant (nano, tiny, ...) with exactly this architecture, or None."""
    arch = (int(embed_dim), tuple(int(d) for d in depths), tuple(int(h) for h in num_heads), int(window_size))
    return next((v for v in SWIN_VARIANTS if swin_arch(MODEL_CONFIGS[f"caswit-{v}"]) == arch), None)
