"""Converted UPerNet-Swin vs transformers' own: max differences per Swin variant.

    python benchmarks/upernet_parity.py [--variants tiny small base large] [--tile 512] [--device cpu|cuda]

For each variant: a randomly initialised transformers UperNetForSemanticSegmentation
with that SwinBackbone (the width and class count of OpenMMLab's ADE20K models:
512 decoder channels, 150 classes; every norm, position table and BatchNorm
statistic perturbed so each tensor matters) is saved with save_pretrained,
converted with caswit-geo's ``convert``, and both run on the same random tile.
Prints the largest |difference| of the logits and of each stage feature map
the decoder reads, with the logits' own scale. Needs transformers (test extra).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the tests' reference models

ARCH = {
    "tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    "small": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7),
    "base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12),
    "large": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12),
}


def parity(variant: str, tile: int, device: str, folder: Path) -> dict:
    import torch
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    import caswit_geo
    from caswit_geo.engine.convert import ConvertConfig, convert
    from tests.model.upernet.upernet_reference import perturb_every_tensor

    torch.manual_seed(0)
    backbone = SwinConfig(**ARCH[variant], out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0)
    ref = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, hidden_size=512, num_labels=150)).eval()
    perturb_every_tensor(ref)
    ref.save_pretrained(folder / variant)
    result = convert(ConvertConfig(folder / variant, folder / f"{variant}.safetensors", tile_size=tile))
    ours, _ = caswit_geo.load_checkpoint(result.out, device=device)
    ref.to(device)
    x = torch.randn(1, 3, tile, tile, device=device)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref_logits = ref(x).logits
        ref_feats = ref.backbone(x).feature_maps
        logits = ours(x)
        feats, _ = ours.forward_features(x, None)
    return {
        "variant": variant,
        "model": result.model,
        "logits": float((logits - ref_logits).abs().max()),
        "logit_scale": float(ref_logits.abs().max()),
        "features": [float((a - b).abs().max()) for a, b in zip(feats, ref_feats)],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(ARCH), choices=list(ARCH))
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"tile {args.tile} px, device {args.device}")
    print(f"{'variant':8} {'model':20} {'max |dlogit|':>13} {'max |logit|':>12}  stage features max |d|")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            r = parity(variant, args.tile, args.device, Path(tmp))
            stages = " ".join(f"{d:.1e}" for d in r["features"])
            print(f"{variant:8} {r['model']:20} {r['logits']:13.2e} {r['logit_scale']:12.2f}  {stages}"
                  f"  ({r['seconds']:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
