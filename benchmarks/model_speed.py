"""Forward time and peak memory of CASWiT vs its single-stream baseline on this machine.

    python benchmarks/model_speed.py [--tile 512] [--repeats 3] [--models caswit-tiny swin-tiny-upernet]

Prints, per model: mean forward time (batch 1, eval, no grad), peak RSS
growth during the forward, and the share of time spent in each part (HR
encoder stages, LR encoder stages, fusion per stage, decoder). Each model is
measured in its own subprocess so peak-memory figures do not mix.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict


def measure(name: str, tile: int, repeats: int, threads: int) -> dict:
    import torch

    import caswit_geo

    torch.set_num_threads(threads)
    model = caswit_geo.build_model(name, num_classes=19, img_size=tile).eval()
    hr, lr = torch.randn(1, 3, tile, tile), torch.randn(1, 3, tile, tile)
    parts = defaultdict(float)
    starts = {}

    def timed(module, label):
        module.register_forward_pre_hook(lambda m, a: starts.__setitem__(label, time.perf_counter()))
        module.register_forward_hook(lambda m, a, o: parts.__setitem__(label, parts[label] + time.perf_counter() - starts[label]))

    b = model.backbone
    for i, layer in enumerate(b.hr_encoder.layers):
        timed(layer, f"hr_encoder.stage{i + 1}")
    timed(b.hr_encoder.patch_embed, "hr_encoder.embed")
    if b.lr_encoder is not None:
        for i, layer in enumerate(b.lr_encoder.layers):
            timed(layer, f"lr_encoder.stage{i + 1}")
        timed(b.lr_encoder.patch_embed, "lr_encoder.embed")
    for s, block in b.fusion.items():
        timed(block, f"fusion.stage{s}")
    timed(model.decoder, "decoder")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # model built, nothing run yet
    with torch.inference_mode():
        model(hr, lr)  # warm-up
        parts.clear()
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(hr, lr)
        total = (time.perf_counter() - t0) / repeats
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "model": name,
        "tile": tile,
        "threads": threads,
        "forward_s": total,
        "peak_rss_mb": rss1 / 1024,
        "forward_peak_growth_mb": (rss1 - rss0) / 1024,
        "params_m": model.parameter_counts()["inference_total"] / 1e6,
        "share": {k: v / repeats / total for k, v in sorted(parts.items())},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=["caswit-tiny", "swin-tiny-upernet"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, a.tile, a.repeats, a.threads)))
        return
    results = []
    for name in a.models:
        cmd = [sys.executable, __file__, "--child", name, "--tile", str(a.tile), "--repeats", str(a.repeats),
               "--threads", str(a.threads)]
        results.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    for r in results:
        print(f"\n{r['model']}: {r['params_m']:.1f}M params, tile {r['tile']}, {r['threads']} threads")
        print(f"  forward {r['forward_s']:.2f} s/tile, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(+{r['forward_peak_growth_mb']:.0f} MB over the built model)")
        for k, v in r["share"].items():
            print(f"  {k:<22} {100 * v:5.1f} %")
    if len(results) == 2:
        print(f"\n{results[0]['model']} / {results[1]['model']} forward time: "
              f"{results[0]['forward_s'] / results[1]['forward_s']:.2f}x")


if __name__ == "__main__":
    main()
